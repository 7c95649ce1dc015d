"""Gradient-free and transfer attacks: SPSA, Square Attack (its own module, re-exported
here) and transfer evaluation.

They exist to expose gradient masking (docs/limits.md): a defense that only breaks gradients
(μ-law mapping, rounding without a straight-through estimator) keeps a high accuracy under
gradient attacks but not under these. SPSA and Square only ever *evaluate* the model (they
never ask for its gradient); ``transfer`` takes gradients of a surrogate ``source`` model only.

SPSA and Square also attack a deployed artifact (``kq.export.load(...)``) through its
runtime. SPSA attacks the L∞ ball ``‖x' − x‖∞ ≤ ε`` inside the box ``clip`` and use the margin
objective ``f(x') = max_{j≠y} z_j(x') − z_y(x')`` (``f > 0`` ⇔ misclassified; for a targeted
attack ``f = −(max_{j≠t} z_j − z_t)``, ``f > 0`` ⇔ classified as ``t``), which they maximize.
Like the gradient attacks, each runs as a ``tf.function`` compiled once per model and
configuration, with ε and the other numbers as tensors (sweeping them does not retrace),
on whole batches of images, numpy in and out.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np

from .._keras import keras, tf
from . import gradient as _gradient
from ._queries import Ticks, as_query_model, batch_seed, clean_objective, into_ball, objective, rademacher
from .square import square
from ._common import (
    AttackModel,
    as_attack_model,
    batches,
    check_count,
    check_eps,
    check_inputs,
    check_positive,
    clip_key,
    compiled,
    generator,
)

__all__ = ["spsa", "square", "transfer", "TransferResult", "TRANSFER_ATTACKS"]

TRANSFER_ATTACKS = ("fgsm", "pgd", "bim", "mim")

# SPSA evaluates n_images·2·samples perturbed inputs per step; they go through the model in
# calls of at most this many antithetic pairs, which bounds the memory of a step.
_SPSA_PAIRS_PER_CALL = 1024
# Steps / iterations per call of the compiled loop: the progress bar moves between calls,
# and a batch whose examples have all succeeded stops there.
_SPSA_STEPS_PER_CALL = 5


# ---------------------------------------------------------------------------- SPSA
def _spsa_gradient(model: AttackModel, x: tf.Tensor, y: tf.Tensor, seed: tf.Tensor, delta: tf.Tensor,
                   samples: tf.Tensor, targeted: bool) -> tf.Tensor:
    """SPSA estimate of ``∇f(x)`` per example (Uesato et al. 2018, Algorithm 1):

        g = 1/n · Σ_{i=1..n} (f(x + δ·v_i) − f(x − δ·v_i)) / (2δ) · v_i,   v_i ~ Rademacher,

    ``n = samples`` directions, so ``2·samples`` model evaluations per example (``v_i⁻¹ = v_i``
    for ±1 entries). The ``n_images·samples`` pairs are evaluated in model calls of at most
    ``_SPSA_PAIRS_PER_CALL`` pairs; only ``model.logits`` (a forward pass) is used. The
    points ``x ± δ·v`` are not clipped to the box (as in the paper and cleverhans).
    """
    count = tf.shape(x)[0]
    total = count * samples
    pairs_per_call = tf.constant(_SPSA_PAIRS_PER_CALL, tf.int32)
    calls = (total + pairs_per_call - 1) // pairs_per_call
    broadcast = [-1] + [1] * (x.shape.rank - 1)
    grad = tf.zeros_like(x)
    for call in tf.range(calls):
        pair = tf.range(call * pairs_per_call, tf.minimum((call + 1) * pairs_per_call, total))
        owner = pair // samples  # which example each pair perturbs
        size = tf.shape(pair)[0]
        v = rademacher(tf.concat([[size], tf.shape(x)[1:]], 0),
                        tf.random.experimental.stateless_fold_in(seed, call))
        centre, labels = tf.gather(x, owner), tf.gather(y, owner)
        logits = model.logits(tf.concat([centre + delta * v, centre - delta * v], 0))
        value = objective(logits, tf.concat([labels, labels], 0), targeted)
        slope = (value[:size] - value[size:]) / (2.0 * delta)
        grad += tf.math.unsorted_segment_sum(tf.reshape(slope, broadcast) * v, owner, count)
    return grad / tf.cast(samples, x.dtype)


def _adam_ascent(m: tf.Tensor, u: tf.Tensor, g: tf.Tensor, t: tf.Tensor, learning_rate: tf.Tensor,
                 beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8):
    """One Adam step (Kingma & Ba 2015, Algorithm 1) *up* the estimated gradient ``g``:

        m ← β₁m + (1 − β₁)g,  u ← β₂u + (1 − β₂)g²,
        step = lr · (m / (1 − β₁ᵗ)) / (√(u / (1 − β₂ᵗ)) + ϵ).

    Returns ``(step, m, u)``.
    """
    m = beta1 * m + (1.0 - beta1) * g
    u = beta2 * u + (1.0 - beta2) * tf.square(g)
    m_hat = m / (1.0 - tf.pow(beta1, t))
    u_hat = u / (1.0 - tf.pow(beta2, t))
    return learning_rate * m_hat / (tf.sqrt(u_hat) + epsilon), m, u


def _compiled_spsa(attack_model: AttackModel, targeted: bool, early_stop: bool, clip: Optional[tuple]):
    """``run(x, y, adv, m, u, done, first, steps, eps, delta, lr, samples, seed) -> (adv, m, u, done)``:
    SPSA steps ``first … first + steps − 1`` on the examples not yet ``done``."""

    def factory(get_model):
        @tf.function(reduce_retracing=True)
        def run(x, y, adv, m, u, done, first, steps, eps, delta, learning_rate, samples, seed):
            model = get_model()
            for t in tf.range(first, first + steps):
                active = tf.where(tf.logical_not(done))[:, 0]
                if tf.size(active) == 0:
                    break
                rows = active[:, None]
                x_a, y_a, adv_a = tf.gather(x, active), tf.gather(y, active), tf.gather(adv, active)
                g = _spsa_gradient(model, adv_a, y_a, tf.random.experimental.stateless_fold_in(seed, t),
                                   delta, samples, targeted)
                step, m_a, u_a = _adam_ascent(tf.gather(m, active), tf.gather(u, active), g,
                                              tf.cast(t + 1, tf.float32), learning_rate)
                adv_a = into_ball(adv_a + step, x_a, eps, clip)
                adv = tf.tensor_scatter_nd_update(adv, rows, adv_a)
                m = tf.tensor_scatter_nd_update(m, rows, m_a)
                u = tf.tensor_scatter_nd_update(u, rows, u_a)
                if early_stop:
                    # one more query per example: SPSA never evaluates the current point itself
                    success = objective(model.logits(adv_a), y_a, targeted) > 0
                    done = tf.tensor_scatter_nd_update(done, rows, success)
            return adv, m, u, done

        return run

    return compiled(attack_model, ("spsa", targeted, early_stop, clip), factory)


def spsa(model, x, y=None, *, eps: float, steps: int = 100, samples: int = 128, delta: float = 0.01,
         learning_rate: float = 0.01, targeted: bool = False, early_stop: bool = True,
         clip: Optional[Sequence[float]] = (0.0, 1.0), batch_size: int = 64, seed: Optional[int] = None,
         verbose: int = 1, output: str = "auto") -> np.ndarray:
    """SPSA attack (Uesato et al. 2018, "Adversarial Risk and the Dangers of Evaluating Against
    Weak Attacks", §3.1 and Algorithm 1), L∞ — gradient-free.

    From a uniform random start in the ε-ball, each of ``steps`` steps estimates the gradient
    of the margin objective from ``2·samples`` model evaluations at ``x' ± δ·v`` (Rademacher
    ``v``, antithetic pairs), takes an Adam step of rate ``learning_rate`` up that estimate
    and projects back onto the ε-ball and the box — as cleverhans's ``spsa``, whose
    ``spsa_samples`` counts evaluations (``spsa_samples=128`` there is ``samples=64`` here),
    but batched over ``batch_size`` images and compiled.

    ``early_stop``: an example is no longer refined once it is misclassified (reaches the
    target when ``targeted``); examples misclassified from the start are returned unchanged.
    Without it every example runs all steps and the last iterate is returned.
    ``y``: true labels, or target labels with ``targeted=True``; by default the model's
    predictions. ``seed`` fixes every random draw (same seed and batch size, same result).
    """
    x_checked = np.asarray(x)
    attack_model = as_query_model(model, output, probe=x_checked if x_checked.ndim > 1 else None)
    eps = check_eps(eps)
    steps = check_count(steps, "steps")
    samples = check_count(samples, "samples")
    delta = check_positive(delta, "delta")
    learning_rate = check_positive(learning_rate, "learning_rate")
    batch_size = check_count(batch_size, "batch_size")
    x, y = check_inputs(attack_model, x, y, clip, require_labels=targeted)
    clip = clip_key(clip)
    if eps == 0:
        return x.copy()
    run = _compiled_spsa(attack_model, bool(targeted), bool(early_stop), clip)
    numbers = (tf.constant(eps, tf.float32), tf.constant(delta, tf.float32),
               tf.constant(learning_rate, tf.float32), tf.constant(samples))
    rng = generator(seed)
    out = np.empty_like(x)
    ticks = Ticks(len(range(0, len(x), batch_size)) * steps, verbose, "spsa")
    for part in batches(len(x), batch_size):
        out[part] = _spsa_batch(run, attack_model, x[part], None if y is None else y[part], steps,
                                numbers, batch_seed(rng), clip, bool(targeted), bool(early_stop), ticks)
    ticks.close()
    return out


def _spsa_batch(run, attack_model, x, y, steps, numbers, seed, clip, targeted, early_stop,
                ticks) -> np.ndarray:
    """SPSA on one batch: random start, then ``run`` ``_SPSA_STEPS_PER_CALL`` steps at a time."""
    y, clean = clean_objective(attack_model, x, y, targeted)
    xb, yb, eps = tf.constant(x), tf.constant(y), numbers[0]
    start_seed, step_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    start = into_ball(xb + tf.random.stateless_uniform(tf.shape(xb), start_seed, -eps, eps), xb, eps, clip)
    done = tf.constant(clean > 0) if early_stop else tf.zeros(len(x), tf.bool)
    adv = tf.where(tf.reshape(done, [-1] + [1] * (xb.shape.rank - 1)), xb, start)
    m = u = tf.zeros_like(xb)
    for first in range(0, steps, _SPSA_STEPS_PER_CALL):
        if early_stop and bool(tf.reduce_all(done)):
            ticks.advance(steps - first)
            break
        count = min(_SPSA_STEPS_PER_CALL, steps - first)
        adv, m, u, done = run(xb, yb, adv, m, u, done, tf.constant(first), tf.constant(count), *numbers,
                              step_seed)
        ticks.advance(count)
    return adv.numpy()


# ---------------------------------------------------------------------------- transfer
@dataclass(frozen=True, eq=False)
class TransferResult:
    """Adversarial examples crafted on a source model and their effect on a target."""

    x_adv: np.ndarray = field(repr=False)
    source_clean_accuracy: float
    source_adversarial_accuracy: float
    target_clean_accuracy: float
    target_adversarial_accuracy: float
    attack: str

    def __str__(self) -> str:
        return (
            f"Transfer attack '{self.attack}' on {len(self.x_adv)} inputs\n"
            f"  source (white-box): clean {self.source_clean_accuracy:.4f} -> "
            f"adversarial {self.source_adversarial_accuracy:.4f}\n"
            f"  target (transfer):  clean {self.target_clean_accuracy:.4f} -> "
            f"adversarial {self.target_adversarial_accuracy:.4f}"
        )


def _resolve_attack(attack: Union[str, Callable]) -> tuple[Callable, str]:
    if isinstance(attack, str):
        name = attack.lower()
        if name not in TRANSFER_ATTACKS:
            raise ValueError(
                f"Unknown attack {attack!r}: choose one of {', '.join(map(repr, TRANSFER_ATTACKS))}, "
                "or pass a callable attack(model, x, y, *, eps, ...) -> x_adv"
            )
        return getattr(_gradient, name), name
    if callable(attack):
        return attack, getattr(attack, "__name__", type(attack).__name__)
    raise TypeError(f"attack must be a name ({', '.join(TRANSFER_ATTACKS)}) or a callable, got {attack!r}")


def _check_attack_arguments(fn: Callable, name: str, args: tuple, kwargs: dict) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as error:
        raise TypeError(
            f"attack '{name}' cannot be called with options {sorted(kwargs)}: {error}. Pass its "
            "options as keywords, e.g. transfer(source, target, x, y, attack='pgd', eps=0.1)"
        ) from None
    if "eps" in kwargs:
        check_eps(kwargs["eps"])


def _target_labels(target, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Predicted classes of ``target``, through its ``predict`` alone, and its class count."""
    if isinstance(target, keras.Model):
        scores = np.asarray(target.predict(x, verbose=0))
        if scores.ndim == 2 and scores.shape[1] == 1:  # one binary output: a logit or a probability
            threshold = 0.5 if as_attack_model(target).probabilities else 0.0
            return (scores[:, 0] > threshold).astype(np.int64), 2
    else:
        scores = np.asarray(target.predict(x))
    if scores.ndim != 2 or scores.shape[0] != len(x) or scores.shape[1] < 2:
        raise ValueError(
            f"target.predict returned shape {scores.shape} for {len(x)} inputs; it must return class "
            f"scores (logits or probabilities) shaped ({len(x)}, num_classes) with num_classes >= 2"
        )
    return scores.argmax(axis=-1).astype(np.int64), int(scores.shape[1])


def _check_target(target) -> None:
    if not callable(getattr(target, "predict", None)):
        raise TypeError(
            f"target must have a predict(x) method returning class scores (a tf_keras model, or a "
            f"runtime wrapper of an exported TFLite/ONNX model); got {type(target).__name__}"
        )


def transfer(source, target, x, y, *, attack: Union[str, Callable] = "pgd",
             **attack_kwargs) -> TransferResult:
    """Black-box transfer evaluation (Papernot et al. 2017; docs/limits.md): craft adversarial
    examples on ``source`` with a white-box ``attack`` and score them on ``target``.

    ``attack``: ``"fgsm"``, ``"pgd"``, ``"bim"`` or ``"mim"`` (from
    :mod:`keras_qrobust.attacks.gradient`) or a callable with their signature
    ``attack(model, x, y, *, eps, ...) -> x_adv``; ``attack_kwargs`` go to it (``eps`` is
    required by the named attacks). ``y``: the true labels. ``target`` is used only through
    ``target.predict(x)``, which must return logits or probabilities ``(N, num_classes)``:
    any tf_keras model, or a runtime running an exported model.
    """
    fn, name = _resolve_attack(attack)
    source_model = as_attack_model(source, attack_kwargs.get("output", "auto"))
    x, y = check_inputs(source_model, x, y, attack_kwargs.get("clip", (0.0, 1.0)), require_labels=True)
    _check_target(target)
    if isinstance(target, keras.Model):
        check_inputs(as_attack_model(target), x, y, None)
    _check_attack_arguments(fn, name, (source, x, y), attack_kwargs)
    target_clean, num_classes = _target_labels(target, x)
    if y.max() >= num_classes:
        raise ValueError(f"labels go up to {y.max()} but target.predict scores {num_classes} classes")
    x_adv = np.asarray(fn(source, x, y, **attack_kwargs), dtype=np.float32)
    if x_adv.shape != x.shape:
        raise ValueError(f"attack '{name}' returned shape {x_adv.shape} for inputs of shape {x.shape}")
    return TransferResult(
        x_adv=x_adv,
        source_clean_accuracy=float(np.mean(source_model.predict_labels(x) == y)),
        source_adversarial_accuracy=float(np.mean(source_model.predict_labels(x_adv) == y)),
        target_clean_accuracy=float(np.mean(target_clean == y)),
        target_adversarial_accuracy=float(np.mean(_target_labels(target, x_adv)[0] == y)),
        attack=name,
    )

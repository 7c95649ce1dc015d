"""Universal adversarial perturbations (UAPs): one perturbation ``v`` with ``‖v‖ ≤ ε`` that
changes the prediction of many inputs at once, ``f(clip(x + v)) ≠ f(x)``.

* :func:`uap` — Moosavi-Dezfooli et al. 2017, "Universal adversarial perturbations"
  (Algorithm 1): ``v = 0``; pass over the shuffled data; for every input still classified as
  before (``f(x + v) = f(x)``) find a small step ``δ`` at ``x + v`` (DeepFool, or FGSM of
  strength α), then ``v ← Π_ε(v + δ)``; stop when the fooling rate reaches ``1 − δ`` or
  after ``max_passes``. Batched here: each update aggregates the steps of ``batch_size``
  inputs; ``batch_size=1`` is the original sequential algorithm.
* :func:`sgd_uap` / :func:`targeted_uap` — Shafahi et al. 2020, "Universal adversarial
  training" (SGD-UAP): ``v ← Π_ε(v + α·sign(∇_v mean_batch min(CE(x + v), β)))``; the
  targeted variant descends the cross-entropy of the target class.
* :func:`ensemble_uap` — Zhou et al. 2022, "Guarding Against Universal Adversarial
  Perturbations in Data-driven Cloud/Edge Services" (Algorithm 2): the UAP loop where each
  update samples a model from a set of differently quantized copies of one network (fp32
  included), so the perturbation fools all of them.
* :func:`uap_transfer_matrix` — UAP crafted on model i, accuracy of model j.

The fooling rate is always measured against the model's own clean predictions
(``mean[f(clip(x + v)) ≠ f(x)]``), never against the true labels. Every update runs as a
``tf.function`` compiled once per model and configuration (ε and step sizes are tensors, so
sweeping ε does not retrace). Quantized models give straight-through gradients.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np

from .._keras import keras, tf
from .._tables import markdown_table, percent
from ._common import (
    AttackModel,
    as_attack_model,
    batches,
    check_count,
    check_eps,
    check_inputs,
    check_norm,
    clip_key,
    compiled,
    normalize,
    progress,
    project,
    to_box,
)

__all__ = [
    "UAPResult",
    "TransferMatrix",
    "fooling_rate",
    "uap",
    "sgd_uap",
    "targeted_uap",
    "ensemble_uap",
    "uap_transfer_matrix",
]

INNER_ATTACKS = ("fgsm", "deepfool")
AGGREGATES = ("gradient", "steps")
SAMPLINGS = ("step", "pass")
METHODS = ("uap", "sgd_uap")
_EVAL_BATCH = 128  # measured fastest on CPU, ~1.5-3x faster than 512 for quantized models

Clip = Optional[Sequence[float]]


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True, eq=False)
class UAPResult:
    """A universal perturbation and how it was made.

    Attributes:
        perturbation: ``v``, shaped like ONE input (add it to a batch: ``clip(x + v)``).
        fooling_rate: on the crafting data, against the clean predictions (for an ensemble
            the mean over its models).
        passes: passes over the data (``uap``, ``ensemble_uap``) or epochs (``sgd_uap``) run.
        seconds: wall time of the crafting (clean predictions, tracing and passes; input
            validation excluded).
        history: fooling rate after each pass / epoch.
        method: ``"uap-fgsm"``, ``"uap-deepfool"``, ``"sgd_uap"``, ``"targeted_uap"``,
            ``"ensemble_uap"``.
        eps: the budget of the constraint ``‖v‖_norm ≤ eps``.
        norm: its norm.
        clip: the input box.
        model_fooling_rates: the final fooling rate of each model (one entry for one model).
        target_rate: targeted UAPs only: fraction of the crafting inputs classified as the
            target class under ``v``.
    """

    perturbation: np.ndarray
    fooling_rate: float
    passes: int
    seconds: float
    history: list
    method: str
    eps: float
    norm: str
    clip: Optional[tuple] = (0.0, 1.0)
    model_fooling_rates: tuple = ()
    target_rate: Optional[float] = None

    @property
    def epochs(self) -> int:
        """``passes`` under its SGD-UAP name."""
        return self.passes

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if copy or (dtype is not None and np.dtype(dtype) != self.perturbation.dtype):
            return np.array(self.perturbation, dtype=dtype, copy=True)
        return self.perturbation

    def apply(self, x) -> np.ndarray:
        """The perturbed inputs ``clip(x + v)`` (numpy)."""
        out = np.asarray(x, np.float32) + self.perturbation
        return out if self.clip is None else np.clip(out, self.clip[0], self.clip[1])

    def __repr__(self) -> str:
        return (f"UAPResult(method={self.method!r}, eps={self.eps:g}, norm={self.norm!r}, "
                f"fooling_rate={self.fooling_rate:.4f}, passes={self.passes}, "
                f"seconds={self.seconds:.2f})")


@dataclass(frozen=True, eq=False)
class TransferMatrix:
    """UAPs crafted on each model and scored on every model.

    Attributes:
        names: model names, the order of rows (crafted on) and columns (evaluated on).
        accuracy: ``[i, j]`` accuracy of model j on ``clip(x_eval + v_i)``.
        clean_accuracy: ``[j]`` accuracy of model j on ``x_eval``.
        fooling_rate: ``[i, j]`` fraction of ``x_eval`` whose prediction by model j changes
            under ``v_i``.
        perturbations: name -> ``v_i`` (shaped like one input).
        eps: the budget.
        method: the crafting function (``"uap"`` or ``"sgd_uap"``).
    """

    names: list
    accuracy: np.ndarray
    clean_accuracy: np.ndarray
    fooling_rate: np.ndarray
    perturbations: dict = field(repr=False)
    eps: float
    method: str

    def to_dict(self, perturbations: bool = False) -> dict:
        """JSON-ready dict (plain lists and floats); the perturbations only on request."""
        data = {
            "names": list(self.names),
            "eps": float(self.eps),
            "method": self.method,
            "clean_accuracy": [float(a) for a in self.clean_accuracy],
            "accuracy": [[float(a) for a in row] for row in self.accuracy],
            "fooling_rate": [[float(a) for a in row] for row in self.fooling_rate],
        }
        if perturbations:
            data["perturbations"] = {n: np.asarray(v).tolist() for n, v in self.perturbations.items()}
        return data

    def to_json(self, perturbations: bool = False) -> str:
        return json.dumps(self.to_dict(perturbations))

    def to_markdown(self) -> str:
        """Accuracy (%) of each evaluated model (columns) under the UAP of each row."""
        headers = ["crafted on \\ evaluated on", *self.names]
        rows = [["clean", *(percent(a) for a in self.clean_accuracy)]]
        rows += [[name, *(percent(a) for a in row)] for name, row in zip(self.names, self.accuracy)]
        title = f"UAP transfer ({self.method}, eps={self.eps:g}): accuracy %"
        return f"{title}\n\n{markdown_table(headers, rows)}\n"


# ----------------------------------------------------------------------------- checks
def _attack_models(models, output: str = "auto") -> list:
    """Wrap a non-empty list (or dict values) of models that share input shape and classes."""
    if isinstance(models, Mapping):
        models = list(models.values())
    elif isinstance(models, (keras.Model, AttackModel)):
        models = [models]
    else:
        models = list(models)
    if not models:
        raise ValueError(
            "models is empty: pass at least one model, e.g. "
            "[model, kq.RobustQuantizer(4, 4).quantize(model, x[:1000])]"
        )
    wrapped = [as_attack_model(m, output) for m in models]
    shapes = {am.input_shape for am in wrapped}
    if len(shapes) > 1:
        listing = ", ".join(f"'{am.model.name}': {am.input_shape}" for am in wrapped)
        raise ValueError(f"all models must take the same input shape, got {listing}")
    classes = {am.num_classes for am in wrapped}
    if len(classes) > 1:
        listing = ", ".join(f"'{am.model.name}': {am.num_classes}" for am in wrapped)
        raise ValueError(f"all models must have the same number of classes, got {listing}")
    return wrapped


def _check_perturbation(perturbation, attack_model: AttackModel) -> np.ndarray:
    """``v`` shaped like one input (or ``(1, *input)``), finite; returned as ``(1, *input)``."""
    v = np.asarray(perturbation, dtype=np.float32)
    expected = attack_model.input_shape
    shape = v.shape[1:] if v.ndim == len(expected) + 1 and v.shape[0] == 1 else v.shape
    if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
        raise ValueError(
            f"perturbation has shape {v.shape}; it must be shaped like one input of model "
            f"'{attack_model.model.name}': {expected}"
        )
    if not np.all(np.isfinite(v)):
        raise ValueError("perturbation contains NaN or infinite values")
    return v.reshape((1, *shape))


def _check_fraction(value, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _check_choice(value, choices: tuple, name: str) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


# ----------------------------------------------------------------------------- compiled pieces
def _specs(attack_model: AttackModel) -> tuple:
    """Signatures of a batch ``x``, its labels and ``v`` (batch dimension 1)."""
    shape = attack_model.input_shape
    return (tf.TensorSpec((None, *shape), tf.float32), tf.TensorSpec((None,), tf.int64),
            tf.TensorSpec((1, *shape), tf.float32))


_SCALAR = tf.TensorSpec((), tf.float32)


def _logits_and_gradient(model: AttackModel, point: tf.Tensor, y: tf.Tensor, clip) -> tuple:
    """Logits at ``clip(point)`` and the per-example gradient of CE(·, y) w.r.t. ``point``.

    The gradient goes through the box clip, so a pixel the clip pins (``x + v`` outside
    ``clip``) gets no push: it is the exact gradient of ``v -> CE(f(clip(x + v)))``.
    """
    with tf.GradientTape() as tape:
        tape.watch(point)
        logits = model.logits(to_box(point, clip))
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    return logits, _or_zeros(tape.gradient(loss, point), point, model)


def _or_zeros(grad, like: tf.Tensor, model: AttackModel) -> tf.Tensor:
    if grad is None:
        warnings.warn(
            f"Model '{model.model.name}' gives no gradient with respect to its input; the "
            "UAP sees zeros. Use a transfer UAP from a float surrogate instead.",
            stacklevel=3,
        )
        return tf.zeros_like(like)
    return grad


def _labels_fn(attack_model: AttackModel, clip: Optional[tuple]) -> Callable:
    """``run(x, v) -> argmax f(clip(x + v))``."""
    x_spec, _, v_spec = _specs(attack_model)

    def factory(get_model):
        # autograph off (here and in the steps): the bodies have no tensor-dependent Python
        # control flow, and skipping the conversion makes the first call much cheaper
        @tf.function(input_signature=[x_spec, v_spec], autograph=False)
        def run(x, v):
            return tf.argmax(get_model().logits(to_box(x + v, clip)), axis=-1)

        return run

    return compiled(attack_model, ("uap_labels", clip), factory)


def _mask(active: tf.Tensor, rank: int) -> tf.Tensor:
    """``active`` (batch,) reshaped to broadcast against a batch of inputs of ``rank``."""
    return tf.reshape(active, tf.concat([tf.shape(active), tf.ones([rank - 1], tf.int32)], 0))


def _mean_of_active(delta: tf.Tensor, active: tf.Tensor) -> tf.Tensor:
    """Mean over the batch of the steps of the active (not yet fooled) inputs, ``(1, ...)``."""
    total = tf.reduce_sum(delta * _mask(active, delta.shape.rank), axis=0, keepdims=True)
    return total / tf.maximum(1.0, tf.reduce_sum(active))


def _fgsm_step_fn(attack_model: AttackModel, norm: str, clip: Optional[tuple], aggregate: str) -> Callable:
    """``step(x, y, v, eps, alpha) -> v'``: one batched UAP update with FGSM inner steps.

    With ``A`` the inputs still labelled ``y_i`` under ``v`` and ``g_i = ∇ CE(f(clip(x_i + v)), y_i)``:
    ``aggregate="gradient"``: ``v' = Π_ε(v + α·dir(Σ_{i∈A} g_i))`` (FGSM on the batch loss of A);
    ``aggregate="steps"``: ``v' = Π_ε(v + mean_{i∈A} α·dir(g_i))`` (mean of per-input FGSM steps).
    """
    x_spec, y_spec, v_spec = _specs(attack_model)

    def factory(get_model):
        @tf.function(input_signature=[x_spec, y_spec, v_spec, _SCALAR, _SCALAR], autograph=False)
        def step(x, y, v, eps, alpha):
            logits, grad = _logits_and_gradient(get_model(), x + v, y, clip)
            active = tf.cast(tf.equal(tf.argmax(logits, axis=-1), y), tf.float32)
            if aggregate == "gradient":
                total = tf.reduce_sum(grad * _mask(active, grad.shape.rank), axis=0, keepdims=True)
                delta = alpha * normalize(total, norm)
            else:
                delta = _mean_of_active(alpha * normalize(grad, norm), active)
            return project(v + delta, eps, norm)

        return step

    return compiled(attack_model, ("uap_fgsm", norm, clip, aggregate), factory)


def _deepfool_step_fn(attack_model: AttackModel, norm: str, clip: Optional[tuple], steps: int,
                      overshoot: float, num_candidates: int) -> Callable:
    """``step(x, y, v, eps, alpha) -> v'`` with DeepFool inner steps (``alpha`` unused).

    ``δ_i`` = DeepFool's minimal perturbation of ``clip(x_i + v)`` away from ``y_i`` (zero for
    inputs already fooled); ``v' = Π_ε(v + mean of the non-zero δ_i)``.
    """
    from .deepfool import deepfool_perturbation  # lazily: DeepFool is only needed here

    x_spec, y_spec, v_spec = _specs(attack_model)

    def factory(get_model):
        @tf.function(input_signature=[x_spec, y_spec, v_spec, _SCALAR, _SCALAR])
        def step(x, y, v, eps, alpha):
            delta = deepfool_perturbation(get_model(), to_box(x + v, clip), y, steps=steps,
                                          overshoot=overshoot, norm=norm,
                                          num_candidates=num_candidates, clip=clip)
            axes = list(range(1, delta.shape.rank))
            active = tf.cast(tf.reduce_any(tf.not_equal(delta, 0.0), axis=axes), tf.float32)
            return project(v + _mean_of_active(delta, active), eps, norm)

        return step

    key = ("uap_deepfool", norm, clip, steps, float(overshoot), num_candidates)
    return compiled(attack_model, key, factory)


def _sgd_step_fn(attack_model: AttackModel, norm: str, clip: Optional[tuple], targeted: bool) -> Callable:
    """``step(x, y, v, eps, alpha, beta) -> v'``: one SGD-UAP update (Shafahi 2020).

    Untargeted: ``v' = Π_ε(v + α·dir(∇_v mean_i min(CE_i, β)))`` with ``y`` the clean labels;
    targeted: ``v' = Π_ε(v − α·dir(∇_v mean_i max(CE_i, β)))`` with ``y`` the target class.
    """
    x_spec, y_spec, v_spec = _specs(attack_model)

    def factory(get_model):
        @tf.function(input_signature=[x_spec, y_spec, v_spec, _SCALAR, _SCALAR, _SCALAR], autograph=False)
        def step(x, y, v, eps, alpha, beta):
            model = get_model()
            with tf.GradientTape() as tape:
                tape.watch(v)
                logits = model.logits(to_box(x + v, clip))
                loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
                if targeted:
                    objective = -tf.reduce_mean(tf.maximum(loss, beta))
                else:
                    objective = tf.reduce_mean(tf.minimum(loss, beta))
            grad = _or_zeros(tape.gradient(objective, v), v, model)
            return project(v + alpha * normalize(grad, norm), eps, norm)

        return step

    return compiled(attack_model, ("sgd_uap", norm, clip, targeted), factory)


# ----------------------------------------------------------------------------- evaluation
def _predict(attack_model: AttackModel, x: np.ndarray, v: tf.Tensor, clip, batch_size: int) -> np.ndarray:
    """``argmax f(clip(x + v))`` for all of ``x`` (numpy int64)."""
    run = _labels_fn(attack_model, clip)
    parts = [run(tf.constant(x[s]), v).numpy() for s in batches(len(x), batch_size)]
    return np.concatenate(parts).astype(np.int64)


def _rates(models: list, x: np.ndarray, v: tf.Tensor, clean: list, clip,
           batch_size: int = _EVAL_BATCH) -> list:
    """Fooling rate of each model: ``mean[f(clip(x + v)) ≠ f(x)]``."""
    return [float(np.mean(_predict(am, x, v, clip, batch_size) != c)) for am, c in zip(models, clean)]


def _zeros(attack_model: AttackModel) -> tf.Tensor:
    return tf.zeros((1, *attack_model.input_shape), tf.float32)


def fooling_rate(model, x, perturbation, *, clip: Clip = (0.0, 1.0), batch_size: int = _EVAL_BATCH,
                 output: str = "auto") -> float:
    """Fraction of ``x`` whose predicted label changes when ``perturbation`` is added:
    ``mean_i [argmax f(clip(x_i + v)) ≠ argmax f(x_i)]`` (against the model's clean
    predictions, not the true labels).

    ``perturbation``: shaped like one input (or a :class:`UAPResult`).
    """
    attack_model = as_attack_model(model, output)
    x, _ = check_inputs(attack_model, x, None, clip)
    v = _check_perturbation(perturbation, attack_model)
    batch_size = check_count(batch_size, "batch_size")
    clip = clip_key(clip)
    clean = _predict(attack_model, x, _zeros(attack_model), clip, batch_size)
    return _rates([attack_model], x, tf.constant(v), [clean], clip, batch_size)[0]


# ----------------------------------------------------------------------------- the UAP loop
@dataclass
class _Loop:
    """Everything one run of the (ensemble) UAP loop needs, checked."""

    models: list
    steps: list
    x: np.ndarray
    eps: float
    alpha: float
    norm: str
    clip: Optional[tuple]
    max_passes: int
    target: float
    patience: Optional[int]
    min_gain: float
    batch_size: int
    sampling: str
    seed: Optional[int]
    verbose: int
    method: str


class _Bar:
    """A progress bar ticked once per update, showing the latest fooling rate (none for
    ``verbose=0``)."""

    def __init__(self, total: int, verbose: int, desc: str):
        self._bar = progress(range(total), total=total, verbose=verbose, desc=desc)
        self._ticks = iter(self._bar)

    def tick(self) -> None:
        next(self._ticks, None)

    def show(self, rate: float) -> None:
        if hasattr(self._bar, "set_postfix"):
            self._bar.set_postfix(fooling=f"{rate:.3f}")

    def close(self) -> None:
        if hasattr(self._bar, "close"):
            self._bar.close()


def _stalled(history: list, patience: Optional[int], min_gain: float) -> bool:
    """Have the last ``patience`` passes all failed to beat the earlier best by ``min_gain``?"""
    if not patience or len(history) <= patience:
        return False
    return max(history[-patience:]) < max(history[:-patience]) + min_gain


def _draw_models(rng: np.random.Generator, count: int, sampling: str, steps: int) -> list:
    """The model of each step of a pass: one draw per step or per pass (none for one model,
    so a single-model run's randomness is only the pass orders ``rng.permutation(n)``)."""
    if count == 1:
        return [0] * steps
    if sampling == "pass":
        return [int(rng.integers(count))] * steps
    return [int(k) for k in rng.integers(count, size=steps)]


def _run_loop(loop: _Loop) -> UAPResult:
    """Passes over shuffled ``x``; each batch updates ``v`` with one (sampled) model's step.

    Returns the perturbation of the pass with the highest fooling rate.
    """
    start = time.perf_counter()
    clean = [_predict(am, loop.x, _zeros(am), loop.clip, _EVAL_BATCH) for am in loop.models]
    rng = np.random.default_rng(loop.seed)
    n, count = len(loop.x), len(loop.models)
    v = _zeros(loop.models[0])
    eps, alpha = tf.constant(loop.eps, tf.float32), tf.constant(loop.alpha, tf.float32)
    bar = _Bar(loop.max_passes * math.ceil(n / loop.batch_size), loop.verbose, loop.method)
    history, best = [], (-1.0, v, [])  # best: (mean fooling rate, v, per-model rates)
    for _ in range(loop.max_passes):
        order = rng.permutation(n)
        parts = list(batches(n, loop.batch_size))
        for part, k in zip(parts, _draw_models(rng, count, loop.sampling, len(parts))):
            idx = order[part]
            v = loop.steps[k](tf.constant(loop.x[idx]), tf.constant(clean[k][idx]), v, eps, alpha)
            bar.tick()
        rates = _rates(loop.models, loop.x, v, clean, loop.clip)
        history.append(float(np.mean(rates)))
        if history[-1] > best[0]:
            best = (history[-1], v, rates)
        bar.show(history[-1])
        if history[-1] >= loop.target or _stalled(history, loop.patience, loop.min_gain):
            break
    bar.close()
    return UAPResult(
        perturbation=best[1].numpy()[0], fooling_rate=best[0], passes=len(history),
        seconds=time.perf_counter() - start, history=history, method=loop.method, eps=loop.eps,
        norm=loop.norm, clip=loop.clip, model_fooling_rates=tuple(best[2]),
    )


_DEEPFOOL_DEFAULTS = {"steps": 50, "overshoot": 0.02, "num_candidates": 10}


def _deepfool_options(options: Optional[dict]) -> dict:
    options = dict(options or {})
    unknown = set(options) - set(_DEEPFOOL_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown deepfool options {sorted(unknown)}; use {sorted(_DEEPFOOL_DEFAULTS)}")
    merged = {**_DEEPFOOL_DEFAULTS, **options}
    return {"steps": check_count(merged["steps"], "deepfool steps"),
            "overshoot": check_eps(merged["overshoot"], "deepfool overshoot"),
            "num_candidates": check_count(merged["num_candidates"], "deepfool num_candidates")}


def _make_loop(models, x, *, eps, norm, inner, aggregate, step_size, max_passes, target_fooling,
               patience, min_gain, batch_size, clip, seed, verbose, output, sampling, method,
               deepfool) -> _Loop:
    """Validate everything (before any computation) and get the per-model compiled steps.

    ``step_size`` is a number, or a callable ``eps -> step size`` giving the default.
    """
    attack_models = _attack_models(models, output)
    eps = check_eps(eps)
    norm = check_norm(norm)
    inner = _check_choice(inner, INNER_ATTACKS, "inner")
    aggregate = _check_choice(aggregate, AGGREGATES, "aggregate")
    sampling = _check_choice(sampling, SAMPLINGS, "sampling")
    alpha = check_eps(step_size(eps) if callable(step_size) else step_size, "step_size")
    max_passes = check_count(max_passes, "max_passes")
    target = _check_fraction(target_fooling, "target_fooling")
    patience = None if patience is None else check_count(patience, "patience")
    min_gain = _check_fraction(min_gain, "min_gain")
    batch_size = check_count(batch_size, "batch_size")
    options = _deepfool_options(deepfool) if inner == "deepfool" else None
    x, _ = check_inputs(attack_models[0], x, None, clip)
    clip = clip_key(clip)
    if inner == "fgsm":
        steps = [_fgsm_step_fn(am, norm, clip, aggregate) for am in attack_models]
    else:
        steps = [_deepfool_step_fn(am, norm, clip, **options) for am in attack_models]
    return _Loop(attack_models, steps, x, eps, alpha, norm, clip, max_passes, target, patience,
                 min_gain, min(batch_size, len(x)), sampling, seed, verbose, method)


def uap(model, x, *, eps: float, norm="inf", inner: str = "fgsm", step_size: Optional[float] = None,
        max_passes: int = 10, target_fooling: float = 0.8, patience: Optional[int] = 1,
        min_gain: float = 0.02, batch_size: int = 32, aggregate: str = "gradient",
        clip: Clip = (0.0, 1.0), seed: Optional[int] = None, verbose: int = 1, output: str = "auto",
        deepfool: Optional[dict] = None) -> UAPResult:
    """Universal adversarial perturbation (Moosavi-Dezfooli et al. 2017, Algorithm 1), batched.

    ``v = 0``; each pass shuffles ``x`` and walks it in batches of ``batch_size``. The inputs
    of a batch whose label under ``v`` is still their clean label,
    ``A = {i : f(clip(x_i + v)) = f(x_i)}``, move ``v``:

    * ``inner="fgsm"``, ``aggregate="gradient"`` (default): one FGSM step of strength
      ``α = step_size`` on their summed loss,
      ``v ← Π_ε(v + α·sign(Σ_{i∈A} ∇_x CE(f(clip(x_i + v)), f(x_i))))`` (L2: ``α·∇/‖∇‖₂``);
    * ``inner="fgsm"``, ``aggregate="steps"``: the mean of their own FGSM steps,
      ``v ← Π_ε(v + mean_{i∈A} α·sign(∇_x CE_i))``;
    * ``inner="deepfool"``: the mean of DeepFool's minimal perturbations that flip each
      ``clip(x_i + v)``, ``v ← Π_ε(v + mean_{i∈A} δ_i)`` (options in ``deepfool``:
      ``steps``, ``overshoot``, ``num_candidates``; ``step_size`` is unused).

    ``batch_size=1`` is the original sequential algorithm (for FGSM both rules coincide).
    The gradient is taken through the box clip, so pixels the clip pins are not pushed.
    After each pass the fooling rate on ``x`` is measured. The loop stops when it reaches
    ``target_fooling`` (the paper's ``1 − δ``), when ``patience`` passes in a row have not
    raised the best fooling rate by ``min_gain`` (``patience=None``: never), or after
    ``max_passes``; the perturbation of the best pass is returned.

    Defaults, measured on Fashion-MNIST cnn_small (1,000 training images, ε = 0.1, fooling
    on the 10,000 test images): ``α = eps/5`` with the summed-gradient rule reaches 36%
    (mean of 8 seeds, 2.5 passes) where the mean of per-input steps at ``α = eps`` reaches
    about 25%, oscillating from pass to pass; larger ``batch_size`` (64) reaches ~41% in
    about twice the time. Passes after the second gain little more than the pass-to-pass
    noise (a few points), hence ``min_gain``.

    Args:
        model: a tf_keras classifier (float or quantized: straight-through gradients).
        x: the crafting inputs in the box ``clip``. Craft on training data and measure with
            :func:`fooling_rate` on held-out data for an honest number.
        eps: radius of the ``norm`` ball ``v`` stays in.
        step_size: ``α`` of the FGSM inner step; default ``eps/5``.
        seed: seeds the pass orders (``np.random.default_rng(seed).permutation(len(x))``
            pass after pass): the same seed gives the same perturbation.
        verbose: 0 hides the progress bar.
        output: ``"auto"``, ``"logits"`` or ``"probabilities"`` (what the model returns).

    Returns:
        a :class:`UAPResult` (``np.asarray(result)`` is ``v``).
    """
    loop = _make_loop([model], x, eps=eps, norm=norm, inner=inner, aggregate=aggregate,
                      step_size=(lambda e: e / 5.0) if step_size is None else step_size,
                      max_passes=max_passes, target_fooling=target_fooling, patience=patience,
                      min_gain=min_gain, batch_size=batch_size, clip=clip, seed=seed, verbose=verbose,
                      output=output, sampling="step", method=f"uap-{inner}", deepfool=deepfool)
    return _run_loop(loop)


def ensemble_uap(models, x, *, eps: float, sampling: str = "step", step_size: Optional[float] = None,
                 max_passes: int = 10, target_fooling: float = 0.8, patience: Optional[int] = 1,
                 min_gain: float = 0.02, batch_size: int = 32, aggregate: str = "steps", norm="inf",
                 inner: str = "fgsm", clip: Clip = (0.0, 1.0), seed: Optional[int] = None,
                 verbose: int = 1, output: str = "auto", deepfool: Optional[dict] = None) -> UAPResult:
    """Ensemble UAP (Zhou et al. 2022, Algorithm 2): one perturbation for a set of models.

    The :func:`uap` loop, but each update uses a model ``f`` drawn uniformly from ``models``
    (differently quantized copies of one network, fp32 included): re-drawn every step
    (``sampling="step"``, default) or once per pass (``sampling="pass"``). The default step
    is the authors' (DESIGN.md §3): FGSM of strength ``α = step_size = eps``, the mean of the
    per-input steps of the inputs ``A`` that ``f`` still labels as before,
    ``v ← Π_ε(v + mean_{i∈A} α·sign(∇ CE(f(clip(x_i + v)), f(x_i))))``. Each model's fooling
    rate is measured against its own clean predictions; the loop stops when their mean
    reaches ``target_fooling``, when it stalls for ``patience`` passes (see :func:`uap`), or
    after ``max_passes``. ``result.model_fooling_rates`` holds each model's rate.

    ``step_size=eps/5, aggregate="gradient"`` (the :func:`uap` default rule) is markedly
    stronger: on Fashion-MNIST cnn_small with {fp32, w8a8, w4a4, w2a2} at ε = 0.1 it fools
    20-35% of the test images on fp32/w8a8/w4a4 against 14-20% for the default
    (``benchmarks/attacks.py`` runs both).

    Zhou's two settings are only a choice of ``x``:

    * direct — craft on the test data (and measure on it);
    * indirect — craft on training data, measure on the test data (the realistic one).

    Example::

        import keras_qrobust as kq
        from keras_qrobust.attacks.uap import ensemble_uap, fooling_rate

        models = [model] + [kq.RobustQuantizer.from_setting(s).quantize(model, x_train[:1000])
                            for s in ("w8a8", "w4a4", "w2a2")]
        # direct: craft on the test data
        direct = ensemble_uap(models, x_test, eps=0.1, seed=0)
        print(direct.model_fooling_rates)
        # indirect: craft on training data, score on the test data
        indirect = ensemble_uap(models, x_train[:2000], eps=0.1, seed=0)
        print([fooling_rate(m, x_test, indirect) for m in models])

    Raises ValueError for an empty ``models`` or models with different input shapes.
    """
    loop = _make_loop(models, x, eps=eps, norm=norm, inner=inner, aggregate=aggregate,
                      step_size=(lambda e: e) if step_size is None else step_size,
                      max_passes=max_passes, target_fooling=target_fooling, patience=patience,
                      min_gain=min_gain, batch_size=batch_size, clip=clip, seed=seed, verbose=verbose,
                      output=output, sampling=sampling, method="ensemble_uap", deepfool=deepfool)
    return _run_loop(loop)


# ----------------------------------------------------------------------------- SGD-UAP
def sgd_uap(model, x, *, eps: float, epochs: int = 10, batch_size: int = 128,
            step_size: Optional[float] = None, loss_clip: Optional[float] = None, norm="inf",
            targeted_class: Optional[int] = None, clip: Clip = (0.0, 1.0), seed: Optional[int] = None,
            verbose: int = 1, output: str = "auto") -> UAPResult:
    """SGD-UAP (Shafahi et al. 2020, "Universal adversarial training", Algorithm 1).

    Mini-batch sign-gradient ascent on the perturbation itself:

        v ← Π_ε(v + α·dir(∇_v (1/B) Σ_i min(CE(f(clip(x_i + v)), f(x_i)), β)))

    ``dir`` is ``sign`` for L∞ (``∇/‖∇‖₂`` for L2), ``α = step_size`` (default ``eps/10``),
    ``β = loss_clip`` (default: no clipping). Clipping the per-example loss at ``β`` stops
    inputs that are already well fooled from dominating the batch gradient.

    ``targeted_class=t`` gives a targeted UAP: descend the cross-entropy of class ``t``,
    ``v ← Π_ε(v − α·dir(∇_v (1/B) Σ_i max(CE(f(clip(x_i + v)), t), β)))`` (here ``β`` is the
    target-class loss below which an input stops pulling). ``result.target_rate`` is the
    fraction of ``x`` then classified as ``t``.

    ``history`` holds the fooling rate after each epoch (on ``x``, against clean predictions).
    """
    attack_model = as_attack_model(model, output)
    eps = check_eps(eps)
    norm = check_norm(norm)
    epochs = check_count(epochs, "epochs")
    batch_size = check_count(batch_size, "batch_size")
    alpha = eps / 10.0 if step_size is None else check_eps(step_size, "step_size")
    targeted = targeted_class is not None
    if targeted:
        targeted_class = _check_target(targeted_class, attack_model)
    beta = _loss_clip(loss_clip, targeted)
    x, _ = check_inputs(attack_model, x, None, clip)
    clip = clip_key(clip)

    start = time.perf_counter()
    clean = _predict(attack_model, x, _zeros(attack_model), clip, _EVAL_BATCH)
    labels = np.full_like(clean, targeted_class) if targeted else clean
    step = _sgd_step_fn(attack_model, norm, clip, targeted)
    constants = [tf.constant(c, tf.float32) for c in (eps, alpha, beta)]
    v, history = _run_sgd(attack_model, step, constants, x, labels, clean, clip, epochs,
                          min(batch_size, len(x)), seed, verbose)
    target_rate = None
    if targeted:
        target_rate = float(np.mean(_predict(attack_model, x, v, clip, _EVAL_BATCH) == targeted_class))
    return UAPResult(
        perturbation=v.numpy()[0], fooling_rate=history[-1], passes=epochs,
        seconds=time.perf_counter() - start, history=history,
        method="targeted_uap" if targeted else "sgd_uap", eps=eps, norm=norm, clip=clip,
        model_fooling_rates=(history[-1],), target_rate=target_rate,
    )


def _run_sgd(attack_model: AttackModel, step: Callable, constants: list, x: np.ndarray, labels: np.ndarray,
             clean: np.ndarray, clip, epochs: int, batch_size: int, seed: Optional[int],
             verbose: int) -> tuple:
    """``epochs`` shuffled passes of SGD-UAP steps; returns ``v`` and the fooling rate per epoch."""
    rng = np.random.default_rng(seed)
    v = _zeros(attack_model)
    bar = _Bar(epochs * math.ceil(len(x) / batch_size), verbose, "sgd_uap")
    history = []
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for part in batches(len(x), batch_size):
            idx = order[part]
            v = step(tf.constant(x[idx]), tf.constant(labels[idx]), v, *constants)
            bar.tick()
        history.append(_rates([attack_model], x, v, [clean], clip)[0])
        bar.show(history[-1])
    bar.close()
    return v, history


def _check_target(target, attack_model: AttackModel) -> int:
    if isinstance(target, bool) or not float(target).is_integer():
        raise ValueError(f"target class must be an integer, got {target!r}")
    target = int(target)
    if not 0 <= target < attack_model.num_classes:
        raise ValueError(
            f"target class must be in [0, {attack_model.num_classes}) for model "
            f"'{attack_model.model.name}', got {target}"
        )
    return target


def _loss_clip(loss_clip: Optional[float], targeted: bool) -> float:
    """β as a number: no clipping is ``+inf`` (untargeted ``min``) or 0 (targeted ``max``)."""
    if loss_clip is None:
        return 0.0 if targeted else math.inf
    value = float(loss_clip)
    if math.isnan(value) or value <= 0:
        raise ValueError(f"loss_clip must be a number > 0 (a cross-entropy value), got {loss_clip!r}")
    return value


def targeted_uap(model, x, target_class: int, *, eps: float, **kwargs) -> UAPResult:
    """A UAP that pushes inputs to ``target_class``: :func:`sgd_uap` with ``targeted_class``.

    Keyword arguments are those of :func:`sgd_uap` (``epochs``, ``batch_size``, ``step_size``,
    ``loss_clip``, ``norm``, ``clip``, ``seed``, ``verbose``, ``output``).
    """
    return sgd_uap(model, x, eps=eps, targeted_class=target_class, **kwargs)


# ----------------------------------------------------------------------------- transfer
def _model_name(model) -> str:
    return model.model.name if isinstance(model, AttackModel) else str(getattr(model, "name", "model"))


def _model_names(models) -> tuple[list, list]:
    """``(names, models)`` from a dict or a list (list names: model names, made unique)."""
    if isinstance(models, Mapping):
        return [str(k) for k in models], list(models.values())
    models = [models] if isinstance(models, (keras.Model, AttackModel)) else list(models)
    names, seen = [], {}
    for model in models:
        base = _model_name(model)
        seen[base] = seen.get(base, 0) + 1
        names.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return names, models


def _score(models: list, x: np.ndarray, y: np.ndarray, v: tf.Tensor, clean: list, clip) -> tuple:
    """Accuracy and fooling rate of each model on ``clip(x + v)``."""
    preds = [_predict(am, x, v, clip, _EVAL_BATCH) for am in models]
    return ([float(np.mean(p == y)) for p in preds],
            [float(np.mean(p != c)) for p, c in zip(preds, clean)])


def uap_transfer_matrix(models: Union[Mapping, Sequence], x_craft, x_eval, y_eval, *, eps: float,
                        method: str = "uap", seed: Optional[int] = None, verbose: int = 1,
                        clip: Clip = (0.0, 1.0), output: str = "auto", executor: str = "local",
                        address: Optional[str] = None, folder=None, trust: bool = False,
                        **kwargs) -> TransferMatrix:
    """Craft a UAP on each model (on ``x_craft``) and score every model under it (on ``x_eval``).

    ``accuracy[i, j]`` is the accuracy of model j on ``clip(x_eval + v_i)`` against
    ``y_eval``; ``fooling_rate[i, j]`` the fraction of ``x_eval`` whose model-j prediction
    changes; the diagonal is white-box, the rest transfer. ``models``: a dict name -> model,
    or a list (named by ``model.name``). ``method``: ``"uap"`` or ``"sgd_uap"``; ``kwargs``
    go to it (``norm``, ``step_size``, ``max_passes`` ...). Zhou 2022's indirect setting is
    ``x_craft`` = training data; the direct one is ``x_craft = x_eval``.

    Each row (one crafting model) is a task of :func:`keras_qrobust.executor.run_tasks`:
    ``executor="ray"`` (``address``: see there) crafts the rows in parallel, the models
    shipped as their saved bytes and loaded safely (``trust`` as in
    :func:`keras_qrobust.load_model`), with the local run's numbers; ``folder`` keeps each
    finished row so that a rerun crafts only the missing ones.
    """
    from ..executor import check_executor, fingerprint, run_tasks, ship_models

    names, raw = _model_names(models)
    attack_models = _attack_models(raw, output)
    method = _check_choice(method, METHODS, "method")
    eps = check_eps(eps)
    check_executor(executor)
    x_craft, _ = check_inputs(attack_models[0], x_craft, None, clip)
    x_eval, y_eval = check_inputs(attack_models[0], x_eval, y_eval, clip, require_labels=True)
    json.dumps(kwargs)  # tasks and kept rows carry the attack's settings as data
    key = clip_key(clip)
    clean = [_predict(am, x_eval, _zeros(am), key, _EVAL_BATCH) for am in attack_models]
    keras_models = dict(zip(names, (am if executor == "local" else am.model for am in attack_models)))
    shared = {"models": ship_models(keras_models, executor), "names": names, "output": output, "trust": trust,
              "x_craft": x_craft, "x_eval": x_eval, "y_eval": y_eval, "clean": clean, "eps": eps,
              "method": method, "seed": seed, "clip": clip, "kwargs": kwargs,
              "verbose": verbose if executor == "local" else 0}
    same = fingerprint(*(am.model for am in attack_models), x_craft, x_eval, y_eval,
                       [names, method, eps, seed, clip, output, kwargs]) if folder is not None else ""
    rows = run_tasks(_transfer_row, {f"{name}|{same}": (name,) for name in names}, shared=shared,
                     executor=executor, address=address, folder=folder)
    rows = [rows[f"{name}|{same}"] for name in names]
    perturbations = {name: np.asarray(row["perturbation"], np.float32) for name, row in zip(names, rows)}
    clean_accuracy = np.array([np.mean(c == y_eval) for c in clean])
    return TransferMatrix(names, np.array([row["accuracy"] for row in rows]), clean_accuracy,
                          np.array([row["fooling_rate"] for row in rows]), perturbations, eps, method)


def _transfer_row(shared: dict, name: str) -> dict:
    """Row ``name`` of :func:`uap_transfer_matrix`: the UAP crafted on that model and every
    model's accuracy and fooling rate under it (JSON data, a task of ``run_tasks``)."""
    from ..executor import unship

    attack_models = [as_attack_model(unship(shared["models"][n], shared["trust"]), shared["output"])
                     for n in shared["names"]]
    craft = uap if shared["method"] == "uap" else sgd_uap
    result = craft(attack_models[shared["names"].index(name)], shared["x_craft"], eps=shared["eps"],
                   seed=shared["seed"], verbose=shared["verbose"], clip=shared["clip"], **shared["kwargs"])
    v = tf.constant(result.perturbation[None])
    accuracy, fooled = _score(attack_models, shared["x_eval"], shared["y_eval"], v, shared["clean"],
                              clip_key(shared["clip"]))
    return {"accuracy": accuracy, "fooling_rate": fooled, "perturbation": result.perturbation.tolist()}

"""SGD-UAP and targeted UAPs (Shafahi et al. 2020, "Universal adversarial training"):
``v ← Π_ε(v + α·sign(∇_v mean_batch min(CE(x + v), β)))``; the targeted variant descends the
cross-entropy of the target class."""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import numpy as np

from ..._keras import tf
from .._common import (
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
    project,
    to_box,
    zeros_if_none,
)
from ._base import (
    EVAL_BATCH,
    NO_GRADIENT,
    SCALAR,
    Clip,
    ProgressBar,
    UAPResult,
    fooling_rates,
    perturbed_labels,
    specs,
    zero_perturbation,
)

__all__ = ["sgd_uap", "targeted_uap"]


def _sgd_step_fn(attack_model: AttackModel, norm: str, clip: Optional[tuple], targeted: bool) -> Callable:
    """``step(x, y, v, eps, alpha, beta) -> v'``: one SGD-UAP update (Shafahi 2020).

    Untargeted: ``v' = Π_ε(v + α·dir(∇_v mean_i min(CE_i, β)))`` with ``y`` the clean labels;
    targeted: ``v' = Π_ε(v − α·dir(∇_v mean_i max(CE_i, β)))`` with ``y`` the target class.
    """
    x_spec, y_spec, v_spec = specs(attack_model)

    def factory(get_model):
        @tf.function(input_signature=[x_spec, y_spec, v_spec, SCALAR, SCALAR, SCALAR], autograph=False)
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
            grad = zeros_if_none(tape.gradient(objective, v), v, model, NO_GRADIENT)
            return project(v + alpha * normalize(grad, norm), eps, norm)

        return step

    return compiled(attack_model, ("sgd_uap", norm, clip, targeted), factory)


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
    clean = perturbed_labels(attack_model, x, zero_perturbation(attack_model), clip, EVAL_BATCH)
    labels = np.full_like(clean, targeted_class) if targeted else clean
    step = _sgd_step_fn(attack_model, norm, clip, targeted)
    constants = [tf.constant(c, tf.float32) for c in (eps, alpha, beta)]
    v, history = _run_sgd(attack_model, step, constants, x, labels, clean, clip, epochs,
                          min(batch_size, len(x)), seed, verbose)
    target_rate = None
    if targeted:
        target_rate = float(np.mean(perturbed_labels(attack_model, x, v, clip, EVAL_BATCH) == targeted_class))
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
    v = zero_perturbation(attack_model)
    bar = ProgressBar(epochs * math.ceil(len(x) / batch_size), verbose, "sgd_uap")
    history = []
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for part in batches(len(x), batch_size):
            idx = order[part]
            v = step(tf.constant(x[idx]), tf.constant(labels[idx]), v, *constants)
            bar.tick()
        history.append(fooling_rates([attack_model], x, v, [clean], clip)[0])
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

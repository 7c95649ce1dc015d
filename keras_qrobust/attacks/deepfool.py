"""DeepFool (Moosavi-Dezfooli, Fawzi and Frossard, CVPR 2016), L2 and L∞, batched and compiled.

DeepFool linearizes the classifier around the current point and steps to the nearest
linearized decision boundary (paper, Algorithm 2: eq. 8-9 for L2, §3.3 for Lp). With ``k̂``
the label to move away from and ``K`` the candidate classes (the ``num_candidates - 1`` classes other than
``k̂`` with the highest clean logits), at iterate ``x_i``::

    w'_k = ∇f_k(x_i) - ∇f_k̂(x_i),   f'_k = f_k(x_i) - f_k̂(x_i)            (k ∈ K)
    l̂    = argmin_k |f'_k| / ‖w'_k‖_q                                       (eq. 8; §3.3)
    r_i  = (|f'_l̂| / ‖w'_l̂‖_q + 1e-4) · d(w'_l̂)                             (eq. 9; §3.3)

where ``q`` is the dual norm (``q = 2`` for L2, ``q = 1`` for L∞) and ``d(w) = w / ‖w‖₂``
(L2) or ``sign(w)`` (L∞); the ``1e-4`` is the reference implementation's nudge across the
boundary. The perturbations add up, ``r̂ = Σ r_i``, and the iterate is
``x_{i+1} = clip(x + (1 + η)·r̂)`` with overshoot ``η`` (the paper's ``(1 + η)·r̂``, applied
at every step as in the authors' code, so the returned point is the one checked). An
example stops as soon as its label is no longer ``k̂`` or after ``steps`` iterations.

The box ``clip`` (which the paper does not have) is respected by the linearization: at a
pixel on a bound, the gradient component pointing out of the box is dropped before eq. 8-9
(the step could not move that pixel), and ``r̂`` accumulates the clipped perturbation. So the
step goes to the nearest linearized boundary reachable inside the box; without this, steps
keep pushing dark background pixels below 0 and DeepFool needs several times more
iterations on image data. With ``clip=None`` the steps are exactly the paper's.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .._keras import tf
from ._common import (
    AttackModel,
    as_attack_model,
    batches,
    check_eps,
    check_inputs,
    check_norm,
    compiled,
    progress,
    project,
    to_box,
    zeros_if_none,
)

__all__ = ["deepfool", "deepfool_perturbation"]

_NUDGE = 1e-4  # the reference implementation's push across the linearized boundary
_TINY = 1e-12


def _candidates(logits: tf.Tensor, labels: tf.Tensor, count: int) -> tf.Tensor:
    """The ``count`` classes other than ``labels`` with the highest logits, shape (N, count)."""
    is_label = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
    others = tf.where(is_label, tf.constant(-np.inf, logits.dtype), logits)
    return tf.math.top_k(others, k=count).indices


def _linearized_step(attack_model: AttackModel, adv: tf.Tensor, labels: tf.Tensor, others: tf.Tensor,
                     norm: str, clip) -> tf.Tensor:
    """One DeepFool step ``r_i`` at ``adv`` (eq. 8-9 / §3.3), for every example of the batch."""
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(adv)
        logits = attack_model.logits(adv)
        own = tf.gather(logits, labels, batch_dims=1)
        diffs = tf.gather(logits, others, batch_dims=1) - own[:, None]  # f'_k, shape (N, K)
        # examples are independent in inference mode, so the gradient of a batch sum is the
        # per-example gradient: one backward pass per candidate
        columns = [tf.reduce_sum(diffs[:, k]) for k in range(others.shape[1])]
    w = tf.stack([zeros_if_none(tape.gradient(c, adv), adv, attack_model) for c in columns], axis=1)
    del tape
    if clip is not None:  # pixels on a bound cannot move out of the box
        at = adv[:, None]
        blocked = tf.logical_or(tf.logical_and(at <= clip[0], w < 0), tf.logical_and(at >= clip[1], w > 0))
        w = tf.where(blocked, tf.zeros_like(w), w)
    axes = list(range(2, w.shape.rank))
    if norm == "2":
        w_norm = tf.sqrt(tf.reduce_sum(tf.square(w), axes))
    else:  # L∞ attack: the dual norm is L1
        w_norm = tf.reduce_sum(tf.abs(w), axes)
    ratio = tf.abs(diffs) / (w_norm + _TINY)  # distance to each linearized boundary
    best = tf.argmin(ratio, axis=1, output_type=tf.int32)
    distance = tf.gather(ratio, best, batch_dims=1)
    w_best = tf.gather(w, best, batch_dims=1)
    expand = (...,) + (None,) * len(axes)
    if norm == "2":
        direction = w_best / (tf.gather(w_norm, best, batch_dims=1) + _TINY)[expand]
    else:
        direction = tf.sign(w_best)
    return (distance + _NUDGE)[expand] * direction


def _compiled_deepfool(attack_model: AttackModel, norm: str, num_candidates: int, clip):
    """``run(x, labels, steps, overshoot) -> delta`` compiled once per model/configuration."""

    def factory(get_model):
        @tf.function(reduce_retracing=True)
        def run(x, labels, steps, overshoot):
            model = get_model()
            logits = model.logits(x)
            others = _candidates(logits, labels, num_candidates - 1)
            active = tf.equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels)
            total = tf.zeros_like(x)  # r̂ (without overshoot)
            adv = x
            i = tf.constant(0)
            while tf.logical_and(i < steps, tf.reduce_any(active)):
                # only the examples whose label has not flipped yet are computed
                index = tf.where(active)
                x_a, labels_a = tf.gather_nd(x, index), tf.gather_nd(labels, index)
                step = _linearized_step(model, tf.gather_nd(adv, index), labels_a,
                                        tf.gather_nd(others, index), norm, clip)
                total_a = to_box(x_a + tf.gather_nd(total, index) + step, clip) - x_a
                adv_a = to_box(x_a + (1.0 + overshoot) * total_a, clip)
                predicted = tf.argmax(model.logits(adv_a), axis=-1, output_type=labels.dtype)
                total = tf.tensor_scatter_nd_update(total, index, total_a)
                adv = tf.tensor_scatter_nd_update(adv, index, adv_a)
                active = tf.tensor_scatter_nd_update(active, index, tf.equal(predicted, labels_a))
                i += 1
            return adv - x

        return run

    key = ("deepfool", norm, num_candidates, None if clip is None else (float(clip[0]), float(clip[1])))
    return compiled(attack_model, key, factory)


def _check_candidates(num_candidates, num_classes: int) -> int:
    count = int(num_candidates)
    if count < 2:
        raise ValueError(
            f"num_candidates must be >= 2 (the label and at least one other class), got {num_candidates}"
        )
    return min(count, num_classes)


def deepfool_perturbation(attack_model: AttackModel, x: tf.Tensor, labels: tf.Tensor, *, steps: int,
                          overshoot: float, norm: str, num_candidates: int, clip) -> tf.Tensor:
    """Minimal DeepFool perturbation ``δ`` per example (the building block of UAP).

    ``x + δ`` (inside ``clip``) is classified as something other than ``labels`` when the
    attack succeeds within ``steps``; ``δ = 0`` where the model already does not predict
    ``labels`` at ``x``. ``δ`` includes the overshoot: ``δ = clip(x + (1 + η)·r̂) - x``.
    Callable eagerly or inside ``tf.function``; compiled once per model and
    (``norm``, ``num_candidates``, ``clip``); ``steps`` and ``overshoot`` may be tensors.
    """
    norm = check_norm(norm)
    count = _check_candidates(num_candidates, attack_model.num_classes)
    run = _compiled_deepfool(attack_model, norm, count, clip)
    x = tf.convert_to_tensor(x, tf.float32)
    labels = tf.cast(labels, tf.int64)
    steps = tf.cast(steps, tf.int32)
    overshoot = tf.cast(overshoot, tf.float32)
    return run(x, labels, steps, overshoot)


def deepfool(model, x, y=None, *, steps: int = 50, overshoot: float = 0.02, norm="2",
             num_candidates: int = 10, eps: Optional[float] = None,
             clip: Optional[Sequence[float]] = (0.0, 1.0), batch_size: int = 256, verbose: int = 1,
             output: str = "auto") -> np.ndarray:
    """DeepFool adversarial examples (minimal L2 or L∞ perturbations that flip the label).

    ``y``: the labels to move away from (by default the model's predictions; inputs whose
    prediction already differs from ``y`` come back unchanged). ``eps``: when set, each
    perturbation is projected onto the ``norm`` ball of radius ``eps``, so the result can be
    scored "at ε". Returns ``x + δ`` as a float32 array.
    """
    attack_model = as_attack_model(model, output)
    norm = check_norm(norm)
    if int(steps) < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    overshoot = check_eps(overshoot, "overshoot")
    radius = None if eps is None else check_eps(eps)
    count = _check_candidates(num_candidates, attack_model.num_classes)
    x, y = check_inputs(attack_model, x, y, clip)
    if y is None:
        y = attack_model.predict_labels(x, batch_size)
    out = np.empty_like(x)
    parts = list(batches(len(x), batch_size))
    for part in progress(parts, total=len(parts), verbose=verbose, desc="deepfool"):
        xb = tf.constant(x[part])
        delta = deepfool_perturbation(attack_model, xb, tf.constant(y[part]), steps=int(steps),
                                      overshoot=overshoot, norm=norm, num_candidates=count, clip=clip)
        if radius is not None:
            delta = project(delta, radius, norm)
        adv = to_box(xb + delta, clip)
        out[part] = adv.numpy()
    return out

"""FAB, the Fast Adaptive Boundary attack (Croce & Hein 2020b, "Minimally distorted
adversarial examples with a fast adaptive boundary attack", ICML), L∞ and L2, targeted
(FAB-T, as AutoAttack runs it) or untargeted.

FAB looks for the adversarial example closest to the input. At the current point ``x⁽ⁱ⁾``
it linearizes the decision boundary between the true class ``y`` and a class ``s``,

    π_s = {z : f_s(x⁽ⁱ⁾) + ⟨∇f_s(x⁽ⁱ⁾), z − x⁽ⁱ⁾⟩ = 0},   f_s = z_s − z_y          (eq. 4)

— for FAB-T ``s`` is the target class, untargeted it is the class whose hyperplane is
nearest, ``argmin_s |f_s| / ‖∇f_s‖_q`` (``q`` the dual norm, eq. 5) — and takes the
minimal-norm steps onto ``π_s`` inside the box, from the current point and from the input:

    δ⁽ⁱ⁾ = proj_p(x⁽ⁱ⁾, π_s, C) − x⁽ⁱ⁾,   δ_orig = proj_p(x_orig, π_s, C) − x_orig,
    α = min(‖δ⁽ⁱ⁾‖_p / (‖δ⁽ⁱ⁾‖_p + ‖δ_orig‖_p), α_max),
    x⁽ⁱ⁺¹⁾ = P_C((1 − α)(x⁽ⁱ⁾ + η·δ⁽ⁱ⁾) + α(x_orig + η·δ_orig))                  (eq. 7–8)

with overshoot ``η = 1.05`` and ``α_max = 0.1``. When ``x⁽ⁱ⁺¹⁾`` is misclassified it is
kept if it is the closest found so far and the iterate steps back towards the input,
``x⁽ⁱ⁺¹⁾ ← x_orig + β(x⁽ⁱ⁺¹⁾ − x_orig)``, ``β = 0.9``.

The projection (:func:`project_onto_hyperplane`) solves ``min ‖δ‖_p`` subject to
``⟨w, x + δ⟩ = b`` and ``x + δ`` in the box exactly: the change of ``⟨w, ·⟩`` reachable with
a step of size ``τ`` is piecewise linear in ``τ``, so sorting its breakpoints gives ``τ`` in
closed form (when the hyperplane is out of the box's reach, every coordinate moves to the
box's bound in the right direction).

AutoAttack's FAB-T: 9 target classes (the 2nd … 10th highest logit at the clean input),
100 iterations, 1 restart each; an input counts as broken when a misclassified point within
ε of it was found. Each run is one compiled ``tf.function`` per model and configuration.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .._keras import tf
from ._common import (
    as_attack_model,
    batches,
    check_count,
    check_eps,
    check_inputs,
    check_norm,
    clip_key,
    compiled,
    progress,
    zeros_if_none,
)

__all__ = ["fab", "project_onto_hyperplane"]


def project_onto_hyperplane(x: tf.Tensor, w: tf.Tensor, b: tf.Tensor, norm: str, clip) -> tf.Tensor:
    """The minimal-norm step ``δ`` (rows of ``(n, d)``) with ``⟨w, x + δ⟩ = b`` and
    ``x + δ`` inside ``clip`` (``None``: no box), under L∞ (``norm="inf"``) or L2.

    With ``c = b − ⟨w, x⟩`` and each coordinate moving in the direction ``s_i =
    sign(w_i)·sign(c)`` by at most its room ``r_i`` to the box, a step of size ``τ`` changes
    ``⟨w, ·⟩`` by ``g(τ) = Σ_i min(τ·a_i, |w_i|·r_i)`` — ``a_i = |w_i|`` and
    ``δ_i = s_i·min(τ, r_i)`` for L∞; ``a_i = w_i²`` and ``δ_i = s_i·min(τ|w_i|, r_i)`` for
    L2 (the KKT conditions) — a nondecreasing piecewise-linear function with breakpoints
    ``τ_i = |w_i| r_i / a_i``. Sorting them, ``g`` at each breakpoint is a cumulative sum, and
    ``g(τ) = |c|`` is solved on the segment where it is crossed. If ``|c|`` exceeds ``g(∞)``,
    every coordinate moves by its full room.
    """
    lo, hi = (-np.inf, np.inf) if clip is None else (float(clip[0]), float(clip[1]))
    c = b - tf.reduce_sum(w * x, axis=1)
    direction = tf.sign(w) * tf.sign(c)[:, None]
    room = tf.maximum(tf.where(direction > 0, hi - x, x - lo), 0.0)
    magnitude = tf.abs(w)
    moving = magnitude > 0
    slope = magnitude if norm == "inf" else tf.square(w)
    cap = magnitude * room
    finite_cap = tf.where(tf.math.is_finite(cap), cap, tf.zeros_like(cap))
    breakpoint = tf.where(moving, (room if norm == "inf" else room / tf.where(moving, magnitude, 1.0)), 0.0)
    order = tf.argsort(breakpoint, axis=1)
    sorted_break = tf.gather(breakpoint, order, batch_dims=1)
    sorted_slope = tf.gather(slope, order, batch_dims=1)
    sorted_cap = tf.gather(finite_cap, order, batch_dims=1)
    cum_cap = tf.cumsum(sorted_cap, axis=1)
    rest_slope = tf.reduce_sum(slope, axis=1, keepdims=True) - tf.cumsum(sorted_slope, axis=1)
    # g at each breakpoint (an infinite breakpoint only where the box is unbounded)
    reach = cum_cap + tf.where(rest_slope > 0, sorted_break * rest_slope, 0.0)
    need = tf.abs(c)[:, None]
    below = tf.reduce_sum(tf.cast(reach < need, tf.int32), axis=1)  # breakpoints passed before g = |c|
    d = tf.shape(x)[1]
    reachable = below < d
    k = tf.minimum(below, d - 1)
    before = tf.where(k > 0, tf.gather(cum_cap, tf.maximum(k - 1, 0), batch_dims=1), 0.0)
    slope_after = tf.where(k > 0, tf.gather(rest_slope, tf.maximum(k - 1, 0), batch_dims=1),
                           tf.reduce_sum(slope, axis=1))
    tau = (tf.abs(c) - before) / tf.maximum(slope_after, 1e-30)
    tau = tf.where(reachable, tau, np.inf)[:, None]
    size = tf.minimum(tau, room) if norm == "inf" else tf.minimum(tau * magnitude, room)
    size = tf.where(tf.math.is_finite(size), size, tf.zeros_like(size))
    step = tf.where(moving, direction * size, 0.0)
    return tf.where((tf.abs(c) > 0)[:, None], step, 0.0)


def _norm(t: tf.Tensor, norm: str) -> tf.Tensor:
    return tf.reduce_max(tf.abs(t), axis=1) if norm == "inf" else tf.sqrt(tf.reduce_sum(tf.square(t), axis=1))


def _compiled_fab(attack_model, norm: str, targeted: bool, clip):
    """``run(x, y, target, start, steps, alpha_max, eta, beta) -> (best, best_norm)``: one FAB run."""
    num_classes = attack_model.num_classes

    def factory(get_model):
        def boundary(model, x1, y, target):
            """``f`` and ``∇f`` (flattened) of the boundary FAB steps towards."""
            shape = tf.shape(x1)
            if targeted:
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(x1)
                    logits = model.logits(x1)
                    f = tf.gather(logits, target, batch_dims=1) - tf.gather(logits, y, batch_dims=1)
                grad = zeros_if_none(tape.gradient(f, x1), x1, model)
                return f, tf.reshape(grad, [shape[0], -1])
            with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
                tape.watch(x1)
                logits = model.logits(x1)
                true = tf.gather(logits, y, batch_dims=1)
                diffs = [logits[:, s] - true for s in range(num_classes)]
            grads = [tf.reshape(zeros_if_none(tape.gradient(diff, x1), x1, model), [shape[0], -1]) for diff in diffs]
            del tape
            f = tf.stack(diffs, axis=1)  # (n, K)
            g = tf.stack(grads, axis=1)  # (n, K, d)
            dual = tf.reduce_sum(tf.abs(g), -1) if norm == "inf" else tf.sqrt(tf.reduce_sum(tf.square(g), -1))
            distance = tf.abs(f) / (dual + 1e-12)
            distance = tf.where(tf.one_hot(y, num_classes) > 0, np.inf, distance)  # never the true class
            nearest = tf.argmin(distance, axis=1, output_type=y.dtype)
            return tf.gather(f, nearest, batch_dims=1), tf.gather(g, nearest, batch_dims=1)

        @tf.function(reduce_retracing=True)
        def run(x, y, target, start, steps, alpha_max, eta, beta):
            model = get_model()
            shape = tf.shape(x)
            flat = lambda t: tf.reshape(t, [shape[0], -1])  # noqa: E731
            origin = flat(x)
            best = tf.identity(x)
            best_norm = tf.fill([shape[0]], np.inf)

            def body(i, x1, best, best_norm):
                f, w = boundary(model, x1, y, target)
                point = flat(x1)
                b = -f + tf.reduce_sum(w * point, axis=1)
                both = project_onto_hyperplane(tf.concat([point, origin], 0), tf.concat([w, w], 0),
                                               tf.concat([b, b], 0), norm, clip)
                step_here, step_origin = both[:shape[0]], both[shape[0]:]
                size_here = tf.maximum(_norm(step_here, norm), 1e-8)
                size_origin = tf.maximum(_norm(step_origin, norm), 1e-8)
                alpha = tf.clip_by_value(size_here / (size_here + size_origin), 0.0, alpha_max)[:, None]
                moved = (1.0 - alpha) * (point + eta * step_here) + alpha * (origin + eta * step_origin)
                if clip is not None:
                    moved = tf.clip_by_value(moved, clip[0], clip[1])
                moved = tf.reshape(moved, shape)
                wrong = tf.not_equal(tf.argmax(model.logits(moved), -1, output_type=y.dtype), y)
                distance = _norm(flat(moved) - origin, norm)
                closer = tf.logical_and(wrong, distance < best_norm)
                rows = tf.reshape(closer, [-1] + [1] * (x.shape.rank - 1))
                best = tf.where(rows, moved, best)
                best_norm = tf.where(closer, distance, best_norm)
                back = tf.reshape(wrong, [-1] + [1] * (x.shape.rank - 1))
                x1 = tf.where(back, x + beta * (moved - x), moved)
                return i + 1, x1, best, best_norm

            _, _, best, best_norm = tf.while_loop(lambda i, *_: i < steps, body,
                                                  (tf.constant(0), start, best, best_norm))
            return best, best_norm

        return run

    return compiled(attack_model, ("fab", norm, targeted, clip_key(clip)), factory)


def _random_start(x: np.ndarray, radius: np.ndarray, norm: str, rng: np.random.Generator, clip) -> np.ndarray:
    """The reference code's restart point: half of ``min(best norm, ε)`` in a random direction."""
    if norm == "inf":
        t = rng.uniform(-1, 1, x.shape)
        t /= np.abs(t).reshape(len(x), -1).max(1).reshape((-1,) + (1,) * (x.ndim - 1))
    else:
        t = rng.normal(size=x.shape)
        t /= np.linalg.norm(t.reshape(len(x), -1), axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
    start = x + 0.5 * radius.reshape((-1,) + (1,) * (x.ndim - 1)) * t
    return (start if clip is None else np.clip(start, clip[0], clip[1])).astype(np.float32)


def fab(model, x, y=None, *, eps: float, norm="inf", targeted: bool = True, target_classes: int = 9,
        steps: int = 100, restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
        clip: Optional[Sequence[float]] = (0.0, 1.0), batch_size: int = 256, seed: Optional[int] = None,
        verbose: int = 1, output: str = "auto") -> np.ndarray:
    """FAB (module docstring), L∞ or L2: FAB-T (``targeted=True``; the classes with the 2nd …
    (``target_classes`` + 1)-th highest clean logit, one after the other) or untargeted
    (the nearest linearized boundary of all classes at every step).

    ``y``: true labels (default: the model's predictions); inputs already misclassified are
    returned unchanged. Each run (target, restart) attacks only the inputs not yet broken;
    restart 0 starts at the input, later ones at a random point (``seed``). Returns, per
    input, the closest misclassified point found when it lies within ``eps`` (``norm``),
    else the input itself.
    """
    attack_model = as_attack_model(model, output)
    eps, norm = check_eps(eps), check_norm(norm)
    steps, restarts = check_count(steps, "steps"), check_count(restarts, "restarts")
    batch_size = check_count(batch_size, "batch_size")
    alpha_max, eta, beta = (check_eps(alpha_max, "alpha_max"), check_eps(eta, "eta"), check_eps(beta, "beta"))
    if not 0 < alpha_max <= 1:
        raise ValueError(f"alpha_max must be in (0, 1] (the largest weight of the step from the input), "
                         f"got {alpha_max!r}")
    if eta < 1:
        raise ValueError(f"eta must be >= 1 (the overshoot past the linearized boundary), got {eta!r}")
    if not 0 < beta <= 1:
        raise ValueError(f"beta must be in (0, 1] (the backward step after a success), got {beta!r}")
    if attack_model.num_classes < 2:
        raise ValueError(f"FAB needs a classifier of at least 2 classes; model '{attack_model.model.name}' has "
                         f"{attack_model.num_classes}")
    if targeted:
        target_classes = check_count(target_classes, "target_classes")
        if target_classes > attack_model.num_classes - 1:
            raise ValueError(f"target_classes must be at most {attack_model.num_classes - 1} (the classes other "
                             f"than the true one), got {target_classes}")
    x, y = check_inputs(attack_model, x, y, clip)
    if y is None:
        y = attack_model.predict_labels(x, batch_size)
    if eps == 0:
        return x.copy()
    clip = clip_key(clip)
    run = _compiled_fab(attack_model, norm, bool(targeted), clip)
    numbers = (tf.constant(steps), tf.constant(alpha_max, tf.float32), tf.constant(eta, tf.float32),
               tf.constant(beta, tf.float32))
    rng = np.random.default_rng(seed)
    out = x.copy()
    best_norm = np.full(len(x), np.inf, np.float32)
    broken = attack_model.predict_labels(x, batch_size) != y  # returned unchanged
    ranks = range(2, target_classes + 2) if targeted else [None]
    runs = [(rank, restart) for rank in ranks for restart in range(restarts)]
    bar = progress(range(len(runs)), total=len(runs), verbose=verbose, desc="fab-t" if targeted else "fab")
    ticks = iter(bar)
    for rank, restart in runs:
        todo = np.flatnonzero(~broken)
        for part in batches(len(todo), batch_size):
            rows = todo[part]
            xb = x[rows]
            if rank is None:
                target = np.zeros(len(rows), np.int64)
            else:
                logits = attack_model.compiled_logits(tf.constant(xb))
                target = tf.math.top_k(logits, rank).indices[:, rank - 1].numpy().astype(np.int64)
            start = xb if restart == 0 else _random_start(xb, np.minimum(best_norm[rows], eps), norm, rng, clip)
            found, distance = run(tf.constant(xb), tf.constant(y[rows]), tf.constant(target), tf.constant(start),
                                  *numbers)
            found, distance = found.numpy(), distance.numpy()
            closer = distance < best_norm[rows]
            best_norm[rows[closer]] = distance[closer]
            inside = distance <= eps * (1 + 1e-6)
            out[rows[inside]] = found[inside]
            broken[rows[inside]] = True
        next(ticks, None)
    if verbose and hasattr(bar, "close"):
        bar.close()
    return out

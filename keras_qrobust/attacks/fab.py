"""FAB, the Fast Adaptive Boundary attack (Croce & Hein 2020b, "Minimally distorted
adversarial examples with a fast adaptive boundary attack", ICML), L∞ and L2, targeted
(FAB-T, as AutoAttack runs it) or untargeted.

FAB looks for the adversarial example closest to the input ``x_orig``. At the current point
``x⁽ⁱ⁾`` it linearizes the decision boundary between the true class ``y`` and a class ``s``
(paper §3, Algorithm 1),

    π_s = {z : f_s(x⁽ⁱ⁾) + ⟨∇f_s(x⁽ⁱ⁾), z − x⁽ⁱ⁾⟩ = 0},   f_s = z_s − z_y          (eq. 4)

i.e. the hyperplane ``⟨w, z⟩ = b`` with ``w = ∇f_s(x⁽ⁱ⁾)`` and ``b = ⟨w, x⁽ⁱ⁾⟩ − f_s(x⁽ⁱ⁾)``.
For FAB-T ``s`` is the target class; untargeted, it is the class whose hyperplane is
nearest, ``s = argmin_{l≠y} |f_l| / ‖∇f_l‖_q`` (``q`` the dual norm: 1 for L∞, 2 for L2;
eq. 5). FAB then takes the minimal-norm steps onto ``π_s`` inside the box ``C``, both from
the current point and from the input, and mixes them (the biased step of Algorithm 1):

    δ⁽ⁱ⁾ = proj_p(x⁽ⁱ⁾, π_s ∩ C) − x⁽ⁱ⁾,   δ_orig = proj_p(x_orig, π_s ∩ C) − x_orig,
    α = clip(‖δ⁽ⁱ⁾‖_p / (‖δ⁽ⁱ⁾‖_p + ‖δ_orig‖_p), 0, α_max)     (norms floored at 1e-8)
    x⁽ⁱ⁺¹⁾ = P_C((1 − α)(x⁽ⁱ⁾ + η·δ⁽ⁱ⁾) + α(x_orig + η·δ_orig))

with overshoot ``η = 1.05`` and ``α_max = 0.1``. When ``x⁽ⁱ⁺¹⁾`` is misclassified (argmax
≠ ``y``) it is recorded if it is the closest found so far, and the iterate steps back
towards the input (the backward step), ``x⁽ⁱ⁺¹⁾ ← x_orig + β(x⁽ⁱ⁺¹⁾ − x_orig)``,
``β = 0.9``. Random restarts start at ``x_orig + ½·min(best, ε)·t/‖t‖_p`` with
``t ~ U(−1, 1)^d`` (L∞) or ``N(0, I)`` (L2), restart 0 at ``x_orig`` itself.

The projection (:func:`project_onto_hyperplane`) solves ``min ‖δ‖_p`` subject to
``⟨w, x + δ⟩ = b`` and ``x + δ ∈ C`` exactly: the change of ``⟨w, ·⟩`` reachable with a step
of size ``τ`` is piecewise linear in ``τ``, so sorting its breakpoints gives ``τ`` in closed
form. When the hyperplane is out of the box's reach, every coordinate moves to the box's
bound in the right direction (the point of the box closest to the hyperplane).

AutoAttack's FAB-T (Croce & Hein 2020a, standard version): 9 target classes (the 2nd …
10th highest logit at the clean input, one run each), 100 iterations, 1 restart; each run
attacks only the inputs not broken yet, and an input is broken when a misclassified point
within ε of it was found. Each run is one compiled ``tf.function`` per model and
(norm, targeted, box), with ε, α_max, η, β and the step count as tensors.
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
    generator,
    progress,
    zeros_if_none,
)

__all__ = ["fab"]

_FLOOR = 1e-8  # the reference's floor on ‖δ‖ in α
_TOLERANCE = 1e-6  # relative float tolerance on ‖x_adv − x‖ ≤ ε


def project_onto_hyperplane(x: tf.Tensor, w: tf.Tensor, b: tf.Tensor, norm: str, clip) -> tf.Tensor:
    """The minimal-norm step ``δ`` (rows of ``(n, d)``) with ``⟨w, x + δ⟩ = b`` and
    ``x + δ`` inside the box ``clip`` (``None``: no box), under L∞ (``norm="inf"``) or L2.

    With ``c = b − ⟨w, x⟩``, each coordinate moves in the direction ``s_i = sign(w_i)·sign(c)``
    by at most its room ``r_i`` to the box. A step of size ``τ ≥ 0`` changes ``⟨w, ·⟩`` by
    ``g(τ) = Σ_i min(τ·a_i, |w_i|·r_i)`` — ``a_i = |w_i|`` and ``δ_i = s_i·min(τ, r_i)`` for
    L∞; ``a_i = w_i²`` and ``δ_i = s_i·min(τ|w_i|, r_i)`` for L2 (the KKT conditions of the
    two problems) — a nondecreasing piecewise-linear function with breakpoints
    ``τ_i = |w_i| r_i / a_i``. Sorted, ``g`` at each breakpoint is a cumulative sum, and
    ``g(τ) = |c|`` is solved in closed form on the segment where it is crossed. If ``|c| >
    g(∞)`` (the hyperplane does not meet the box), every coordinate moves by its full room.
    Coordinates with ``w_i = 0`` never move. Traceable; no loop over the rows.
    """
    magnitude = tf.abs(w)
    moving = magnitude > 0
    c = b - tf.reduce_sum(w * x, axis=1)
    need = tf.abs(c)
    if clip is None:  # no box: the classical closed forms c·sign(w)/‖w‖₁ and c·w/‖w‖₂²
        dual = tf.reduce_sum(magnitude if norm == "inf" else tf.square(w), axis=1)
        scale = tf.where(dual > 0, c / tf.where(dual > 0, dual, 1.0), 0.0)[:, None]
        return (tf.sign(w) if norm == "inf" else w) * scale
    lo, hi = float(clip[0]), float(clip[1])
    direction = tf.sign(w) * tf.sign(c)[:, None]
    room = tf.maximum(tf.where(direction > 0, hi - x, x - lo), 0.0)
    slope = magnitude if norm == "inf" else tf.square(w)  # a_i
    cap = magnitude * room  # the most coordinate i can add to ⟨w, ·⟩
    breaks = room if norm == "inf" else room / tf.where(moving, magnitude, 1.0)
    breaks = tf.where(moving, breaks, 0.0)
    order = tf.argsort(breaks, axis=1, stable=True)
    sorted_break = tf.gather(breaks, order, batch_dims=1)
    cum_cap = tf.cumsum(tf.gather(cap, order, batch_dims=1), axis=1)
    # the slope of g once the first j+1 sorted coordinates are saturated (a reverse sum: no cancellation)
    rest_slope = tf.cumsum(tf.gather(slope, order, batch_dims=1), axis=1, reverse=True, exclusive=True)
    reach = cum_cap + sorted_break * rest_slope  # g at each breakpoint, nondecreasing
    d = tf.shape(x)[1]
    passed = tf.reduce_sum(tf.cast(reach < need[:, None], tf.int32), axis=1)  # breakpoints before g = |c|
    reachable = passed < d
    k = tf.minimum(passed, d - 1)
    previous = tf.maximum(k - 1, 0)
    first = k == 0
    before = tf.where(first, 0.0, tf.gather(cum_cap, previous, batch_dims=1))
    slope_here = tf.where(first, tf.reduce_sum(slope, axis=1), tf.gather(rest_slope, previous, batch_dims=1))
    tau = (need - before) / tf.maximum(slope_here, 1e-30)
    lower = tf.where(first, 0.0, tf.gather(sorted_break, previous, batch_dims=1))
    upper = tf.gather(sorted_break, k, batch_dims=1)
    tau = tf.clip_by_value(tau, lower, tf.maximum(lower, upper))  # rounding cannot leave the segment
    tau = tf.where(reachable, tau, sorted_break[:, -1])[:, None]  # out of reach: every coordinate saturates
    size = tf.minimum(tau, room) if norm == "inf" else tf.minimum(tau * magnitude, room)
    step = tf.where(moving, direction * size, 0.0)
    return tf.where((need > 0)[:, None], step, 0.0)


def _norm(t: tf.Tensor, norm: str) -> tf.Tensor:
    """‖row‖_p of a ``(n, d)`` tensor."""
    return tf.reduce_max(tf.abs(t), axis=1) if norm == "inf" else tf.sqrt(tf.reduce_sum(tf.square(t), axis=1))


def _finite(grad: tf.Tensor) -> tf.Tensor:
    """A non-finite gradient entry would turn the iterate into NaN: no step along it."""
    return tf.where(tf.math.is_finite(grad), grad, tf.zeros_like(grad))


def _compiled_fab(attack_model, norm: str, targeted: bool, clip):
    """``run(x, y, target, seed, random, radius, steps, alpha_max, eta, beta) -> (best, best_norm)``:
    one FAB run (``steps`` iterations) on a batch; ``best_norm`` is ∞ where nothing was found."""
    num_classes = attack_model.num_classes

    def factory(get_model):
        def boundary(model, x1, y, target):
            """``f_s`` (n,) and ``∇f_s`` (n, d) of the boundary the step goes to (eq. 4–5)."""
            n = tf.shape(x1)[0]
            if targeted:  # one forward and one backward pass
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(x1)
                    logits = model.logits(x1)
                    f = tf.gather(logits, target, batch_dims=1) - tf.gather(logits, y, batch_dims=1)
                grad = zeros_if_none(tape.gradient(f, x1), x1, model)
                return f, _finite(tf.reshape(grad, [n, -1]))
            # untargeted: every class l ≠ y, as others[:, j] = j + [j >= y] (K − 1 backward passes;
            # examples are independent in inference mode, so the gradient of a batch sum is per example)
            with tf.GradientTape(persistent=True, watch_accessed_variables=False) as tape:
                tape.watch(x1)
                logits = model.logits(x1)
                true = tf.gather(logits, y, batch_dims=1)
                others = [j + tf.cast(j >= y, y.dtype) for j in range(num_classes - 1)]
                diffs = [tf.gather(logits, other, batch_dims=1) - true for other in others]
            grads = [_finite(tf.reshape(zeros_if_none(tape.gradient(diff, x1), x1, model), [n, -1]))
                     for diff in diffs]
            del tape
            f = tf.stack(diffs, axis=1)  # (n, K − 1)
            g = tf.stack(grads, axis=1)  # (n, K − 1, d)
            dual = tf.reduce_sum(tf.abs(g), -1) if norm == "inf" else tf.sqrt(tf.reduce_sum(tf.square(g), -1))
            nearest = tf.argmin(tf.abs(f) / (dual + 1e-12), axis=1, output_type=tf.int32)  # eq. 5
            return tf.gather(f, nearest, batch_dims=1), tf.gather(g, nearest, batch_dims=1)

        @tf.function(reduce_retracing=True)
        def run(x, y, target, seed, random, radius, steps, alpha_max, eta, beta):
            model = get_model()
            n = tf.shape(x)[0]
            flat = lambda t: tf.reshape(t, [n, -1])  # noqa: E731
            origin = flat(x)

            # restart point: x + ½·radius·t/‖t‖_p (the reference's min(best, ε) is ε here, as every
            # input still attacked has nothing within ε)
            if norm == "inf":
                t = flat(tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0))
            else:
                t = flat(tf.random.stateless_normal(tf.shape(x), seed))
            jitter = 0.5 * radius * t / tf.maximum(_norm(t, norm), 1e-12)[:, None]
            start = tf.where(random, origin + jitter, origin)
            if clip is not None:
                start = tf.clip_by_value(start, clip[0], clip[1])

            def body(i, x1, best, best_norm):
                f, w = boundary(model, tf.reshape(x1, tf.shape(x)), y, target)
                b = tf.reduce_sum(w * x1, axis=1) - f
                # both projections onto π_s ∩ C in one call
                both = project_onto_hyperplane(tf.concat([x1, origin], 0), tf.concat([w, w], 0),
                                               tf.concat([b, b], 0), norm, clip)
                step_here, step_origin = both[:n], both[n:]
                size_here = tf.maximum(_norm(step_here, norm), _FLOOR)
                size_origin = tf.maximum(_norm(step_origin, norm), _FLOOR)
                alpha = tf.clip_by_value(size_here / (size_here + size_origin), 0.0, alpha_max)[:, None]
                moved = (1.0 - alpha) * (x1 + eta * step_here) + alpha * (origin + eta * step_origin)  # biased step
                if clip is not None:
                    moved = tf.clip_by_value(moved, clip[0], clip[1])
                predicted = tf.argmax(model.logits(tf.reshape(moved, tf.shape(x))), -1, output_type=y.dtype)
                wrong = tf.not_equal(predicted, y)
                distance = _norm(moved - origin, norm)
                closer = tf.logical_and(wrong, distance < best_norm)
                best = tf.where(closer[:, None], moved, best)
                best_norm = tf.where(closer, distance, best_norm)
                x1 = tf.where(wrong[:, None], origin + beta * (moved - origin), moved)  # backward step
                return i + 1, x1, best, best_norm

            _, _, best, best_norm = tf.while_loop(
                lambda i, *_: i < steps, body, (tf.constant(0), start, origin, tf.fill([n], np.inf)))
            return tf.reshape(best, tf.shape(x)), best_norm

        return run

    return compiled(attack_model, ("fab", norm, targeted, clip_key(clip)), factory)


def _check_between(value, name: str, low: float, high: Optional[float], why: str) -> float:
    """``value`` as a float in ``(low, high]`` (``[low, ∞)`` when ``high`` is None), else a ValueError."""
    number = check_eps(value, name)
    if high is None and number < low:
        raise ValueError(f"{name} must be >= {low:g} ({why}), got {value!r}")
    if high is not None and not low < number <= high:
        raise ValueError(f"{name} must be in ({low:g}, {high:g}] ({why}), got {value!r}")
    return number


def _clean_logits(attack_model, x: np.ndarray, batch_size: int) -> np.ndarray:
    parts = [attack_model.compiled_logits(tf.constant(x[part])).numpy() for part in batches(len(x), batch_size)]
    return np.concatenate(parts)


def fab(model, x, y=None, *, eps: float, norm="inf", targeted: bool = True, target_classes: int = 9,
        steps: int = 100, restarts: int = 1, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
        clip: Optional[Sequence[float]] = (0.0, 1.0), batch_size: int = 256, seed: Optional[int] = None,
        verbose: int = 1, output: str = "auto") -> np.ndarray:
    """FAB adversarial examples (module docstring), L∞ (``norm="inf"``) or L2 (``norm=2``).

    ``targeted=True`` is FAB-T: for ``k = 2 … target_classes + 1`` the target is the class
    with the ``k``-th highest clean logit, one run per target (AutoAttack: 9 targets, 100
    steps, 1 restart). ``targeted=False`` steps to the nearest linearized boundary of all
    classes at every iteration (eq. 5). Each (target, restart) run attacks only the inputs
    not broken yet; restart 0 starts at the input, later ones at a random point (``seed``
    fixes every draw: same seed and batch size, same result).

    ``y``: true labels (default: the model's predictions); inputs the model already
    misclassifies are returned unchanged. ``alpha_max``, ``eta``, ``beta``: the paper's
    α_max (in (0, 1]), overshoot η (≥ 1) and backward step β (in (0, 1]).

    Returns a float32 array shaped like ``x``, inside ``clip``: per input, the closest
    misclassified point found when ``‖x_adv − x‖ ≤ ε`` (up to a 1e-6 relative float
    tolerance), otherwise the input itself.
    """
    attack_model = as_attack_model(model, output)
    eps, norm = check_eps(eps), check_norm(norm)
    steps, restarts = check_count(steps, "steps"), check_count(restarts, "restarts")
    batch_size = check_count(batch_size, "batch_size")
    alpha_max = _check_between(alpha_max, "alpha_max", 0.0, 1.0, "the largest weight of the step from the input")
    eta = _check_between(eta, "eta", 1.0, None, "the overshoot past the linearized boundary")
    beta = _check_between(beta, "beta", 0.0, 1.0, "the backward step after a success")
    num_classes = attack_model.num_classes
    if num_classes < 2:
        raise ValueError(f"FAB needs a classifier of at least 2 classes; model '{attack_model.model.name}' has "
                         f"{num_classes}")
    if targeted:
        target_classes = check_count(target_classes, "target_classes")
        if target_classes > num_classes - 1:
            raise ValueError(f"target_classes must be at most {num_classes - 1} (the classes other than the true "
                             f"one), got {target_classes}: pass target_classes={num_classes - 1}")
    x, y = check_inputs(attack_model, x, y, clip)
    if eps == 0:
        return x.copy()
    logits = _clean_logits(attack_model, x, batch_size)
    predicted = logits.argmax(axis=1)
    if y is None:
        y = predicted.astype(np.int64)
    if targeted:  # classes by decreasing clean logit (stable, like tf.math.top_k on ties)
        ranked = np.argsort(-logits, axis=1, kind="stable")[:, 1:target_classes + 1].astype(np.int64)
        targets = [ranked[:, k] for k in range(target_classes)]
    else:
        targets = [np.zeros(len(x), np.int64)]  # unused
    run = _compiled_fab(attack_model, norm, bool(targeted), clip)
    numbers = (tf.constant(steps), tf.constant(alpha_max, tf.float32), tf.constant(eta, tf.float32),
               tf.constant(beta, tf.float32))
    radius = tf.constant(eps, tf.float32)  # every input still attacked has best norm > ε
    rng = generator(seed)
    out = x.copy()
    broken = predicted != y  # misclassified at the clean input: returned unchanged
    runs = [(target, restart) for target in targets for restart in range(restarts)]
    bar = progress(range(len(runs)), total=len(runs), verbose=verbose, desc="fab-t" if targeted else "fab")
    ticks = iter(bar)
    for target, restart in runs:
        todo = np.flatnonzero(~broken)
        for part in batches(len(todo), batch_size):
            rows = todo[part]
            found, distance = run(tf.constant(x[rows]), tf.constant(y[rows]), tf.constant(target[rows]),
                                  rng.make_seeds(1)[:, 0], tf.constant(restart > 0), radius, *numbers)
            found, distance = found.numpy(), distance.numpy()
            inside = distance <= eps * (1 + _TOLERANCE)
            out[rows[inside]] = found[inside]
            broken[rows[inside]] = True
        next(ticks, None)
    if verbose and hasattr(bar, "close"):
        bar.close()
    return out

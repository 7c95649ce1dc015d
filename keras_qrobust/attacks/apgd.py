"""Auto-PGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks", ICML): APGD-CE, APGD-DLR and APGD-T, L∞ and L2.

APGD is PGD without a step size to tune (the paper's Algorithm 1). From a random point
``x⁽⁰⁾`` of the ε-ball, with ``S`` the ε-ball intersected with the box and ``P_S`` the
projection onto it:

* ``z⁽ᵏ⁺¹⁾ = P_S(x⁽ᵏ⁾ + η⁽ᵏ⁾·dir(∇f(x⁽ᵏ⁾)))`` (``dir`` = sign for L∞, ``∇/‖∇‖₂`` for L2);
* ``x⁽ᵏ⁺¹⁾ = P_S(x⁽ᵏ⁾ + α(z⁽ᵏ⁺¹⁾ − x⁽ᵏ⁾) + (1 − α)(x⁽ᵏ⁾ − x⁽ᵏ⁻¹⁾))``, momentum ``α = 0.75``
  (``α = 1`` for the first step), eq. (2);
* ``η⁽⁰⁾ = 2ε``; at the checkpoints ``w_j = ⌈p_j·N⌉`` (``p₀ = 0``, ``p₁ = 0.22``,
  ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)``) the step size is halved, and the
  iterate restarted from the best point so far, when (Condition 1) the loss rose in at most
  ``ρ·(w_j − w_{j−1})`` of the steps since the last checkpoint (``ρ = 0.75``), or
  (Condition 2) the step size was not halved at the last checkpoint and the best loss has
  not improved since.

Losses (maximized): cross-entropy (APGD-CE); the Difference of Logits Ratio, eq. (6),
``DLR(x, y) = −(z_y − max_{i≠y} z_i) / (z_π₁ − z_π₃)`` (APGD-DLR; invariant to shifts and
rescaling of the logits, so it does not saturate where cross-entropy's gradient vanishes);
and its targeted version, eq. (7), ``−(z_y − z_t) / (z_π₁ − (z_π₃ + z_π₄)/2)`` (APGD-T),
``π`` sorting the logits in decreasing order. APGD-T attacks, one after the other, the
classes with the 2nd … (``target_classes`` + 1)-th highest logit at the clean input, each
only on the inputs not yet broken. The checkpoint schedule and the step rules follow the
authors' reference code (``autopgd_base.py``): checkpoint intervals of ``⌊0.22N⌋`` iterations
shrinking by ``⌊0.03N⌋`` down to ``⌊0.06N⌋``, Condition 1 counted with ``≤``.

Every iterate is checked: an input counts as broken as soon as one iterate is misclassified,
and that iterate is returned (the others get the point of highest loss). Each attack runs
as one compiled ``tf.function`` per model and configuration; ε and the step count are
tensors (sweeping them does not retrace). Quantized models give straight-through gradients.
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
    project,
    to_box,
    zeros_if_none,
)

__all__ = ["apgd", "apgd_t", "checkpoint_windows", "dlr_loss", "targeted_dlr_loss", "APGD_LOSSES"]

APGD_LOSSES = ("ce", "dlr")
_DLR_EPS = 1e-12  # the reference code's guard against z_π₁ = z_π₃


def dlr_loss(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020, eq. 6), per example:
    ``−(z_y − max_{i≠y} z_i) / (z_π₁ − z_π₃)``; > 0 exactly when ``y`` is not the top class."""
    top3 = tf.math.top_k(logits, 3).values
    true = tf.gather(logits, y, batch_dims=1)
    best_other = tf.where(tf.equal(top3[:, 0], true), top3[:, 1], top3[:, 0])
    return -(true - best_other) / (top3[:, 0] - top3[:, 2] + _DLR_EPS)


def targeted_dlr_loss(logits: tf.Tensor, y: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Targeted DLR (Croce & Hein 2020, eq. 7), per example:
    ``−(z_y − z_t) / (z_π₁ − (z_π₃ + z_π₄)/2)``."""
    top4 = tf.math.top_k(logits, 4).values
    true = tf.gather(logits, y, batch_dims=1)
    aimed = tf.gather(logits, target, batch_dims=1)
    return -(true - aimed) / (top4[:, 0] - 0.5 * (top4[:, 2] + top4[:, 3]) + _DLR_EPS)


def _loss(logits, y, target, kind: str) -> tf.Tensor:
    if kind == "ce":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    if kind == "dlr":
        return dlr_loss(logits, y)
    return targeted_dlr_loss(logits, y, target)


def checkpoint_windows(steps: int) -> np.ndarray:
    """``windows[i]`` = the length of the interval that ends at iteration ``i`` when ``i`` is
    a step-size checkpoint, else 0 (the reference code's schedule: intervals of
    ``max(⌊0.22N⌋, 1)`` iterations, each ``max(⌊0.03N⌋, 1)`` shorter than the one before,
    never below ``max(⌊0.06N⌋, 1)``)."""
    first, shortest, decrease = (max(int(f * steps), 1) for f in (0.22, 0.06, 0.03))
    windows = np.zeros(steps, np.int32)
    length, counter = first, 0
    for i in range(steps):
        counter += 1
        if counter == length:
            windows[i] = length
            length, counter = max(length - decrease, shortest), 0
    return windows


def _per_example(v: tf.Tensor, rank: int) -> tf.Tensor:
    return tf.reshape(v, [-1] + [1] * (rank - 1))


def _norm2(t: tf.Tensor) -> tf.Tensor:
    return tf.sqrt(tf.reduce_sum(tf.square(t), list(range(1, t.shape.rank)), keepdims=True))


def _random_start(x: tf.Tensor, eps: tf.Tensor, norm: str, seed: tf.Tensor) -> tf.Tensor:
    """The reference code's start: a random direction scaled to the ε-sphere (L∞: uniform
    entries divided by their largest magnitude; L2: a Gaussian direction)."""
    if norm == "inf":
        t = tf.random.stateless_uniform(tf.shape(x), seed, -1.0, 1.0)
        scale = tf.reduce_max(tf.abs(t), list(range(1, x.shape.rank)), keepdims=True)
    else:
        t = tf.random.stateless_normal(tf.shape(x), seed)
        scale = _norm2(t)
    return x + eps * t / (scale + 1e-12)


def _compiled_apgd(attack_model, norm: str, loss: str, clip):
    """``run(x, y, target, seed, eps, rho, windows) -> (x_adv, fooled, loss)``: one APGD run
    (``len(windows)`` iterations) on a batch."""

    def factory(get_model):
        @tf.function(reduce_retracing=True)
        def run(x, y, target, seed, eps, rho, windows):
            model = get_model()
            rank = x.shape.rank

            def evaluate(point, labels, aimed):
                with tf.GradientTape(watch_accessed_variables=False) as tape:
                    tape.watch(point)
                    logits = model.logits(point)
                    value = _loss(logits, labels, aimed, loss)
                grad = zeros_if_none(tape.gradient(value, point), point, model)
                # a non-finite gradient entry would turn the iterate into NaN: no step along it
                grad = tf.where(tf.math.is_finite(grad), grad, tf.zeros_like(grad))
                correct = tf.equal(tf.argmax(logits, -1, output_type=labels.dtype), labels)
                return value, grad, correct

            def evaluate_unfooled(point, s):
                """``evaluate`` on the inputs not yet fooled only (a fooled input stays fooled:
                AutoAttack counts any misclassified iterate), the others keep their values."""
                active = tf.where(tf.logical_not(s["fooled"]))[:, 0]
                rows = active[:, None]
                value, grad, correct = evaluate(tf.gather(point, active), tf.gather(y, active),
                                                tf.gather(target, active))
                return (tf.tensor_scatter_nd_update(s["value"], rows, value),
                        tf.tensor_scatter_nd_update(s["grad"], rows, grad),
                        tf.tensor_scatter_nd_update(tf.ones_like(s["fooled"]), rows, correct))

            def into_s(point):
                return to_box(x + project(point - x, eps, norm), clip)

            def direction(grad):
                return tf.sign(grad) if norm == "inf" else grad / (_norm2(grad) + 1e-12)

            start = to_box(_random_start(x, eps, norm, seed), clip)
            value, grad, correct = evaluate(start, y, target)
            n = tf.shape(x)[0]
            step_size = tf.fill([n], 2.0 * eps)
            state = dict(
                x_adv=start, x_old=start, grad=grad, value=value,
                best_x=start, best_grad=grad, best_value=value,
                fooled=tf.logical_not(correct), adv=start, step_size=step_size,
                rises=tf.zeros([n], tf.int32), best_at_check=value, halved_at_check=tf.ones([n], tf.bool))

            def body(i, s):
                momentum = tf.where(i > 0, 0.75, 1.0)
                shift = s["x_adv"] - s["x_old"]
                step = _per_example(s["step_size"], rank)
                z = into_s(s["x_adv"] + step * direction(s["grad"]))
                new = into_s(s["x_adv"] + momentum * (z - s["x_adv"]) + (1.0 - momentum) * shift)
                value, grad, correct = evaluate_unfooled(new, s)
                fooled_now = tf.logical_not(correct)
                improved = value > s["best_value"]
                best_x = tf.where(_per_example(improved, rank), new, s["best_x"])
                best_grad = tf.where(_per_example(improved, rank), grad, s["best_grad"])
                best_value = tf.where(improved, value, s["best_value"])
                rises = s["rises"] + tf.cast(value > s["value"], tf.int32)
                s = dict(s, x_old=s["x_adv"], x_adv=new, grad=grad, value=value, best_x=best_x,
                         best_grad=best_grad, best_value=best_value,
                         fooled=tf.logical_or(s["fooled"], fooled_now),
                         adv=tf.where(_per_example(fooled_now, rank), new, s["adv"]), rises=rises)
                window = tf.gather(windows, i)
                return i + 1, tf.cond(window > 0, lambda: _checkpoint(s, window, rho, rank), lambda: s)

            def running(i, s):
                return tf.logical_and(i < tf.shape(windows)[0], tf.reduce_any(tf.logical_not(s["fooled"])))

            _, state = tf.while_loop(running, body, (tf.constant(0), state))
            x_out = tf.where(_per_example(state["fooled"], rank), state["adv"], state["best_x"])
            return x_out, state["fooled"], state["best_value"]

        return run

    return compiled(attack_model, ("apgd", norm, loss, clip_key(clip)), factory)


def _checkpoint(s: dict, window: tf.Tensor, rho: tf.Tensor, rank: int) -> dict:
    """The step-size rule at a checkpoint (Conditions 1 and 2 of Algorithm 1)."""
    too_few_rises = tf.cast(s["rises"], tf.float32) <= rho * tf.cast(window, tf.float32)
    stalled = tf.logical_and(tf.logical_not(s["halved_at_check"]), s["best_at_check"] >= s["best_value"])
    halve = tf.logical_or(too_few_rises, stalled)
    restart = _per_example(halve, rank)
    return dict(s, step_size=tf.where(halve, s["step_size"] / 2.0, s["step_size"]),
                x_adv=tf.where(restart, s["best_x"], s["x_adv"]),
                grad=tf.where(restart, s["best_grad"], s["grad"]),
                rises=tf.zeros_like(s["rises"]), best_at_check=s["best_value"], halved_at_check=halve)


def _targets(attack_model, x: np.ndarray, rank: int, batch_size: int) -> np.ndarray:
    """The class with the ``rank``-th highest logit (1 = top) at each clean input."""
    out = []
    for part in batches(len(x), batch_size):
        logits = attack_model.compiled_logits(tf.constant(x[part]))
        out.append(tf.math.top_k(logits, rank).indices[:, rank - 1].numpy())
    return np.concatenate(out).astype(np.int64)


def _check_classes(attack_model, needed: int, what: str, hint: str) -> None:
    if attack_model.num_classes < needed:
        raise ValueError(f"{what} needs at least {needed} classes, but model '{attack_model.model.name}' has "
                         f"{attack_model.num_classes}: {hint}")


def _validate(model, x, y, eps, norm, steps, restarts, rho, clip, batch_size, output):
    attack_model = as_attack_model(model, output)
    eps, norm = check_eps(eps), check_norm(norm)
    steps, restarts = check_count(steps, "steps"), check_count(restarts, "restarts")
    batch_size = check_count(batch_size, "batch_size")
    rho = check_eps(rho, "rho")
    if not 0 < rho < 1:
        raise ValueError(f"rho must be in (0, 1) (the share of rising steps below which the step is halved), "
                         f"got {rho!r}")
    x, y = check_inputs(attack_model, x, y, clip)
    if y is None:  # the model's own predictions (no label leaking)
        y = attack_model.predict_labels(x, batch_size)
    return attack_model, x, y, eps, norm, steps, restarts, rho, batch_size


def _attack(attack_model, x, y, targets, *, eps, norm, loss, steps, restarts, rho, clip, batch_size, seed,
            verbose, name) -> tuple[np.ndarray, np.ndarray]:
    """APGD on every input, each run (restart, target) only on the inputs not yet fooled.
    ``targets``: a list of target-label arrays (targeted DLR) or ``[None]``. Returns the
    adversarial examples and which inputs were fooled."""
    run = _compiled_apgd(attack_model, norm, loss, clip_key(clip))
    numbers = (tf.constant(eps, tf.float32), tf.constant(rho, tf.float32), tf.constant(checkpoint_windows(steps)))
    rng = generator(seed)
    out, fooled, best = x.copy(), np.zeros(len(x), bool), np.full(len(x), -np.inf, np.float32)
    bar = progress(range(len(targets) * restarts), total=len(targets) * restarts, verbose=verbose, desc=name)
    ticks = iter(bar)
    for target in targets:
        for _ in range(restarts):
            todo = np.flatnonzero(~fooled)
            for part in batches(len(todo), batch_size):
                rows = todo[part]
                aimed = np.zeros(len(rows), np.int64) if target is None else target[rows]
                x_adv, hit, value = run(tf.constant(x[rows]), tf.constant(y[rows]), tf.constant(aimed),
                                        rng.make_seeds(1)[:, 0], *numbers)
                x_adv, hit, value = x_adv.numpy(), hit.numpy(), value.numpy()
                # keep a fooling iterate; otherwise the point of highest loss of any run
                take = hit | (~fooled[rows] & (value > best[rows]))
                out[rows[take]] = x_adv[take]
                best[rows] = np.maximum(best[rows], value)
                fooled[rows] |= hit
            next(ticks, None)
    if verbose and hasattr(bar, "close"):
        bar.close()
    return out, fooled


def apgd(model, x, y=None, *, eps: float, norm="inf", loss: str = "ce", steps: int = 100, restarts: int = 1,
         rho: float = 0.75, clip: Optional[Sequence[float]] = (0.0, 1.0), batch_size: int = 256,
         seed: Optional[int] = None, verbose: int = 1, output: str = "auto") -> np.ndarray:
    """APGD-CE (``loss="ce"``) or APGD-DLR (``loss="dlr"``), L∞ or L2 (module docstring).

    ``y``: the true labels (default: the model's predictions). ``restarts``: further runs
    from new random starts on the inputs not yet fooled. AutoAttack's ``standard`` version
    runs APGD-CE with 100 steps and 1 restart. Returns the adversarial examples: for each
    input a misclassified iterate when one was found, else the iterate of highest loss.
    ``seed`` fixes the random starts (same seed and batch size, same result).
    """
    if loss not in APGD_LOSSES:
        raise ValueError(f"loss must be one of {APGD_LOSSES} (for the targeted DLR loss use apgd_t), got {loss!r}")
    attack_model, x, y, eps, norm, steps, restarts, rho, batch_size = _validate(
        model, x, y, eps, norm, steps, restarts, rho, clip, batch_size, output)
    if loss == "dlr":
        _check_classes(attack_model, 3, "the DLR loss", "use loss='ce'")
    if eps == 0:
        return x.copy()
    return _attack(attack_model, x, y, [None], eps=eps, norm=norm, loss=loss, steps=steps, restarts=restarts,
                   rho=rho, clip=clip, batch_size=batch_size, seed=seed, verbose=verbose, name=f"apgd-{loss}")[0]


def apgd_t(model, x, y=None, *, eps: float, norm="inf", target_classes: int = 9, steps: int = 100,
           restarts: int = 1, rho: float = 0.75, clip: Optional[Sequence[float]] = (0.0, 1.0),
           batch_size: int = 256, seed: Optional[int] = None, verbose: int = 1,
           output: str = "auto") -> np.ndarray:
    """APGD-T: APGD on the targeted DLR loss (eq. 7), L∞ or L2, against the classes with the
    2nd … (``target_classes`` + 1)-th highest logit at the clean input, one after the other,
    each only on the inputs not yet fooled (AutoAttack's ``standard``: 9 targets, 100 steps,
    1 restart each). Untargeted in effect: an input counts as fooled when it is misclassified
    as any class. Returns the adversarial examples as :func:`apgd`.
    """
    attack_model, x, y, eps, norm, steps, restarts, rho, batch_size = _validate(
        model, x, y, eps, norm, steps, restarts, rho, clip, batch_size, output)
    _check_classes(attack_model, 4, "the targeted DLR loss", "use apgd(loss='ce') or apgd(loss='dlr')")
    target_classes = check_count(target_classes, "target_classes")
    if target_classes > attack_model.num_classes - 1:
        raise ValueError(f"target_classes must be at most {attack_model.num_classes - 1} (the classes other than "
                         f"the true one), got {target_classes}")
    if eps == 0:
        return x.copy()
    targets = [_targets(attack_model, x, rank, batch_size) for rank in range(2, target_classes + 2)]
    return _attack(attack_model, x, y, targets, eps=eps, norm=norm, loss="dlr-t", steps=steps, restarts=restarts,
                   rho=rho, clip=clip, batch_size=batch_size, seed=seed, verbose=verbose, name="apgd-t")[0]

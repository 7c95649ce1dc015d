"""Per input, whether the model gives a usable input gradient (:func:`gradient_status`).

A gradient attack that receives a zero or non-finite input gradient does not move, so an
input it "fails" to break says nothing about robustness (Athalye et al. 2018, "Obfuscated
gradients give a false sense of security"). :func:`gradient_status` finds such inputs from
the gradient of the logit margin ``max_{j≠y} z_j − z_y`` — a loss that, unlike
cross-entropy, does not saturate on confidently classified inputs, so a zero gradient
means the model itself gives none.

Below the attacks: :mod:`.autoattack` and ``evaluate`` use it to keep unverified inputs out
of robust accuracy; :mod:`.integrity` adds the per-model masking checks.
"""

from __future__ import annotations

import numpy as np

from .._keras import tf
from ._common import as_attack_model, batches, check_count, check_inputs, compiled, margin

__all__ = ["gradient_status", "GRADIENT_OK", "GRADIENT_ZERO", "GRADIENT_NONFINITE", "GRADIENT_NONE"]

GRADIENT_OK = "ok"
GRADIENT_ZERO = "zero gradient"
GRADIENT_NONFINITE = "non-finite gradient"
GRADIENT_NONE = "no gradient"  # the graph has no differentiable path from input to output


def _compiled_status(attack_model):
    """``run(x, y) -> (has_gradient, zero, finite)`` per input."""

    def factory(get_model):
        @tf.function(reduce_retracing=True)
        def run(x, y):
            model = get_model()
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(x)
                logits = model.logits(x)
                value = margin(logits, y)
            grad = tape.gradient(value, x)
            axes = list(range(1, x.shape.rank))
            n = tf.shape(x)[0]
            if grad is None:
                return tf.zeros([n], tf.bool), tf.ones([n], tf.bool), tf.ones([n], tf.bool)
            finite = tf.logical_and(tf.reduce_all(tf.math.is_finite(grad), axes),
                                    tf.reduce_all(tf.math.is_finite(logits), -1))
            zero = tf.reduce_all(tf.equal(grad, 0.0), axes)
            return tf.ones([n], tf.bool), zero, finite

        return run

    return compiled(attack_model, ("gradient_status",), factory)


def gradient_status(model, x, y, *, batch_size: int = 256, output: str = "auto") -> np.ndarray:
    """Per input, whether the model gives a usable input gradient at ``x``: one of
    ``"ok"``, ``"zero gradient"`` (every entry exactly 0), ``"non-finite gradient"`` (a NaN
    or infinity in the gradient or the logits) or ``"no gradient"`` (the graph has no
    differentiable path from input to output, e.g. rounding without a straight-through
    estimator). ``y``: the labels whose margin is differentiated (true labels, or the
    model's predictions)."""
    attack_model = as_attack_model(model, output)
    batch_size = check_count(batch_size, "batch_size")
    x, y = check_inputs(attack_model, x, y, None, require_labels=True)
    run = _compiled_status(attack_model)
    status = np.full(len(x), GRADIENT_OK, dtype=object)
    for part in batches(len(x), batch_size):
        has, zero, finite = (t.numpy() for t in run(tf.constant(x[part]), tf.constant(y[part])))
        rows = status[part]
        rows[zero] = GRADIENT_ZERO
        rows[~finite] = GRADIENT_NONFINITE
        rows[~has] = GRADIENT_NONE
        status[part] = rows
    return status

"""Carlini & Wagner L2 attack (Carlini and Wagner, IEEE S&P 2017), compiled.

For each input ``x`` in the box ``[a, b]`` (paper §V-A, with the change of variables and the
objective f₆ of §IV)::

    x'(w)  = a + (b - a)·(tanh(w) + 1)/2
    minimize  ‖x'(w) - x̃‖₂² + c·max(Z_y - max_{j≠y} Z_j + κ, 0)   (objective f₆, untargeted)
              ‖x'(w) - x̃‖₂² + c·max(max_{j≠t} Z_j - Z_t + κ, 0)   (targeted at t)

with ``Z`` the logits, ``κ`` the ``confidence``, ``w`` started at ``atanh((2(x - a)/(b - a) - 1)·0.999999)``
and ``x̃ = x'(w₀)`` (the tanh round trip of ``x``), optimized with Adam for ``max_iterations``
steps. A binary search over ``c`` per example (``binary_search_steps`` rounds, starting at
``initial_const``) keeps, for every input, the successful ``x'`` of smallest L2 distance;
inputs without a success come back unchanged.

The numerics mirror cleverhans 4.0.0's ``carlini_wagner_l2`` step for step (its loss, tf_keras
Adam with β₁ = 0.9, β₂ = 0.999, ε̂ = 1e-7 reset every round, its early abort: every
``max_iterations // 10`` steps, stop the round when the batch loss is not below 0.9999 of the
last check). Where cleverhans 4.0.0 departs from Carlini's reference code we follow the
reference code (``nn_robust_attacks/l2_attack.py``):

* the constant ``c`` is one number per example (cleverhans keeps an image-shaped tensor that
  broadcasts against the per-example loss, so every example is weighted by the sum of all
  constants and the shape grows after the first round);
* after a round, ``c`` becomes an upper bound where the round succeeded and a lower bound
  where it failed, and moves to the midpoint of its bounds (×10 while no upper bound is
  known); cleverhans also multiplies successful examples' ``c`` by 10 after bisecting, and
  tests success on the best score of all rounds instead of the current round's;
* the confidence ``κ`` enters the success test on the label's logit only (cleverhans adds it
  to every logit, which makes it a no-op there).

With ``binary_search_steps=1`` and ``confidence=0`` none of these differences is reached,
except the constant's scale (cleverhans's effective constant is ``N·∏(input shape)`` times
its ``initial_const``), and the two give the same adversarial examples.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .._keras import tf
from ._common import (
    AttackModel,
    as_attack_model,
    batches,
    check_count,
    check_eps,
    check_inputs,
    check_positive,
    compiled,
    progress,
    zeros_if_none,
)

__all__ = ["cw_l2"]

_BETA_1, _BETA_2, _ADAM_EPSILON = 0.9, 0.999, 1e-7  # tf_keras Adam defaults, as cleverhans uses
_TANH_SHRINK = 0.999999  # keeps atanh finite at the box bounds
_NO_BOUND = 1e10


def _to_box(w: tf.Tensor, low: float, high: float) -> tf.Tensor:
    """``x'(w) = a + (b - a)·(tanh(w) + 1)/2``."""
    return ((tf.tanh(w) + 1) / 2) * (high - low) + low


def _from_box(x: tf.Tensor, low: float, high: float) -> tf.Tensor:
    """``w₀ = atanh((2(x - a)/(b - a) - 1)·0.999999)``."""
    unit = tf.clip_by_value((x - low) / (high - low), 0.0, 1.0)
    return tf.atanh((unit * 2.0 - 1.0) * _TANH_SHRINK)


def _objective(logits, onehot, distance, const, confidence, targeted: bool):
    """Batch sum of ``‖δ‖₂² + c·f₆`` (the per-example terms are independent)."""
    real = tf.reduce_sum(onehot * logits, 1)
    other = tf.reduce_max((1.0 - onehot) * logits - onehot * 10_000, 1)
    if targeted:
        hinge = tf.maximum(0.0, other - real + confidence)
    else:
        hinge = tf.maximum(0.0, real - other + confidence)
    return tf.reduce_sum(const * hinge) + tf.reduce_sum(distance)


def _succeeded(logits, onehot, labels, confidence, targeted: bool):
    """Reference-code success test: the label's logit shifted by ``κ`` before the argmax."""
    shifted = logits - confidence * onehot if targeted else logits + confidence * onehot
    predicted = tf.argmax(shifted, axis=1, output_type=labels.dtype)
    return tf.equal(predicted, labels) if targeted else tf.not_equal(predicted, labels)


def _search_constant(const, lower, upper, success):
    """Binary search on ``c`` after a round (reference code): bisect once bounded, else ×10."""
    upper = tf.where(success, tf.minimum(upper, const), upper)
    lower = tf.where(success, lower, tf.maximum(lower, const))
    bounded = upper < _NO_BOUND / 10
    const = tf.where(bounded, (lower + upper) / 2, tf.where(success, const, const * 10))
    return const, lower, upper


def _compiled_cw(attack_model: AttackModel, targeted: bool, abort_early: bool, clip):
    """``run(x, labels, initial_const, confidence, learning_rate, search_steps, iterations)
    -> (best_attack, best_l2)``, compiled once per model and configuration."""
    low, high = float(clip[0]), float(clip[1])

    def factory(get_model):
        @tf.function(reduce_retracing=True)
        def run(x, labels, initial_const, confidence, learning_rate, search_steps, iterations):
            model = get_model()
            n = tf.shape(x)[0]
            axes = list(range(1, x.shape.rank))
            per_example = [-1] + [1] * len(axes)
            onehot = tf.one_hot(labels, model.num_classes, dtype=x.dtype)
            w0 = _from_box(x, low, high)
            reference = _to_box(w0, low, high)
            check_every = tf.maximum(iterations // 10, 1)

            lower = tf.zeros([n])
            upper = tf.fill([n], _NO_BOUND)
            const = tf.fill([n], initial_const)
            best_l2 = tf.fill([n], _NO_BOUND)
            best_attack = x
            for round_ in tf.range(search_steps):
                if search_steps >= 10 and round_ == search_steps - 1:
                    const = upper  # the reference code's last round at the upper bound
                modifier = tf.zeros_like(x)
                moment1, moment2 = tf.zeros_like(x), tf.zeros_like(x)
                round_success = tf.zeros([n], tf.bool)
                round_l2 = tf.fill([n], _NO_BOUND)
                previous = tf.constant(np.inf, x.dtype)
                stop = tf.constant(False)
                step = tf.constant(0)
                while tf.logical_and(step < iterations, tf.logical_not(stop)):
                    with tf.GradientTape() as tape:
                        w = modifier + w0
                        tape.watch(w)
                        adv = _to_box(w, low, high)
                        logits = model.logits(adv)
                        l2 = tf.reduce_sum(tf.square(adv - reference), axes)
                        loss = _objective(logits, onehot, l2, const, confidence, targeted)
                    grad = zeros_if_none(tape.gradient(loss, w), w, model)

                    # Adam (tf_keras update order), on the round's own step count
                    t = tf.cast(step + 1, x.dtype)
                    alpha = learning_rate * tf.sqrt(1 - tf.pow(_BETA_2, t)) / (1 - tf.pow(_BETA_1, t))
                    moment1 = moment1 + (grad - moment1) * (1 - _BETA_1)
                    moment2 = moment2 + (tf.square(grad) - moment2) * (1 - _BETA_2)
                    modifier = modifier - (moment1 * alpha) / (tf.sqrt(moment2) + _ADAM_EPSILON)

                    if abort_early:  # loss and l2 are those before this step, as in cleverhans
                        check = tf.equal(step % check_every, 0)
                        stop = tf.logical_and(check, loss > previous * 0.9999)
                        previous = tf.where(check, loss, previous)
                    keep = tf.logical_and(_succeeded(logits, onehot, labels, confidence, targeted),
                                          tf.logical_not(stop))
                    improved = tf.logical_and(keep, l2 < round_l2)
                    round_l2 = tf.where(improved, l2, round_l2)
                    round_success = tf.logical_or(round_success, improved)
                    improved = tf.logical_and(keep, l2 < best_l2)
                    best_l2 = tf.where(improved, l2, best_l2)
                    best_attack = tf.where(tf.reshape(improved, per_example), adv, best_attack)
                    step += 1
                const, lower, upper = _search_constant(const, lower, upper, round_success)
            return best_attack, best_l2

        return run

    key = ("cw_l2", targeted, abort_early, (low, high))
    return compiled(attack_model, key, factory)


def cw_l2(model, x, y=None, *, confidence: float = 0.0, learning_rate: float = 5e-3,
          binary_search_steps: int = 5, max_iterations: int = 1000, initial_const: float = 1e-2,
          abort_early: bool = True, targeted: bool = False,
          clip: Sequence[float] = (0.0, 1.0), batch_size: int = 128, verbose: int = 1,
          output: str = "auto") -> np.ndarray:
    """Carlini & Wagner L2 adversarial examples (smallest successful L2 per input).

    ``y``: true labels (untargeted; by default the model's predictions) or target labels
    (``targeted=True``, required). Inputs without a successful example come back unchanged.
    The early abort looks at the loss of the whole batch, so results depend on
    ``batch_size`` when ``abort_early`` is on (as in the reference code and cleverhans).
    """
    attack_model = as_attack_model(model, output)
    confidence = check_eps(confidence, "confidence")
    learning_rate = check_positive(learning_rate, "learning_rate")
    initial_const = check_positive(initial_const, "initial_const")
    binary_search_steps = check_count(binary_search_steps, "binary_search_steps")
    max_iterations = check_count(max_iterations, "max_iterations")
    if clip is None:
        raise ValueError("cw_l2 needs a finite box clip=(min, max) for its tanh change of variables")
    x, y = check_inputs(attack_model, x, y, clip, require_labels=targeted)
    if y is None:
        y = attack_model.predict_labels(x, batch_size)
    run = _compiled_cw(attack_model, bool(targeted), bool(abort_early), clip)
    constants = (tf.constant(initial_const, tf.float32), tf.constant(confidence, tf.float32),
                 tf.constant(learning_rate, tf.float32), tf.constant(binary_search_steps),
                 tf.constant(max_iterations))
    out = np.empty_like(x)
    parts = list(batches(len(x), batch_size))
    for part in progress(parts, total=len(parts), verbose=verbose, desc="cw_l2"):
        adv, _ = run(tf.constant(x[part]), tf.constant(y[part]), *constants)
        out[part] = adv.numpy()
    return out

"""What the gradient-free attacks (SPSA, Square) share: their objective, the projection,
progress ticks, seeds — and the view of a deployed artifact as a model they can query.

A deployed ``.tflite`` / ``.onnx`` / ``.fbz`` file (:func:`keras_qrobust.export.load`) has a
``predict`` and nothing else. :class:`DeployedAttackModel` runs it inside the attacks'
compiled loops through ``tf.numpy_function``, so Square attacks the very file that ships
(its integer arithmetic, its runtime), not its Keras twin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from .._keras import tf
from ._common import AttackModel, as_attack_model, batches, margin, progress, project, to_box

__all__ = ["DeployedAttackModel", "as_query_model", "objective", "into_ball", "clean_objective", "Ticks",
           "batch_seed", "rademacher"]


def _deployed_type():
    from ..export.runtime import DeployedModel

    return DeployedModel


def _is_probabilities(scores: np.ndarray) -> bool:
    """Do these rows look like a probability distribution (in [0, 1], summing to 1)?"""
    return bool(scores.size and scores.min() >= -1e-6 and scores.max() <= 1 + 1e-6
                and np.allclose(scores.sum(axis=1), 1.0, atol=2e-2))


@dataclass(frozen=True, eq=False)
class DeployedAttackModel:
    """A deployed artifact seen as ``x -> logits`` (queries only; no gradients).

    Probability outputs (softmax, dequantized from int8) are read through ``log``; a single
    output is read as a binary logit (``[0, z]``) or probability (``[log(1 − p), log p]``).
    """

    model: object  # a keras_qrobust.export.runtime.DeployedModel
    probabilities: bool
    binary: bool
    outputs: int  # the artifact's output width

    @property
    def num_classes(self) -> int:
        return 2 if self.binary else self.outputs

    @property
    def input_shape(self) -> tuple:
        return tuple(self.model.input_shape)

    def _scores(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(np.asarray(x, np.float32)), np.float32).reshape(len(x), -1)

    def logits(self, x: tf.Tensor) -> tf.Tensor:
        out = tf.numpy_function(self._scores, [x], tf.float32, stateful=False)
        out.set_shape([None, self.outputs])
        if self.binary:
            if self.probabilities:
                p = tf.clip_by_value(out, 1e-30, 1.0 - 1e-7)
                return tf.concat([tf.math.log(1.0 - p), tf.math.log(p)], axis=-1)
            return tf.concat([tf.zeros_like(out), out], axis=-1)
        return tf.math.log(tf.maximum(out, 1e-30)) if self.probabilities else out

    def __call__(self, x):
        return self.logits(x)

    def predict_labels(self, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
        labels = [tf.argmax(self.logits(tf.constant(x[s])), axis=-1).numpy() for s in batches(len(x), batch_size)]
        return np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)

    @property
    def compiled_logits(self) -> Callable[[tf.Tensor], tf.Tensor]:
        return self.logits  # the runtime is the cost; nothing to compile


def as_query_model(model, output: str = "auto", probe: Optional[np.ndarray] = None):
    """An :class:`AttackModel` for a tf_keras model, or a :class:`DeployedAttackModel` for an
    exported artifact (``output="auto"`` reads its outputs as probabilities when the rows of
    ``probe``'s scores are distributions)."""
    if isinstance(model, (AttackModel, DeployedAttackModel)):
        return model
    if not isinstance(model, _deployed_type()):
        return as_attack_model(model, output)
    if output not in ("auto", "logits", "probabilities"):
        raise ValueError(f"output must be one of ('auto', 'logits', 'probabilities'), got {output!r}")
    if probe is None:
        probe = np.full((1, *model.input_shape), 0.5, np.float32)
    scores = np.asarray(model.predict(np.asarray(probe[:64], np.float32)), np.float32)
    scores = scores.reshape(len(scores), -1)
    outputs = int(scores.shape[1])
    if output == "auto":
        probabilities = (scores.min() >= 0 and scores.max() <= 1) if outputs == 1 else _is_probabilities(scores)
    else:
        probabilities = output == "probabilities"
    return DeployedAttackModel(model, bool(probabilities), outputs == 1, outputs)


# ---------------------------------------------------------------------------- shared pieces
def objective(logits: tf.Tensor, y: tf.Tensor, targeted: bool) -> tf.Tensor:
    """The attacker's objective per example: > 0 exactly when the attack has succeeded."""
    value = margin(logits, y)
    return -value if targeted else value


def into_ball(adv: tf.Tensor, x: tf.Tensor, eps: tf.Tensor, clip: Optional[tuple], norm: str = "inf") -> tf.Tensor:
    """Project ``adv`` onto the ε-ball around ``x``, then into the box."""
    adv = x + project(adv - x, eps, norm)
    return to_box(adv, clip)


def clean_objective(attack_model, x: np.ndarray, y: Optional[np.ndarray],
                    targeted: bool) -> tuple[np.ndarray, np.ndarray]:
    """Labels (the model's predictions when ``y`` is None) and the objective at ``x``:
    one query per input."""
    logits = attack_model.compiled_logits(tf.constant(x))
    if y is None:
        y = tf.argmax(logits, axis=-1).numpy().astype(np.int64)
    return y, objective(logits, tf.constant(y), targeted).numpy()


class Ticks:
    """A progress bar advanced by counts (no bar when ``verbose=0``)."""

    def __init__(self, total: int, verbose: int, desc: str):
        self.bar = progress(range(total), total=total, verbose=verbose, desc=desc)

    def advance(self, n: int) -> None:
        if hasattr(self.bar, "update"):
            self.bar.update(n)

    def close(self) -> None:
        if hasattr(self.bar, "close"):
            self.bar.close()


def batch_seed(rng: tf.random.Generator) -> tf.Tensor:
    """A seed for the stateless random ops of one batch, drawn from the attack's generator."""
    return rng.make_seeds(1)[:, 0]


def rademacher(shape: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Independent ±1 entries, each sign with probability 1/2."""
    return tf.cast(tf.random.stateless_uniform(shape, seed, 0, 2, tf.int32), tf.float32) * 2.0 - 1.0

"""BPDA: attack a model through the gradient of a differentiable stand-in.

Backward Pass Differentiable Approximation (Athalye, Carlini & Wagner 2018, §4.1): run the
forward pass of the defended model ``f`` but take gradients from an approximation ``g``
of it — for a defense that maps or rounds weights, the model before the mapping
(the mapping replaced by the identity on the backward pass). The wrapped model computes

    h(x) = g(x) + stop_gradient(f(x) − g(x)),

so ``h(x) = f(x)`` exactly while ``∇h = ∇g``. Every gradient attack of
:mod:`keras_qrobust.attacks` runs on ``h`` unchanged and scores ``f``'s own decisions.

``f`` may be a deployed file (:func:`keras_qrobust.export.load`: ``.tflite``, ``.onnx``,
``.fbz``) and ``g`` its Keras twin: the attack then adapts to the integer arithmetic of the
file itself — every step is decided by the file's outputs — instead of scoring on the file
the points found on the twin, which miss wherever the two round differently.
"""

from __future__ import annotations

from .._keras import keras, tf
from ._common import AttackModel, as_attack_model
from ._queries import DeployedAttackModel, as_query_model

__all__ = ["bpda"]


class _ForwardOfBackwardOf(keras.layers.Layer):
    """``g(x) + stop_gradient(f(x) − g(x))`` on logits; not serializable (it holds models)."""

    def __init__(self, forward: AttackModel | DeployedAttackModel, backward: AttackModel, **kwargs):
        super().__init__(trainable=False, **kwargs)
        self._forward = forward
        self._backward = backward

    def call(self, x):
        backward = self._backward.logits(x)
        # a file's scores come back from a py_function without a static batch size; broadcast
        # against g's, they would lose it, and an attack's loop that keeps its shapes static fails
        forward = tf.ensure_shape(self._forward.logits(x), backward.shape)
        return backward + tf.stop_gradient(forward - backward)


def bpda(model, approximation, *, output: str = "auto", approximation_output: str = "auto") -> "keras.Model":
    """A model with ``model``'s outputs (as logits) and ``approximation``'s input gradients.

    ``model``: the defended model (e.g. after ``apply_mu_law(..., mode="map")``, or one whose
    rounding has no straight-through gradient), or a deployed file loaded with
    :func:`keras_qrobust.export.load` (its outputs read as in the gradient-free attacks:
    probabilities through ``log``). ``approximation``: a differentiable model of the same input
    shape and classes (e.g. the same network before the defense, or the file's Keras twin).
    The result outputs logits and is meant for attacks, not for saving.

    Example::

        defended = kq.transforms.apply_mu_law(model, mode="map")
        x_adv = kq.attacks.pgd(kq.attacks.bpda(defended, model), x, y, eps=0.1)
        kq.metrics.accuracy(defended, x_adv, y)

        deployed = kq.export.load("model_w4a4.tflite")      # attack the file through its twin
        result = kq.attacks.autoattack(kq.attacks.bpda(deployed, qmodel), x, y, eps=0.1)
    """
    forward = as_query_model(model, output)
    backward = as_attack_model(approximation, approximation_output)
    name = _name(forward)
    if forward.input_shape != backward.input_shape:
        raise ValueError(
            f"bpda: model '{name}' takes inputs {forward.input_shape} but the "
            f"approximation '{backward.model.name}' takes {backward.input_shape}; the "
            "approximation must stand in for the model on the same inputs"
        )
    if forward.num_classes != backward.num_classes:
        raise ValueError(
            f"bpda: model '{name}' scores {forward.num_classes} classes but the "
            f"approximation '{backward.model.name}' scores {backward.num_classes}"
        )
    inputs = keras.Input(shape=backward.input_shape, dtype=backward.model.inputs[0].dtype)
    logits = _ForwardOfBackwardOf(forward, backward, name="bpda")(inputs)
    return keras.Model(inputs, logits, name=f"bpda_{name}")


def _name(forward) -> str:
    if isinstance(forward, DeployedAttackModel):  # a file: its name, as a Keras-valid model name
        return "".join(c if c.isalnum() or c in "_-" else "_" for c in forward.model.path.name)
    return forward.model.name

"""Fake-quantized activations and tensors: the ReLU grid, 8-bit tensor grids, hard-sigmoid.

:class:`QuantizedReLU` clips to ``[0, max]`` and puts its output on ``2^b - 1`` levels
(``Δa = max/(2^b - 1)``); :class:`TensorQuantizer` puts any tensor on an 8-bit grid over a
calibrated range whose zero is exact; :class:`OutputQuantizer` is the int8 score grid of the
last layer; :class:`HardSigmoid` is keras.applications' ``relu6(x + 3)/6`` as one layer.
"""

from __future__ import annotations

import math

from .. import quantizers as quantizers_mod
from .._keras import keras, register, tf
from ..quantizers.grid import activation_levels, activation_step

__all__ = ["QuantizedReLU", "TensorQuantizer", "HardSigmoid", "OutputQuantizer"]


@register
class QuantizedReLU(keras.layers.ReLU):
    """``keras.layers.ReLU`` followed by an unsigned activation quantizer.

    ``y = Q(relu(x))`` with ``Q`` an :class:`~keras_qrobust.quantizers.ActivationQuantizer`
    whose range ``[0, max]`` is this layer's weight ``activation_max`` (set by calibration;
    trainable only with the quantizer's ``learn_range``). Leaky or thresholded ReLUs are not unsigned and are rejected.
    """

    def __init__(self, activation_quantizer=None, max_value=None, **kwargs):
        if kwargs.get("negative_slope", 0.0) or kwargs.get("threshold", 0.0):
            raise ValueError(
                "QuantizedReLU quantizes a plain ReLU (negative_slope=0, threshold=0); "
                f"got negative_slope={kwargs.get('negative_slope')}, threshold={kwargs.get('threshold')}"
            )
        super().__init__(max_value=max_value, **kwargs)
        quantizer = quantizers_mod.get(activation_quantizer)
        if quantizer is None:
            raise ValueError("QuantizedReLU needs an activation_quantizer, e.g. ActivationQuantizer(4)")
        self.activation_quantizer = quantizer

    def build(self, input_shape):
        super().build(input_shape)
        self._quantizer_weights = self.activation_quantizer.build(input_shape, "activation", self)

    @property
    def activation_max(self) -> tf.Variable:
        """The calibrated upper end of the quantization range."""
        return self._quantizer_weights["max"]

    @property
    def levels(self) -> int:
        """Levels above zero of the output grid, ``2^b - 1``."""
        return activation_levels(self.activation_quantizer.bits)

    @property
    def step(self) -> float:
        """The output grid's step ``Δa = max/(2^b - 1)`` (:func:`keras_qrobust.quantizers.grid.activation_step`)."""
        return activation_step(float(self.activation_max.numpy()), self.activation_quantizer.bits)

    def set_range(self, max_value: float) -> None:
        """Set the calibrated range ``[0, max_value]`` and freeze it as initialised."""
        if not max_value > 0:
            raise ValueError(f"activation range must be > 0, got {max_value}")
        self._quantizer_weights["max"].assign(float(max_value))
        self._quantizer_weights["initialized"].assign(1.0)

    def call(self, inputs, training=None):
        return self.activation_quantizer(super().call(inputs), training, self._quantizer_weights)

    def get_config(self):
        config = super().get_config()
        config["activation_quantizer"] = quantizers_mod.serialize(self.activation_quantizer)
        return config


@register
class TensorQuantizer(keras.layers.Layer):
    """8-bit fake quantization of a tensor on a calibrated range ``[min, max]``.

    ``y = s·(clip(round(x/s) + z, -128, 127) - z)`` with ``s = (max - min)/255`` and the
    zero point ``z`` chosen so that 0 is exact (``fake_quant_with_min_max_vars``). It marks a
    point where the int8 model stores a tensor no QuantizedReLU quantizes — the model input,
    a weight layer's linear output, a sum, an average, a concatenation, a non-ReLU
    activation — so the Keras model rounds where the integer graph rounds, on the same
    grid. Gradients pass straight through (also outside the range): attacks see the slope of
    the float tensor.

    ``rounding``: ``"half_up"`` — TensorFlow's fake quant, ``⌊(x - min)/s + 1/2⌋``;
    ``"half_even"`` — ``z + round_half_even(x/s)`` with the division in float32, as
    onnxruntime's QuantizeLinear and :func:`keras_qrobust.export.runtime.load`'s files quantize
    a model input. The model input needs it: an attack's steps land exactly between two input
    levels (an image on 255 levels of [0, 1] plus ε = 0.1 is 25.5 levels away), where the two
    rules differ.
    """

    ROUNDINGS = ("half_up", "half_even")

    def __init__(self, rounding: str = "half_up", **kwargs):
        super().__init__(**kwargs)
        if rounding not in self.ROUNDINGS:
            raise ValueError(f"rounding must be one of {self.ROUNDINGS}, got {rounding!r}")
        self.rounding = rounding

    def get_config(self) -> dict:
        return {**super().get_config(), "rounding": self.rounding}

    def build(self, input_shape):
        self.min = self.add_weight(name="min", shape=(), initializer="zeros", trainable=False)
        self.max = self.add_weight(name="max", shape=(), initializer="ones", trainable=False)
        super().build(input_shape)

    @property
    def step(self) -> float:
        return float(self.max.numpy() - self.min.numpy()) / 255.0

    def set_range(self, low: float, high: float) -> None:
        low, high = quantizers_mod.nudged_range(low, high)
        self.min.assign(low)
        self.max.assign(high)

    def call(self, inputs):
        if self.rounding == "half_even":
            scale = (self.max - self.min) / 255.0
            zero = tf.round(-self.min / scale)
            codes = tf.clip_by_value(tf.round(inputs / scale) + zero, 0.0, 255.0)  # tf.round: half to even
            quantized = (codes - zero) * scale
        else:
            quantized = tf.quantization.fake_quant_with_min_max_vars(inputs, self.min, self.max, num_bits=8)
        return inputs + tf.stop_gradient(quantized - inputs)


@register
class HardSigmoid(keras.layers.Layer):
    """``h-sigmoid(x) = ReLU6(x + 3)/6 = clip(x/6 + b, 0, 1)``, ``b = 1/2`` (Howard et al.
    2019, MobileNetV3, Sec. 5.2).

    ``x·h-sigmoid(x)`` (a ``Multiply``) is h-swish. Keras' MobileNetV3 writes it with raw
    TensorFlow ops (``x + 3``, ``ReLU(6)``, ``* 1/6``), which
    :func:`~keras_qrobust.transforms.fold_hard_sigmoid` folds into this layer.

    The int8 graph computes it as a 1x1 depthwise convolution (weight 1/6, bias ``b``)
    whose output grid ``[0, w]`` clips it: one requantization, with ``b`` on the int32 grid
    ``Δx/(6·127)`` of its input step ``Δx``. Calibration rounds the non-trainable ``bias``
    onto that grid (:func:`~keras_qrobust.integer_bias.round_bias`) and chooses ``w ≤
    INT8_TOP`` so that no value of the int8 input grid lands near a tie
    (:func:`~keras_qrobust.calibration.hard_sigmoid_top`).
    """

    INT8_TOP = 1.0 - 1.0 / (1000.0 * math.sqrt(2.0))
    SLOPE = 1.0 / 6.0

    def build(self, input_shape):
        self.bias = self.add_weight(name="bias", shape=(), initializer=keras.initializers.Constant(0.5),
                                    trainable=False)
        super().build(input_shape)

    def call(self, inputs):
        return tf.clip_by_value(inputs * self.SLOPE + self.bias, 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape


@register
class OutputQuantizer(TensorQuantizer):
    """The :class:`TensorQuantizer` of a model's class scores.

    What a full-integer int8 model returns: its last layer writes int8 scores. Its range
    starts at the lowest top score seen in calibration
    (:func:`~keras_qrobust.quantizers.score_range`), so every argmax stays unclipped.
    """

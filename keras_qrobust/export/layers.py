"""Layers of a lowered model: float Keras layers whose every quantizer is an 8-bit fake quant.

The TFLite converter and tf2onnx understand only 8-bit ``FakeQuantWithMinMaxVars`` ops. A
``b``-bit grid (``b ≤ 8``) is a subset of an 8-bit grid with the same step, so each
quantizer of a RobustQuantizer model is rewritten as an 8-bit fake quant with that step,
plus a clip where the ``b``-bit range is narrower than the 8-bit one:

* weights ``Δ·k``, ``|k| ≤ 2^(b-1) - 1``: per-channel fake quant on ``[-127Δ', 127Δ']`` with
  ``Δ' = Δ/m``, ``m = ⌊127/(2^(b-1) - 1)⌋`` (narrow range, so the int8 step is exactly ``Δ'``
  and the int8 codes are exactly ``k·m``; ``kernel_step`` holds ``Δ'``);
* ReLU outputs ``Δa·j``, ``0 ≤ j ≤ 2^b - 1``: fake quant on ``[0, 255Δa]``, a minimum with
  ``(2^b - 1)Δa`` and the same fake quant again (int8 codes ``j - 128``);
* tensors that are float in the Keras model (input, residual sums) get an 8-bit fake quant
  (:class:`FixedFakeQuant`) over a range calibrated on representative data.
"""

from __future__ import annotations

from .._keras import keras, register, tf
from ..quantizers import nudged_range
from ..quantizers.grid import activation_levels

__all__ = ["FixedFakeQuant", "LoweredReLU", "LoweredDense", "LoweredConv2D", "LoweredDepthwiseConv2D",
           "nudged_range", "LOWERED_WEIGHT_LAYERS"]

INT8_LEVELS = 255
INT8_MAX_CODE = 127


def _scalar(layer, name: str):
    return layer.add_weight(name=name, shape=(), initializer="zeros", trainable=False)


@register
class FixedFakeQuant(keras.layers.Layer):
    """8-bit fake quantization on a fixed range ``[min, max]`` (non-trainable weights).

    ``enabled = False`` makes it the identity (used while its range is calibrated).
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.enabled = True

    def build(self, input_shape):
        self.min = _scalar(self, "min")
        self.max = _scalar(self, "max")
        super().build(input_shape)

    def set_range(self, low: float, high: float) -> None:
        low, high = nudged_range(low, high)
        self.min.assign(low)
        self.max.assign(high)

    def call(self, inputs):
        if not self.enabled:
            return tf.identity(inputs)
        return tf.quantization.fake_quant_with_min_max_vars(inputs, self.min, self.max, num_bits=8)


@register
class LoweredReLU(keras.layers.Layer):
    """``Δa·round(clip(x, 0, (2^b - 1)Δa)/Δa)`` written as 8-bit fake quants and a minimum.

    Equals :class:`~keras_qrobust.layers.QuantizedReLU` with range ``max = (2^b - 1)Δa``.
    """

    def __init__(self, bits: int, **kwargs):
        super().__init__(**kwargs)
        self.bits = int(bits)

    def build(self, input_shape):
        self.step = _scalar(self, "step")
        super().build(input_shape)

    @property
    def top(self) -> tf.Tensor:
        return self.step * float(activation_levels(self.bits))

    def call(self, inputs):
        high = self.step * float(INT8_LEVELS)
        y = tf.quantization.fake_quant_with_min_max_vars(tf.nn.relu(inputs), 0.0, high, num_bits=8)
        if self.bits < 8:
            y = tf.minimum(y, self.top)
            y = tf.quantization.fake_quant_with_min_max_vars(y, 0.0, high, num_bits=8)
        return y

    def get_config(self):
        return {**super().get_config(), "bits": self.bits}


class _LoweredKernelMixin:
    """A weight layer whose kernel is on a per-output-channel grid ``Δ_c·k``.

    ``kernel_step`` (non-trainable, one value per output channel) is ``Δ_c``; the kernel
    passes through a per-channel 8-bit fake quant on ``[-127Δ_c, 127Δ_c]``, the pattern the
    TFLite converter turns into int8 weights with scale ``Δ_c`` (an identity on the grid).
    """

    _kernel_attr = "kernel"

    def build(self, input_shape):
        super().build(input_shape)
        self.kernel_step = self.add_weight(name="kernel_step", shape=(self._channels(),), initializer="ones",
                                           trainable=False)

    def _channels(self) -> int:
        return int(getattr(self, self._kernel_attr).shape[-1])

    def _fake_quant(self, kernel: tf.Tensor) -> tf.Tensor:
        """Per-channel fake quant along the last axis of ``kernel``."""
        limit = self.kernel_step * float(INT8_MAX_CODE)
        return tf.quantization.fake_quant_with_min_max_vars_per_channel(kernel, -limit, limit, num_bits=8,
                                                                        narrow_range=True)

    def lowered_kernel(self) -> tf.Tensor:
        return self._fake_quant(getattr(self, self._kernel_attr))


@register
class LoweredDense(_LoweredKernelMixin, keras.layers.Dense):
    def lowered_kernel(self) -> tf.Tensor:
        # as a 1x1 convolution kernel: TFLite quantizes FULLY_CONNECTED weights per channel
        # only after a transpose its converter refuses for per-channel fake quants
        return self._fake_quant(tf.reshape(self.kernel, [1, 1, *self.kernel.shape]))

    def call(self, inputs):
        units_in = int(self.kernel.shape[0])
        y = tf.nn.conv2d(tf.reshape(inputs, [-1, 1, 1, units_in]), self.lowered_kernel(), strides=1,
                         padding="VALID")
        if self.use_bias:
            y = tf.nn.bias_add(y, self.bias)
        if inputs.shape.rank == 2:  # a static shape keeps Shape/Slice ops out of the exported graph
            y = tf.reshape(y, [-1, self.units])
        else:
            y = tf.reshape(y, tf.concat([tf.shape(inputs)[:-1], [self.units]], axis=0))
        return self.activation(y)


@register
class LoweredConv2D(_LoweredKernelMixin, keras.layers.Conv2D):
    def call(self, inputs):
        y = self.convolution_op(inputs, self.lowered_kernel())
        if self.use_bias:
            y = tf.nn.bias_add(y, self.bias)
        return self.activation(y)


@register
class LoweredDepthwiseConv2D(_LoweredKernelMixin, keras.layers.DepthwiseConv2D):
    """Depthwise convolution (depth multiplier 1): the output channel is the input channel."""

    _kernel_attr = "depthwise_kernel"

    def __init__(self, kernel_size, **kwargs):
        super().__init__(kernel_size, **kwargs)
        if self.depth_multiplier != 1:
            raise ValueError("LoweredDepthwiseConv2D supports depth_multiplier=1 only")

    def _channels(self) -> int:
        return int(self.depthwise_kernel.shape[-2])

    def lowered_kernel(self) -> tf.Tensor:
        # per-channel fake quant works on the last axis: move the channels there and back
        kernel = self._fake_quant(tf.transpose(self.depthwise_kernel, [0, 1, 3, 2]))
        return tf.transpose(kernel, [0, 1, 3, 2])

    def call(self, inputs):
        y = tf.nn.depthwise_conv2d(inputs, self.lowered_kernel(), strides=(1, *self.strides, 1),
                                   padding=self.padding.upper(), dilations=self.dilation_rate)
        if self.use_bias:
            y = tf.nn.bias_add(y, self.bias)
        return self.activation(y)


#: Keras weight-layer class name -> its lowered twin
LOWERED_WEIGHT_LAYERS = {
    "Dense": LoweredDense,
    "Conv2D": LoweredConv2D,
    "DepthwiseConv2D": LoweredDepthwiseConv2D,
}

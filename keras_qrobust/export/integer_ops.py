"""The layers of the integer twin: each computes one requantizing op of an int8 file.

A :class:`Requantized` layer stands for an op that writes a new grid (a convolution,
depthwise convolution or dense layer, a multiplication, an addition, the input) and the
quantizer after it: its forward pass computes the file's codes with the arithmetic of
:mod:`~keras_qrobust.export.int8_arithmetic` (XNNPACK's, or ONNX Runtime's with
``runtime="onnx"``), its gradient the lowered fake-quant layers' (straight-through).
:mod:`~keras_qrobust.export.integer_twin` assembles them into the twin.
"""

from __future__ import annotations

import numpy as np

from .._keras import keras, tf
from ..transforms._graph import UnsupportedModelError
from . import int8_arithmetic as arith
from .layers import FixedFakeQuant, LoweredConv2D, LoweredDense, LoweredDepthwiseConv2D

__all__ = ["Requantized", "RequantizedWeights", "RequantizedMultiply", "RequantizedAdd", "RequantizedInput",
           "RoundedActivation", "requantizer", "output_grid", "ROUNDED"]

_WEIGHT_LAYERS = (LoweredConv2D, LoweredDepthwiseConv2D, LoweredDense)
#: Keras activations the twin computes in float and rounds (the int8 kernels use lookup tables)
ROUNDED = ("softmax", "sigmoid", "tanh")


def output_grid(quantizer) -> tuple[arith.Int8Grid, int]:
    """The grid a quantizer of the lowered model writes and the largest code it lets through."""
    if isinstance(quantizer, FixedFakeQuant):
        return arith.fake_quant_grid(quantizer.min.numpy(), quantizer.max.numpy()), arith.INT8_MAX
    step = np.float32(quantizer.step.numpy())
    grid = arith.fake_quant_grid(0.0, np.float32(step * np.float32(255)))
    if quantizer.bits >= 8:
        return grid, arith.INT8_MAX
    top = np.float32(step * np.float32(2 ** quantizer.bits - 1))  # the MINIMUM's constant, on the same grid
    return grid, int(min(arith.INT8_MAX, np.rint(float(top) / grid.scale_double) + grid.zero_point))


class Requantized(keras.layers.Layer):
    """One op of the int8 graph that writes a new grid, and the quantizer that sets it."""

    def __init__(self, producer, quantizer, input_grids, output_grid: arith.Int8Grid, top_code: int,
                 reshapes=(), runtime: str = "tflite", **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.producer, self.quantizer, self.runtime = producer, quantizer, runtime
        self.reshapes = list(reshapes)
        self.input_grids = tuple(input_grids)
        self.output_grid, self.top_code = output_grid, top_code

    def _codes(self, x, grid: arith.Int8Grid):
        """Input codes minus the zero point, recovered from values on ``grid``."""
        return tf.round(tf.stop_gradient(x) / grid.scale)

    def _write(self, rounded):
        """``rounded`` (integers, zero point not added) -> values on the output grid."""
        grid = self.output_grid
        codes = tf.clip_by_value(rounded + grid.zero_point, arith.INT8_MIN, self.top_code)
        return (codes - grid.zero_point) * grid.scale

    def _integer(self, inputs):
        raise NotImplementedError

    def _reshaped(self, y):
        for layer in self.reshapes:
            y = layer(y)
        return y

    def _fake_quant(self, inputs):
        return self.quantizer(self._reshaped(self.producer(inputs)))

    def call(self, inputs):
        several = isinstance(inputs, (list, tuple))
        values = list(inputs) if several else [inputs]

        # the forward pass computes only the integer path; the fake-quant path is run again
        # in the backward pass, for its gradient (as tf.recompute_grad does)
        @tf.custom_gradient
        def requantized(*xs):
            def gradient(upstream):
                with tf.GradientTape() as tape:
                    tape.watch(xs)
                    fake_quant = self._fake_quant(list(xs) if several else xs[0])
                return tape.gradient(fake_quant, xs, output_gradients=upstream)

            return tf.stop_gradient(self._reshaped(self._integer(list(xs) if several else xs[0]))), gradient

        return requantized(*values)


class RequantizedWeights(Requantized):
    """Convolution, depthwise convolution or dense layer: exact sums, fp32 requantization."""

    def __init__(self, producer, quantizer, input_grids, output_grid, top_code, reshapes=(), **kwargs):
        super().__init__(producer, quantizer, input_grids, output_grid, top_code, reshapes, **kwargs)
        (grid_in,) = self.input_grids
        depthwise = isinstance(producer, LoweredDepthwiseConv2D)
        kernel = producer.lowered_kernel().numpy()
        scale, scale_double = arith.kernel_scales(producer.kernel_step.numpy())
        if depthwise:
            if producer.depth_multiplier != 1:
                raise UnsupportedModelError(f"Layer '{producer.name}': the integer twin takes depth_multiplier=1 only")
            channels = scale.reshape(1, 1, -1, 1)
        else:
            channels = scale.reshape([1] * (kernel.ndim - 1) + [-1])
            if getattr(producer, "groups", 1) != 1:
                raise UnsupportedModelError(f"Layer '{producer.name}': the integer twin takes groups=1 only")
        codes = kernel / channels
        if np.max(np.abs(codes - np.rint(codes))) > 1e-3:
            raise UnsupportedModelError(f"Layer '{producer.name}': its kernel is not on its int8 grid")
        codes = np.rint(codes)
        bias = arith.bias_codes(producer.bias.numpy(), grid_in, scale_double) if producer.use_bias else None
        reduce_axes = (0, 1) if depthwise else tuple(range(kernel.ndim - 1))
        bound = max(abs(arith.INT8_MIN - grid_in.zero_point), abs(arith.INT8_MAX - grid_in.zero_point))
        self._dtype_sums = tf.float32 if arith.sums_fit_float32(bound, codes, bias, reduce_axes) else tf.float64
        self._kernel = tf.constant(codes, self._dtype_sums)
        self._bias = None if bias is None else tf.constant(bias, self._dtype_sums)
        product = (np.float32(grid_in.scale) * scale).astype(np.float32)
        self._multiplier = tf.constant(arith.fp32_multiplier(product, output_grid))
        self._depthwise = depthwise

    def _integer(self, inputs):
        producer = self.producer
        x = tf.cast(self._codes(inputs, self.input_grids[0]), self._dtype_sums)
        if isinstance(producer, LoweredDense):
            units_in = int(producer.kernel.shape[0])
            flat = tf.reshape(x, [-1, units_in])
            acc = tf.matmul(flat, tf.reshape(self._kernel, [units_in, -1]))
            shape = tf.concat([tf.shape(inputs)[:-1], [producer.units]], axis=0)
            acc = tf.reshape(acc, shape) if inputs.shape.rank != 2 else acc
        elif self._depthwise:
            acc = tf.nn.depthwise_conv2d(x, self._kernel, strides=(1, *producer.strides, 1),
                                         padding=producer.padding.upper(), dilations=producer.dilation_rate)
        else:
            acc = tf.nn.convolution(x, self._kernel, strides=producer.strides, padding=producer.padding.upper(),
                                    dilations=producer.dilation_rate)
        if self._bias is not None:
            acc = acc + self._bias
        if self._dtype_sums == tf.float64:
            acc = arith.wrap_int32(acc)
        return self._write(tf.round(tf.cast(acc, tf.float32) * self._multiplier))


class RequantizedMultiply(Requantized):
    """``a·b``: the integer product, fp32 requantization."""

    def __init__(self, producer, quantizer, input_grids, output_grid, top_code, reshapes=(), **kwargs):
        super().__init__(producer, quantizer, input_grids, output_grid, top_code, reshapes, **kwargs)
        if len(self.input_grids) != 2:
            raise UnsupportedModelError(f"Layer '{producer.name}': the integer twin multiplies two tensors only")
        a, b = self.input_grids
        self._multiplier = arith.fp32_multiplier(np.float32(a.scale * b.scale), output_grid)

    def _integer(self, inputs):
        a, b = (self._codes(x, grid) for x, grid in zip(inputs, self.input_grids))
        scaled = (a * b) * self._multiplier  # |a·b| ≤ 2^16: exact in float32
        if self.runtime == "onnx":  # MLAS adds the uint8 zero point in float32 before rounding
            zero = float(self.output_grid.zero_point + arith.UINT8_OFFSET)
            return self._write(tf.round(scaled + zero) - zero)
        return self._write(tf.round(scaled))


class RequantizedAdd(Requantized):
    """``a + b``: XNNPACK's fixed-point multipliers, the sum rounded half up by the shift; or
    ONNX Runtime's float32 fused multiply-adds on uint8 codes."""

    def __init__(self, producer, quantizer, input_grids, output_grid, top_code, reshapes=(), **kwargs):
        super().__init__(producer, quantizer, input_grids, output_grid, top_code, reshapes, **kwargs)
        if len(self.input_grids) != 2:
            raise UnsupportedModelError(f"Layer '{producer.name}': the integer twin adds two tensors only")
        if self.runtime == "onnx":
            self._a, self._b, self._fixed = arith.onnxruntime_add_constants(*self.input_grids, output_grid)
        else:
            self._a, self._b, shift = arith.add_multipliers(*self.input_grids, output_grid)
            self._shift = float(2.0 ** shift)

    def _integer(self, inputs):
        a, b = (tf.cast(self._codes(x, grid), tf.float64) for x, grid in zip(inputs, self.input_grids))
        if self.runtime == "onnx":
            return self._write(self._onnxruntime(a, b))
        total = a * self._a + b * self._b + self._shift / 2  # integers below 2^31: exact in float64
        return self._write(tf.cast(tf.floor(total / self._shift), tf.float32))

    def _onnxruntime(self, a, b):
        """``round(fma(A, r_a, fma(B, r_b, F))) − Z_y`` on uint8 codes; a fused multiply-add is
        the float64 sum rounded once to float32 (a uint8 code times a float32 ratio plus a float32
        needs fewer than 53 bits for ratios within MLAS's [2^-14, 2^8])."""
        (grid_a, grid_b), offset = self.input_grids, arith.UINT8_OFFSET
        codes_a, codes_b = a + (grid_a.zero_point + offset), b + (grid_b.zero_point + offset)
        partial = tf.cast(tf.cast(codes_b * self._b + self._fixed, tf.float32), tf.float64)
        y = tf.cast(codes_a * self._a + partial, tf.float32)
        return tf.round(y) - (self.output_grid.zero_point + offset)


class RequantizedInput(Requantized):
    """The model input, quantized as the caller of the file does (round half to even)."""

    def _integer(self, inputs):
        return self._write(tf.round(inputs / self.output_grid.scale))

    def _fake_quant(self, inputs):
        return self.quantizer(inputs)


class RoundedActivation(Requantized):
    """A softmax, sigmoid or tanh in float, rounded onto the file's output grid (the int8
    kernels use lookup tables or fixed point: the twin lists it as approximated)."""

    def _integer(self, inputs):
        return self._write(tf.round(self.producer(tf.stop_gradient(inputs)) / self.output_grid.scale))


def requantizer(producer) -> type | None:
    if isinstance(producer, _WEIGHT_LAYERS):
        return RequantizedWeights
    kind = type(producer).__name__
    if kind == "Multiply":
        return RequantizedMultiply
    if kind == "Add":
        return RequantizedAdd
    if kind == "Softmax" or (kind == "Activation" and producer.get_config()["activation"] in ROUNDED):
        return RoundedActivation
    return None

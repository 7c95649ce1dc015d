"""The integer twin: a Keras model whose forward pass is the int8 TFLite file's arithmetic.

A RobustQuantizer model rounds where the int8 graph rounds, on the same grids, but it sums
float products and rounds the float result; the file sums integer codes exactly and
requantizes them with a float32 multiplier (convolutions, multiplications) or a fixed-point
one (additions). Near half a level the two part, and a deep network (MobileNetV3's
squeeze-excite products) amplifies one step into many (:mod:`~keras_qrobust.export.layer_diff`).

:func:`integer_twin` builds, from the lowered model (:func:`~keras_qrobust.export.lowering.lower`),
a model in which every op that requantizes — a weight layer, a multiplication or an addition
and the quantizer after it — is one layer computing, in its forward pass, the file's own codes
with the arithmetic of :mod:`~keras_qrobust.export.int8_arithmetic` (LiteRT's default delegate,
XNNPACK), and, for its gradient, the lowered fake-quant layers (straight-through, as the
RobustQuantizer model's)::

    y = y_int,   ∂y/∂x = ∂y_fake_quant/∂x

(``tf.custom_gradient``: the fake-quant path runs only in the backward pass), the fake-quant
op's gradient taken at the twin's own (the file's) input values. Attacks on the twin are attacks on the file's
function.

Ops whose int8 kernel the twin does not reproduce bit for bit (the lookup tables and fixed
point of a softmax, sigmoid or tanh) are computed in float, rounded onto the file's grid and
listed in :attr:`IntegerTwin.approximated`. So are, checked on the converted file and never
assumed, ops that XNNPACK refuses (LiteRT then runs them in its builtin kernels, which
requantize in fixed point) and outputs that differ from the file's on probe inputs. Any
other op the twin cannot follow raises
:class:`~keras_qrobust.transforms._graph.UnsupportedModelError`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._keras import check_model, keras, tf
from ..transforms._graph import UnsupportedModelError
from ..transforms._kinds import GRID_PRESERVING, only_reshapes
from . import int8_arithmetic as arith
from .layers import FixedFakeQuant, LoweredConv2D, LoweredDense, LoweredDepthwiseConv2D, LoweredReLU
from .lowering import Lowered, lower
from .runtime.tflite import TFLiteModel
from .tflite import convert_lowered

__all__ = ["IntegerTwin", "integer_twin"]

_WEIGHT_LAYERS = (LoweredConv2D, LoweredDepthwiseConv2D, LoweredDense)
_QUANTIZERS = (FixedFakeQuant, LoweredReLU)
_ROUNDED = ("softmax", "sigmoid", "tanh")
#: int8 ops that compute new codes (a builtin kernel rescales them in fixed point, not as XNNPACK);
#: a softmax, sigmoid or tanh the twin rounds in float already
_REQUANTIZING = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL", "ADD", "SUB",
                 "MUL", "DIV", "AVERAGE_POOL_2D", "MEAN", "SUM", "QUANTIZE", "HARD_SWISH", "RELU", "RELU6",
                 "RELU_N1_TO_1", "LEAKY_RELU", "PRELU", "CONCATENATION")


@dataclass(frozen=True)
class IntegerTwin:
    """A model that computes what the int8 TFLite export of a RobustQuantizer model computes.

    Attributes:
        model: Keras model: forward = the file's integer arithmetic (XNNPACK), gradient = the
            lowered fake-quant model's (straight-through).
        lowered: the lowering it was built from (what the TFLite export converts).
        approximated: tensors computed in float and rounded onto the file's grid rather than
            with the file's integer kernel, and ops of the file that XNNPACK leaves to LiteRT's
            builtin (fixed-point) kernels (empty: the twin is bit-exact).
    """

    model: object
    lowered: Lowered
    approximated: tuple[str, ...]

    @property
    def exact(self) -> bool:
        return not self.approximated


def _inbound(layer) -> list:
    nodes = layer._inbound_nodes
    if not nodes:
        return []
    inbound = nodes[0].inbound_layers
    return list(inbound) if isinstance(inbound, (list, tuple)) else [inbound]


def _consumers(layer) -> list:
    return [node.outbound_layer for node in layer._outbound_nodes]


def _output_grid(quantizer) -> tuple[arith.Int8Grid, int]:
    """The grid a quantizer of the lowered model writes and the largest code it lets through."""
    if isinstance(quantizer, FixedFakeQuant):
        return arith.fake_quant_grid(quantizer.min.numpy(), quantizer.max.numpy()), arith.INT8_MAX
    step = np.float32(quantizer.step.numpy())
    grid = arith.fake_quant_grid(0.0, np.float32(step * np.float32(255)))
    if quantizer.bits >= 8:
        return grid, arith.INT8_MAX
    top = np.float32(step * np.float32(2 ** quantizer.bits - 1))  # the MINIMUM's constant, on the same grid
    return grid, int(min(arith.INT8_MAX, np.rint(float(top) / grid.scale_double) + grid.zero_point))


class _Requantized(keras.layers.Layer):
    """One op of the int8 graph that writes a new grid, and the quantizer that sets it."""

    def __init__(self, producer, quantizer, input_grids, output_grid: arith.Int8Grid, top_code: int,
                 reshapes=(), **kwargs):
        super().__init__(trainable=False, **kwargs)
        self.producer, self.quantizer = producer, quantizer
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


class _RequantizedWeights(_Requantized):
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


class _RequantizedMultiply(_Requantized):
    """``a·b``: the integer product, fp32 requantization."""

    def __init__(self, producer, quantizer, input_grids, output_grid, top_code, reshapes=(), **kwargs):
        super().__init__(producer, quantizer, input_grids, output_grid, top_code, reshapes, **kwargs)
        if len(self.input_grids) != 2:
            raise UnsupportedModelError(f"Layer '{producer.name}': the integer twin multiplies two tensors only")
        a, b = self.input_grids
        self._multiplier = arith.fp32_multiplier(np.float32(a.scale * b.scale), output_grid)

    def _integer(self, inputs):
        a, b = (self._codes(x, grid) for x, grid in zip(inputs, self.input_grids))
        return self._write(tf.round((a * b) * self._multiplier))  # |a·b| ≤ 2^16: exact in float32


class _RequantizedAdd(_Requantized):
    """``a + b``: XNNPACK's fixed-point multipliers, the sum rounded half up by the shift."""

    def __init__(self, producer, quantizer, input_grids, output_grid, top_code, reshapes=(), **kwargs):
        super().__init__(producer, quantizer, input_grids, output_grid, top_code, reshapes, **kwargs)
        if len(self.input_grids) != 2:
            raise UnsupportedModelError(f"Layer '{producer.name}': the integer twin adds two tensors only")
        self._a, self._b, shift = arith.add_multipliers(*self.input_grids, output_grid)
        self._shift = float(2.0 ** shift)

    def _integer(self, inputs):
        a, b = (tf.cast(self._codes(x, grid), tf.float64) for x, grid in zip(inputs, self.input_grids))
        total = a * self._a + b * self._b + self._shift / 2  # integers below 2^31: exact in float64
        return self._write(tf.cast(tf.floor(total / self._shift), tf.float32))


class _RequantizedInput(_Requantized):
    """The model input, quantized as the caller of the file does (round half to even)."""

    def _integer(self, inputs):
        return self._write(tf.round(inputs / self.output_grid.scale))

    def _fake_quant(self, inputs):
        return self.quantizer(inputs)


class _RoundedActivation(_Requantized):
    """A softmax, sigmoid or tanh in float, rounded onto the file's output grid (the int8
    kernels use lookup tables or fixed point: listed in :attr:`IntegerTwin.approximated`)."""

    def _integer(self, inputs):
        return self._write(tf.round(self.producer(tf.stop_gradient(inputs)) / self.output_grid.scale))


def _requantizer(producer) -> type | None:
    if isinstance(producer, _WEIGHT_LAYERS):
        return _RequantizedWeights
    kind = type(producer).__name__
    if kind == "Multiply":
        return _RequantizedMultiply
    if kind == "Add":
        return _RequantizedAdd
    if kind == "Softmax" or (kind == "Activation" and producer.get_config()["activation"] in _ROUNDED):
        return _RoundedActivation
    return None


def _reshapes(layer) -> bool:
    """Layers that only reshape (or, at inference, pass) their input."""
    kind = type(layer).__name__
    return only_reshapes(kind, layer.get_config()["activation"] if kind == "Activation" else None)


def _keeps_grid(layer) -> bool:
    return type(layer).__name__ in GRID_PRESERVING or _reshapes(layer)


def _next_quantizer(layer):
    """The quantizer that ``layer``'s only path reaches through reshapes (and a concatenation), or None."""
    consumers = _consumers(layer)
    while len(consumers) == 1 and (_reshapes(consumers[0]) or type(consumers[0]).__name__ == "Concatenate"):
        consumers = _consumers(consumers[0])
    return consumers[0] if len(consumers) == 1 and isinstance(consumers[0], _QUANTIZERS) else None


class _Builder:
    """Walks the lowered model in graph order and writes the twin's functional graph."""

    def __init__(self):
        self.tensors: dict[str, object] = {}
        self.grids: dict[str, arith.Int8Grid] = {}
        self.pending: dict[str, tuple] = {}  # requantizing op -> (op layer, reshapes after it)
        self.approximated: list[str] = []
        self.inputs: list = []

    def requantized(self, name: str, quantizer):
        """The twin tensor of pending op ``name`` written on ``quantizer``'s grid."""
        producer, reshapes = self.pending.pop(name)
        grid, top = _output_grid(quantizer)
        sources = _inbound(producer)
        op = _requantizer(producer)(producer, quantizer, [self.grids[s.name] for s in sources], grid, top, reshapes,
                                    name=f"{producer.name}_int")
        if isinstance(op, _RoundedActivation):
            self.approximated.append(quantizer.name)
        args = [self.tensors[s.name] for s in sources]
        return op(args if len(args) > 1 else args[0])

    def visit(self, layer) -> None:
        name, kind = layer.name, type(layer).__name__
        sources = _inbound(layer)
        if kind == "InputLayer":
            shape = layer.output_shape[0] if isinstance(layer.output_shape, list) else layer.output_shape
            self.tensors[name] = keras.Input(batch_shape=shape, name=name)
            self.inputs.append(self.tensors[name])
        elif len(sources) == 1 and sources[0].name in self.pending and _reshapes(layer):
            producer, reshapes = self.pending.pop(sources[0].name)
            self.pending[name] = (producer, [*reshapes, layer])
        elif kind == "Concatenate":
            self.concatenate(layer, sources)
        elif any(source.name in self.pending for source in sources) and not isinstance(layer, _QUANTIZERS):
            producer = next(self.pending[source.name][0] for source in sources if source.name in self.pending)
            raise UnsupportedModelError(f"Layer '{producer.name}' ({type(producer).__name__}) is read by '{name}' "
                                        "before any quantizer: the integer twin needs its int8 grid")
        elif isinstance(layer, _QUANTIZERS):
            self.quantize(layer, sources)
        elif _requantizer(layer) is not None:
            if _next_quantizer(layer) is None:
                raise UnsupportedModelError(f"Layer '{name}' ({kind}) is not followed by exactly one quantizer in the "
                                            "lowered model: the integer twin cannot requantize it")
            missing = [s.name for s in sources if s.name not in self.grids]
            if missing:
                raise UnsupportedModelError(f"Layer '{name}' reads {', '.join(missing)}, which is not on an int8 grid")
            self.pending[name] = (layer, [])
        elif _keeps_grid(layer):
            (source,) = sources
            if source.name not in self.grids:
                raise UnsupportedModelError(f"Layer '{name}' ({kind}) reads '{source.name}', which is not on an int8 "
                                            "grid: the integer twin cannot follow it")
            self.tensors[name] = layer(self.tensors[source.name])
            self.grids[name] = self.grids[source.name]
        else:
            raise UnsupportedModelError(f"Layer '{name}' ({kind}): the integer twin has no integer kernel for it")

    def quantize(self, layer, sources) -> None:
        (source,) = sources
        grid, top = _output_grid(layer)
        if source.name in self.pending:
            self.tensors[layer.name] = self.requantized(source.name, layer)
        elif type(source).__name__ == "InputLayer" and isinstance(layer, FixedFakeQuant):
            op = _RequantizedInput(source, layer, [], grid, top, name=f"{layer.name}_int")
            self.tensors[layer.name] = op(self.tensors[source.name])
        elif self.grids.get(source.name) == grid and top == arith.INT8_MAX:
            self.tensors[layer.name] = self.tensors[source.name]  # the same grid again: the converter drops it
        else:
            raise UnsupportedModelError(f"Layer '{layer.name}' requantizes an int8 tensor ('{source.name}') to "
                                        "another grid: the integer twin does not emulate that op")
        self.grids[layer.name] = grid

    def concatenate(self, layer, sources) -> None:
        """The int8 concatenation stores every input on its output's grid: ops pending before it
        write that grid directly (the quantizer after it), other inputs must already be on it."""
        quantizer = _next_quantizer(layer)
        grid = None if quantizer is None else _output_grid(quantizer)[0]
        source_grids = {grid if s.name in self.pending else self.grids.get(s.name) for s in sources}
        if None in source_grids or len(source_grids) != 1:
            raise UnsupportedModelError(f"Layer '{layer.name}' (Concatenate) reads tensors on different or unknown "
                                        "int8 grids: the integer twin cannot follow it")
        args = [self.requantized(s.name, quantizer) if s.name in self.pending else self.tensors[s.name]
                for s in sources]
        self.tensors[layer.name] = layer(args)
        self.grids[layer.name] = source_grids.pop()


def integer_twin(model, representative=None, *, file: str | os.PathLike | None = None) -> IntegerTwin:
    """The integer twin of a RobustQuantizer model's int8 TFLite export (module doc).

    Args:
        model: a model returned by :meth:`RobustQuantizer.quantize` (not modified); the twin
            is a snapshot: build it again after changing the model.
        representative: as for :func:`~keras_qrobust.export.lower`, for models that leave
            tensors float.
        file: the model's int8 ``.tflite`` export (:func:`~keras_qrobust.export.tflite`), to
            check the twin against instead of converting the model again; a file of another
            model shows up as differing outputs in :attr:`IntegerTwin.approximated`.
    """
    model = check_model(model)
    if file is not None and (not Path(file).is_file() or Path(file).suffix != ".tflite"):
        raise ValueError(f"file={str(file)!r} is not a .tflite file: pass the path export.tflite wrote, or None")
    lowered = lower(model, representative)
    low = lowered.model
    builder = _Builder()
    for layer in low.layers:
        builder.visit(layer)
    outputs = [builder.tensors[name] for name in low.output_names]
    twin = keras.Model(builder.inputs, outputs if len(outputs) > 1 else outputs[0], name=f"{model.name}_integer_twin")
    findings = _check_against_file(twin, low, representative, file)
    return IntegerTwin(twin, lowered, (*builder.approximated, *findings))


def _probe_inputs(lowered_model, representative, count: int = 64) -> np.ndarray:
    """``representative`` inputs, or inputs drawn uniformly over the input quantizer's range."""
    if representative is not None:
        return np.asarray(representative, np.float32)[:count]
    quantizer = next(layer for layer in lowered_model.layers if isinstance(layer, FixedFakeQuant))
    low, high = float(quantizer.min.numpy()), float(quantizer.max.numpy())
    shape = (count, *lowered_model.input_shape[1:])
    return np.random.default_rng(0).uniform(low, high, size=shape).astype(np.float32)


def _check_against_file(twin, lowered_model, representative, file) -> list[str]:
    """What of the converted file (``file``, else the lowered model converted here) the twin
    does not reproduce, checked on the file itself: requantizing ops XNNPACK refuses (LiteRT's
    builtin kernels compute them in fixed point) and outputs that differ on probe inputs
    (e.g. a grid the converter widens)."""
    with tempfile.TemporaryDirectory(prefix="kq_twin_") as folder:
        path = Path(file) if file is not None else Path(folder) / "lowered.tflite"
        if file is None:
            path.write_bytes(convert_lowered(lowered_model))
        deployed = TFLiteModel(path)
        if deployed.input_shape != tuple(lowered_model.input_shape[1:]):
            raise ValueError(f"file={str(file)!r} takes inputs of shape {deployed.input_shape}, the model "
                             f"{tuple(lowered_model.input_shape[1:])}: pass this model's TFLite export")
        findings = [f"{tensor} ({op}, builtin kernel)" for op, tensor in deployed.undelegated_ops()
                    if op in _REQUANTIZING]
        probe = _probe_inputs(lowered_model, representative)
        expected = deployed.predict(probe)
    found = np.asarray(twin.predict(probe, verbose=0))
    if found.size != expected.size:
        raise ValueError(f"file={str(file)!r} has outputs of shape {expected.shape[1:]}, the model "
                         f"{found.shape[1:]}: pass this model's TFLite export")
    found = found.reshape(expected.shape)
    differing = int(np.sum(np.any((found != expected).reshape(len(probe), -1), axis=1)))
    if differing:
        findings.append(f"output differs from the TFLite file on {differing} of {len(probe)} probe inputs")
    return findings

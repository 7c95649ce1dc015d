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

``runtime="onnx"`` builds the twin of the QDQ ONNX export as ONNX Runtime runs it on x86-64
(its MLAS kernels' float32 requantization of additions and multiplications on uint8 codes;
convolutions as above), checked the same way on the exported file.

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

from .._keras import check_model, keras
from ..transforms._graph import UnsupportedModelError
from ..transforms._kinds import GRID_PRESERVING, only_reshapes
from . import int8_arithmetic as arith
from .integer_ops import RequantizedInput, RoundedActivation, output_grid, requantizer
from .layers import FixedFakeQuant, LoweredReLU
from .lowering import Lowered, lower
from .onnx import onnx as export_onnx
from .runtime.onnx import ONNXModel
from .runtime.tflite import TFLiteModel
from .tflite import convert_lowered

__all__ = ["IntegerTwin", "integer_twin"]

_QUANTIZERS = (FixedFakeQuant, LoweredReLU)
_ROUNDED_ONNX = ("Softmax", "Sigmoid", "Tanh")
_SUFFIXES = {"tflite": ".tflite", "onnx": ".onnx"}
#: int8 ops that compute new codes (a builtin kernel rescales them in fixed point, not as XNNPACK);
#: a softmax, sigmoid or tanh the twin rounds in float already
_REQUANTIZING = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL", "ADD", "SUB",
                 "MUL", "DIV", "AVERAGE_POOL_2D", "MEAN", "SUM", "QUANTIZE", "HARD_SWISH", "RELU", "RELU6",
                 "RELU_N1_TO_1", "LEAKY_RELU", "PRELU", "CONCATENATION")


@dataclass(frozen=True)
class IntegerTwin:
    """A model that computes what the int8 TFLite export of a RobustQuantizer model computes.

    Attributes:
        model: Keras model: forward = the file's integer arithmetic (XNNPACK, or ONNX Runtime's
            MLAS kernels), gradient = the lowered fake-quant model's (straight-through).
        lowered: the lowering it was built from (what the TFLite export converts).
        approximated: tensors computed in float and rounded onto the file's grid rather than
            with the file's integer kernel, ops of the file that XNNPACK leaves to LiteRT's
            builtin (fixed-point) kernels or that ONNX Runtime runs in float, and outputs
            that differ from the file's on probe inputs (empty: the twin is bit-exact).
        runtime: ``"tflite"`` or ``"onnx"``, the file whose arithmetic the twin computes.
    """

    model: object
    lowered: Lowered
    approximated: tuple[str, ...]
    runtime: str = "tflite"

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

    def __init__(self, runtime: str):
        self.runtime = runtime
        self.tensors: dict[str, object] = {}
        self.grids: dict[str, arith.Int8Grid] = {}
        self.pending: dict[str, tuple] = {}  # requantizing op -> (op layer, reshapes after it)
        self.approximated: list[str] = []
        self.inputs: list = []

    def requantized(self, name: str, quantizer):
        """The twin tensor of pending op ``name`` written on ``quantizer``'s grid."""
        producer, reshapes = self.pending.pop(name)
        grid, top = output_grid(quantizer)
        sources = _inbound(producer)
        op = requantizer(producer)(producer, quantizer, [self.grids[s.name] for s in sources], grid, top, reshapes,
                                    runtime=self.runtime, name=f"{producer.name}_int")
        if isinstance(op, RoundedActivation):
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
        elif requantizer(layer) is not None:
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
        grid, top = output_grid(layer)
        if source.name in self.pending:
            self.tensors[layer.name] = self.requantized(source.name, layer)
        elif type(source).__name__ == "InputLayer" and isinstance(layer, FixedFakeQuant):
            op = RequantizedInput(source, layer, [], grid, top, name=f"{layer.name}_int")
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
        grid = None if quantizer is None else output_grid(quantizer)[0]
        source_grids = {grid if s.name in self.pending else self.grids.get(s.name) for s in sources}
        if None in source_grids or len(source_grids) != 1:
            raise UnsupportedModelError(f"Layer '{layer.name}' (Concatenate) reads tensors on different or unknown "
                                        "int8 grids: the integer twin cannot follow it")
        args = [self.requantized(s.name, quantizer) if s.name in self.pending else self.tensors[s.name]
                for s in sources]
        self.tensors[layer.name] = layer(args)
        self.grids[layer.name] = source_grids.pop()


def integer_twin(model, representative=None, *, runtime: str = "tflite",
                 file: str | os.PathLike | None = None) -> IntegerTwin:
    """The integer twin of a RobustQuantizer model's int8 TFLite (or QDQ ONNX) export (module doc).

    Args:
        model: a model returned by :meth:`RobustQuantizer.quantize` (not modified); the twin
            is a snapshot: build it again after changing the model.
        representative: as for :func:`~keras_qrobust.export.lower`, for models that leave
            tensors float.
        runtime: ``"tflite"`` (LiteRT with XNNPACK) or ``"onnx"`` (ONNX Runtime on the CPU,
            x86-64 with AVX2): whose arithmetic the twin computes.
        file: the model's export for that runtime (:func:`~keras_qrobust.export.tflite` or
            :func:`~keras_qrobust.export.onnx`), to check the twin against instead of
            exporting the model again; a file of another model shows up as differing outputs
            in :attr:`IntegerTwin.approximated`.
    """
    model = check_model(model)
    if runtime not in _SUFFIXES:
        raise ValueError(f"runtime={runtime!r} is not one of {', '.join(map(repr, _SUFFIXES))}")
    if file is not None and (not Path(file).is_file() or Path(file).suffix != _SUFFIXES[runtime]):
        raise ValueError(f"file={str(file)!r} is not a {_SUFFIXES[runtime]} file: pass the path "
                         f"export.{runtime} wrote, or None")
    lowered = lower(model, representative)
    low = lowered.model
    builder = _Builder(runtime)
    for layer in low.layers:
        builder.visit(layer)
    outputs = [builder.tensors[name] for name in low.output_names]
    twin = keras.Model(builder.inputs, outputs if len(outputs) > 1 else outputs[0],
                       name=f"{model.name}_integer_twin_{runtime}")
    findings = _check_against_file(twin, model, low, representative, runtime, file)
    return IntegerTwin(twin, lowered, (*builder.approximated, *findings), runtime)


def _probe_inputs(lowered_model, representative, count: int = 64) -> np.ndarray:
    """``representative`` inputs, or inputs drawn uniformly over the input quantizer's range."""
    if representative is not None:
        return np.asarray(representative, np.float32)[:count]
    quantizer = next(layer for layer in lowered_model.layers if isinstance(layer, FixedFakeQuant))
    low, high = float(quantizer.min.numpy()), float(quantizer.max.numpy())
    shape = (count, *lowered_model.input_shape[1:])
    return np.random.default_rng(0).uniform(low, high, size=shape).astype(np.float32)


def _check_against_file(twin, model, lowered_model, representative, runtime: str, file) -> list[str]:
    """What of the exported file (``file``, else the model exported here) the twin does not
    reproduce, checked on the file itself: requantizing ops XNNPACK refuses (LiteRT's builtin
    kernels compute them in fixed point), arithmetic ONNX Runtime leaves in float, and outputs
    that differ on probe inputs (e.g. a grid the converter widens)."""
    with tempfile.TemporaryDirectory(prefix="kq_twin_") as folder:
        path = Path(file) if file is not None else Path(folder) / f"m{_SUFFIXES[runtime]}"
        if file is None and runtime == "tflite":
            path.write_bytes(convert_lowered(lowered_model))
        elif file is None:
            export_onnx(model, path, representative)
        deployed = TFLiteModel(path) if runtime == "tflite" else ONNXModel(path)
        if deployed.input_shape != tuple(lowered_model.input_shape[1:]):
            raise ValueError(f"file={str(file)!r} takes inputs of shape {deployed.input_shape}, the model "
                             f"{tuple(lowered_model.input_shape[1:])}: pass this model's export")
        if runtime == "tflite":
            findings = [f"{tensor} ({op}, builtin kernel)" for op, tensor in deployed.undelegated_ops()
                        if op in _REQUANTIZING]
        else:
            findings = [f"{tensor} ({op}, float)" for op, tensor in deployed.float_ops() if op not in _ROUNDED_ONNX]
        probe = _probe_inputs(lowered_model, representative)
        expected = deployed.predict(probe)
    found = np.asarray(twin.predict(probe, verbose=0))
    if found.size != expected.size:
        raise ValueError(f"file={str(file)!r} has outputs of shape {expected.shape[1:]}, the model "
                         f"{found.shape[1:]}: pass this model's export")
    found = found.reshape(expected.shape)
    differing = int(np.sum(np.any((found != expected).reshape(len(probe), -1), axis=1)))
    if differing:
        kind = "TFLite" if runtime == "tflite" else "ONNX"
        findings.append(f"output differs from the {kind} file on {differing} of {len(probe)} probe inputs")
    return findings

"""Rewrite: a RobustQuantizer model -> the same function with 8-bit fake quants only.

Sub-8-bit grids are lowered exactly onto int8 (see :mod:`keras_qrobust.export.layers`):
weights keep their ``2^b``-level grid inside int8 containers (codes ``k·m``, per-channel
scale ``Δ/m``), ReLU outputs are clipped so only their ``2^b`` levels are used, every
TensorQuantizer (the input, linear outputs, sums, averages, the OutputQuantizer) becomes a
fixed 8-bit fake quant with its range. Tensors that are float in the Keras model — all
but the weights of a weight-only model, the output of one quantized with
``quantize_output=False`` — get an 8-bit range calibrated on representative data; their
names are listed in :attr:`Lowered.calibrated` so nobody mistakes them for exact.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .._keras import check_model, keras
from ..layers import HardSigmoid
from ..quantization.calibration import observed_ranges
from ..quantization.integer_bias import GRID_PRESERVING as GRID_PRESERVING_LAYERS
from ..quantizers import SymmetricQuantizer
from ..quantizers.grid import int8_code_multiplier
from ..transforms._graph import Graph, UnsupportedModelError
from .layers import INT8_MAX_CODE, LOWERED_WEIGHT_LAYERS, FixedFakeQuant

__all__ = ["Lowered", "lower", "is_robust_quantized"]

GRID_PRESERVING = tuple(kind.__name__ for kind in GRID_PRESERVING_LAYERS)
_QUANTIZER_ARGS = ("kernel_quantizer", "depthwise_quantizer", "pointwise_quantizer")
_SHARED = ("trainable", "dtype")


@dataclass(frozen=True)
class Lowered:
    """A lowered model and what its lowering guarantees.

    Attributes:
        model: float tf_keras model with 8-bit fake quants (TFLite- and tf2onnx-ready).
        exact_weights: weight layers whose int8 codes are exactly the Keras model's grid.
        requantized_weights: weight layers whose kernels were not on a uniform symmetric
            grid (float, μ-law, asymmetric) and were re-quantized to 8 bits per channel.
        calibrated: tensors (by the layer producing them) given an 8-bit calibrated range.
        weight_bits: bits of each lowered weight layer's grid (8 for requantized ones).
        exact: True when nothing but the model input and output was given a calibrated
            range and every kernel kept its grid: the int8 model then computes the Keras
            model's function up to integer rounding of biases and requantization ties.
    """

    model: object
    exact_weights: tuple[str, ...]
    requantized_weights: tuple[str, ...]
    calibrated: tuple[str, ...]
    weight_bits: dict
    exact: bool


def _base_kind(entry: dict) -> str:
    kind = Graph.kind(entry)
    return kind.removeprefix("Quantized") if kind.startswith("Quantized") else kind


def is_robust_quantized(model) -> bool:
    """True when ``model`` has a layer made by :class:`~keras_qrobust.RobustQuantizer`."""
    return any(type(layer).__name__.startswith("Quantized") for layer in model.layers)


def _kernel_grid(kernel: np.ndarray, quantizer, channel_axes: tuple[int, ...],
                 float_kernel: np.ndarray | None = None) -> tuple[np.ndarray, int, bool]:
    """Per-output-channel step of a quantized kernel, its bits, and whether it is exact.

    ``float_kernel``: the kernel before quantization, whose maximum sets the step.
    """
    reduce_axes = tuple(i for i in range(kernel.ndim) if i not in channel_axes)
    channel_max = np.max(np.abs(kernel), axis=reduce_axes).reshape(-1)
    if isinstance(quantizer, SymmetricQuantizer):
        bits = quantizer.bits
        source = kernel if float_kernel is None else float_kernel
        step = np.broadcast_to(np.asarray(quantizer.scale(source.astype(np.float32)), np.float64).reshape(-1),
                               channel_max.shape).copy()
        exact = bits <= 8
    else:
        bits, step, exact = 8, channel_max / INT8_MAX_CODE, False
    step = np.where(step > 0, step, 1.0)
    if exact and bits < 8:
        # spread the b-bit codes k over the int8 range as k·m with step Δ/m: the kernel values
        # are unchanged, but the int32 bias (scale = input scale × weight scale) gets m times
        # finer, so rounding the float bias to it no longer moves outputs across levels
        step = step / int8_code_multiplier(bits)
    step = step.astype(np.float32)
    if exact:
        shaped = step.reshape([kernel.shape[i] if i in channel_axes else 1 for i in range(kernel.ndim)]) \
            if len(channel_axes) == 1 else step.reshape(kernel.shape[-2:])
        codes = kernel / shaped
        exact = bool(np.all(np.abs(codes - np.rint(codes)) < 1e-3) and np.all(np.abs(np.rint(codes)) <= 127))
    return step, bits, exact


def _shared(config: dict) -> dict:
    """The settings every layer the lowering writes keeps from the layer it replaces."""
    return {k: config[k] for k in _SHARED if k in config}


def _lowered_config(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _QUANTIZER_ARGS}


def _split_separable(graph: Graph, entry: dict, layer) -> list[tuple[str, np.ndarray, int, bool]]:
    """QuantizedSeparableConv2D -> LoweredDepthwiseConv2D + 1x1 LoweredConv2D (same name)."""
    name, config = entry["name"], entry["config"]
    kernels = {k: np.asarray(v) for k, v in layer.quantized_kernels().items()}
    quantizers = layer.kernel_quantizers
    if config.get("depth_multiplier", 1) != 1:
        raise UnsupportedModelError(f"Layer '{name}': separable convolutions export with depth_multiplier=1 only")
    dw_name = graph.unique_name(f"{name}_depthwise")
    dw_step, dw_bits, dw_exact = _kernel_grid(kernels["depthwise_kernel"], quantizers["depthwise_kernel"], (2, 3),
                                              np.asarray(layer.depthwise_kernel))
    pw_step, pw_bits, pw_exact = _kernel_grid(kernels["pointwise_kernel"], quantizers["pointwise_kernel"], (3,),
                                              np.asarray(layer.pointwise_kernel))
    graph.layers.insert(graph.layers.index(entry), {
        "class_name": "LoweredDepthwiseConv2D", "name": dw_name,
        "config": {**_shared(config), "name": dw_name,
                   "kernel_size": config["kernel_size"], "strides": config["strides"], "padding": config["padding"],
                   "depth_multiplier": 1, "dilation_rate": config["dilation_rate"], "use_bias": False},
        "inbound_nodes": entry["inbound_nodes"]})
    graph.replace(name, "LoweredConv2D", {
        **_shared(config), "filters": config["filters"], "kernel_size": [1, 1],
        "strides": [1, 1], "padding": "valid", "activation": config.get("activation", "linear"),
        "use_bias": config["use_bias"]})
    entry["inbound_nodes"] = [[[dw_name, 0, 0, {}]]]
    bias = [np.asarray(layer.bias)] if config["use_bias"] else []
    graph.weights[dw_name] = [kernels["depthwise_kernel"], dw_step]
    graph.weights[name] = [kernels["pointwise_kernel"], *bias, pw_step]
    return [(dw_name, dw_step, dw_bits, dw_exact), (name, pw_step, pw_bits, pw_exact)]


def _lower_weights(graph: Graph, model):
    layers = {layer.name: layer for layer in model.layers}
    exact, requantized, bits_of = [], [], {}
    for entry in list(graph.layers):
        kind, name = _base_kind(entry), entry["name"]
        if kind not in (*LOWERED_WEIGHT_LAYERS, "SeparableConv2D"):
            continue
        layer = layers[name]
        if entry["config"].get("activation", "linear") not in ("linear", None):
            raise UnsupportedModelError(
                f"Layer '{name}' has a fused activation; RobustQuantizer models have them split out. Quantize the "
                "model with keras_qrobust.RobustQuantizer before exporting it.")
        if kind == "SeparableConv2D":
            results = _split_separable(graph, entry, layer)
        else:
            attr = "depthwise_kernel" if kind == "DepthwiseConv2D" else "kernel"
            if kind == "DepthwiseConv2D" and entry["config"].get("depth_multiplier", 1) != 1:
                raise UnsupportedModelError(f"Layer '{name}': depthwise convolutions export with depth_multiplier=1 "
                                            "only")
            kernel = np.asarray(layer.quantized_kernels()[attr]) if hasattr(layer, "quantized_kernels") \
                else np.asarray(getattr(layer, attr))
            quantizer = layer.kernel_quantizer(attr) if hasattr(layer, "kernel_quantizer") else None
            axes = (2, 3) if kind == "DepthwiseConv2D" else (kernel.ndim - 1,)
            step, bits, is_exact = _kernel_grid(kernel, quantizer, axes, np.asarray(getattr(layer, attr)))
            graph.replace(name, LOWERED_WEIGHT_LAYERS[kind].__name__,
                          _lowered_config(entry["config"]))
            bias = [np.asarray(layer.bias)] if entry["config"].get("use_bias") else []
            graph.weights[name] = [kernel, *bias, step]
            results = [(name, step, bits, is_exact)]
        for lowered_name, _, bits, is_exact in results:
            (exact if is_exact else requantized).append(lowered_name)
            bits_of[lowered_name] = bits if is_exact else 8
    return exact, requantized, bits_of


def _lower_relus(graph: Graph, model) -> None:
    layers = {layer.name: layer for layer in model.layers}
    for entry in list(graph.layers):
        if _base_kind(entry) != "ReLU" or not Graph.kind(entry).startswith("Quantized"):
            continue
        layer = layers[entry["name"]]
        bits = layer.activation_quantizer.bits
        if bits > 8:
            continue  # stays float here; gets a calibrated 8-bit range below
        step = layer.step
        graph.replace(entry["name"], "LoweredReLU", {**_shared(entry["config"]), "bits": bits})
        graph.weights[entry["name"]] = [np.float32(step)]


def _lower_hard_sigmoids(graph: Graph, model) -> None:
    """HardSigmoid -> a 1x1 depthwise convolution, weight 1/6 and bias ``b``, whose output
    grid (its TensorQuantizer's ``[0, w]``) does the clipping: the one requantization the
    Keras model rounds at (an ADD of 3 would requantize with XNNPACK's fixed-point scale
    ratios, imprecise near ties and wrong beyond a ratio of 256). Without a TensorQuantizer
    after it, a ReLU with ``max_value=1`` clips instead. A (batch, features) input is
    reshaped to (batch, 1, 1, features) and back."""
    layers = {layer.name: layer for layer in model.layers}
    for entry in list(graph.iter_layers(("HardSigmoid",))):
        name, config = entry["name"], entry["config"]
        shared = _shared(config)
        layer = layers[name]
        shape = tuple(layer.input_shape)
        channels = int(shape[-1])
        if len(shape) not in (2, 4):
            raise UnsupportedModelError(f"Layer '{name}': a hard sigmoid exports on (batch, features) or "
                                        f"(batch, height, width, channels) tensors, got {shape}")
        quantizer = _only_quantizer(graph, name)
        if len(shape) == 2:
            reshape = graph.unique_name(f"{name}_to_map")
            ref = entry["inbound_nodes"][0][0]
            graph.layers.insert(graph.layers.index(entry), {
                "class_name": "Reshape", "name": reshape,
                "config": {**shared, "name": reshape, "target_shape": [1, 1, channels]},
                "inbound_nodes": [[list(ref)]]})
            entry["inbound_nodes"][0][0] = [reshape, 0, 0, {}]
        graph.replace(name, "LoweredDepthwiseConv2D", {
            **shared, "kernel_size": [1, 1], "strides": [1, 1], "padding": "valid", "depth_multiplier": 1,
            "use_bias": True})
        graph.weights[name] = [np.full((1, 1, channels, 1), HardSigmoid.SLOPE, np.float32),
                               np.full((channels,), float(layer.bias.numpy()), np.float32),
                               np.full((channels,), HardSigmoid.SLOPE / INT8_MAX_CODE, np.float32)]
        if quantizer is None:
            graph.insert_after(name, "ReLU", {**shared, "name": f"{name}_clip", "max_value": 1.0,
                                              "negative_slope": 0.0, "threshold": 0.0})
        if len(shape) == 2:  # after its quantizer, which then reads the convolution
            graph.insert_after(quantizer or name, "Reshape", {**shared, "name": f"{name}_to_features",
                                                              "target_shape": [channels]})


def _same_padding_adds_nothing(size: int, pool: int, stride: int) -> bool:
    return max((-(-size // stride) - 1) * stride + pool - size, 0) == 0


def _constant_codes() -> Iterator[int]:
    """Int8 codes 127, 126, ..., 64, 127, ... for the weights of the convolutions the
    lowering adds. Each weight ``v`` is stored as code ``c`` with step ``v/c`` (exact for any
    ``c``); different codes keep the converter from merging identical constants: XNNPACK left
    equal poolings, whose kernel and (zero) bias tensors were then shared, to TFLite's
    builtin kernel, which rounds differently (found on MobileNetV3's squeeze-excite poolings)."""
    return itertools.cycle(range(INT8_MAX_CODE, 63, -1))


def _lower_average_pooling(graph: Graph, model, codes: Iterator[int]) -> None:
    """AveragePooling2D and GlobalAveragePooling2D -> a depthwise convolution with every
    weight ``1/count``.

    The int8 average pool keeps its input's scale and rounds the mean of the input codes
    (half away from zero in the reference kernel, half to even in XNNPACK); the Keras model
    rounds the mean onto its TensorQuantizer's grid. As a convolution the integer graph
    requantizes the sum onto that grid like any other convolution: the weight ``1/count``
    is exact in int8 (code ``c``, step ``1/(c·count)``, :func:`_constant_codes`).
    """
    layers = {layer.name: layer for layer in model.layers}
    for entry in list(graph.iter_layers(("AveragePooling2D", "GlobalAveragePooling2D"))):
        name, config = entry["name"], entry["config"]
        shape = layers[name].input_shape
        channels = int(shape[-1])
        if config.get("data_format", "channels_last") != "channels_last":
            raise UnsupportedModelError(f"Layer '{name}': average pooling exports with channels_last data only")
        if entry["class_name"] == "GlobalAveragePooling2D":
            # over the whole map: XNNPACK's int8 MEAN rounds differently, and over a 1x1 map the
            # converter drops it and requantizes with its imprecise QUANTIZE op
            _write_mean_convolution(graph, name, tuple(int(n) for n in shape[1:3]), (1, 1), "valid", channels,
                                    next(codes))
            if not config.get("keepdims", False):  # after its quantizer, which then reads the convolution
                graph.insert_after(_only_quantizer(graph, name) or name, "Reshape",
                                   {"name": f"{name}_flat", "target_shape": [channels], **_shared(config)})
            continue
        pool, strides = tuple(config["pool_size"]), tuple(config["strides"] or config["pool_size"])
        if config["padding"] == "same" and not all(
                _same_padding_adds_nothing(n, k, st) for n, k, st in zip(shape[1:3], pool, strides)):
            raise UnsupportedModelError(
                f"Layer '{name}': average pooling with padding='same' over a border divides by a smaller count "
                "there, which no int8 kernel does exactly; use padding='valid' or a size the pool divides")
        _write_mean_convolution(graph, name, pool, strides, config["padding"], channels, next(codes))


def _write_mean_convolution(graph: Graph, name: str, pool: tuple, strides: tuple, padding: str, channels: int,
                            code: int) -> None:
    """Replace layer ``name`` by a depthwise convolution averaging ``pool`` windows, its
    weight ``1/count`` stored as int8 code ``code``."""
    count = pool[0] * pool[1]
    graph.replace(name, "LoweredDepthwiseConv2D", {
        **_shared(graph.layer(name)["config"]), "kernel_size": list(pool), "strides": list(strides),
        "padding": padding, "depth_multiplier": 1, "use_bias": False})
    graph.weights[name] = [np.full((*pool, channels, 1), 1.0 / count, np.float32),
                           np.full((channels,), 1.0 / (count * code), np.float32)]


def _only_quantizer(graph: Graph, name: str) -> str | None:
    """The TensorQuantizer (or OutputQuantizer) that alone reads layer ``name``, if any."""
    consumers = graph.consumers(name)
    if len(consumers) == 1 and _base_kind(graph.layer(consumers[0])) in ("TensorQuantizer", "OutputQuantizer"):
        return consumers[0]
    return None


def _requantize_concatenated(graph: Graph, model, codes: Iterator[int]) -> None:
    """Put a 1x1 identity depthwise convolution between a concatenation and each of its
    inputs that is on a grid of its own (a ReLU's, a TensorQuantizer's, the input's).

    The int8 concatenation stores every input on its output's grid, so the converter
    inserts a QUANTIZE op for such an input; XNNPACK runs that op with an 8-bit fixed-point
    multiplier (the ratio of the two scales to 1/256), which moves values by a level. The
    convolution requantizes with the exact scale ratio, like every other convolution, and
    writes the concatenation's grid directly (weight 1 is exact: code ``c``, step ``1/c``).
    """
    shapes = {layer.name: layer.output_shape for layer in model.layers}
    for entry in list(graph.iter_layers(("Concatenate",))):
        refs = entry["inbound_nodes"][0]
        for position, ref in enumerate(refs):
            source = graph.layer(ref[0])
            kind, shape = _base_kind(source), shapes.get(ref[0])
            written = (kind.startswith("Lowered") and kind != "LoweredReLU") or kind == "Add"
            if written or shape is None or len(shape) != 4:
                continue  # written on the concatenation's grid directly (or not a feature map)
            name = graph.unique_name(f"{entry['name']}_requantize_{position}")
            graph.layers.insert(graph.layers.index(entry), {
                "class_name": "LoweredDepthwiseConv2D", "name": name,
                "config": {**_shared(entry["config"]), "name": name,
                           "kernel_size": [1, 1], "strides": [1, 1], "padding": "valid", "depth_multiplier": 1,
                           "use_bias": False},
                "inbound_nodes": [[list(ref)]]})
            refs[position] = [name, 0, 0, {}]
            channels = int(shape[-1])
            graph.weights[name] = [np.ones((1, 1, channels, 1), np.float32),
                                   np.full((channels,), 1.0 / next(codes), np.float32)]


def _is_relu(entry: dict) -> bool:
    kind = Graph.kind(entry)
    if kind == "LoweredReLU":
        return True
    config = entry["config"]
    if kind == "ReLU":
        return not config.get("negative_slope") and not config.get("threshold") and config.get("max_value") is None
    return kind == "Activation" and config.get("activation") == "relu"


def _insert_fake_quants(graph: Graph) -> list[str]:
    """Add a FixedFakeQuant after every tensor not already on an int8 grid; return their sources."""
    on_grid: set[str] = set()
    sources = []
    for entry in list(graph.layers):
        name, kind = entry["name"], Graph.kind(entry)
        inputs = graph.inbound_names(entry)
        consumers = [graph.layer(c) for c in graph.consumers(name)]
        if kind == "LoweredReLU" or kind == "FixedFakeQuant":
            on_grid.add(name)
            continue
        if kind in GRID_PRESERVING and inputs and all(i in on_grid for i in inputs):
            on_grid.add(name)
            continue
        if graph.reaches_only(name, ("FixedFakeQuant", "Concatenate")):
            continue  # the fake quant after it (or its reshapes, or the concatenation) carries the range
        if (kind.startswith("Lowered") or kind == "Add") and consumers and not graph.is_output(name) and all(
                _is_relu(c) for c in consumers):
            continue  # fused into the convolution or sum: the ReLU after it carries the range
        fq_name = graph.insert_after(name, "FixedFakeQuant", {"name": f"{name}_fq", "trainable": False,
                                                              "dtype": "float32"})
        on_grid.add(fq_name)
        sources.append(name)
    return sources


def _preset_tensor_ranges(graph: Graph) -> set[str]:
    """Each TensorQuantizer (and OutputQuantizer) becomes a FixedFakeQuant with the same range."""
    preset = set()
    for entry in list(graph.layers):
        if Graph.kind(entry) in ("TensorQuantizer", "OutputQuantizer"):
            graph.replace(entry["name"], "FixedFakeQuant", _shared(entry["config"]))
            preset.add(entry["name"])
    return preset


def _calibrate(model, representative: np.ndarray, batch_size: int, preset: set[str]) -> None:
    output_names = set(model.output_names)
    fake_quants = [layer for layer in model.layers if isinstance(layer, FixedFakeQuant) and layer.name not in preset]
    for layer in fake_quants:
        layer.enabled = False
    # class scores only need their top values: the output range starts at the lowest top
    # score (every argmax stays unclipped), which makes its int8 steps much finer
    at_outputs = {i for i, layer in enumerate(fake_quants) if layer.name in output_names}
    try:
        probe = keras.Model(model.inputs, [layer.input for layer in fake_quants])
        ranges = observed_ranges(probe, representative, batch_size, at_outputs)
    finally:
        for layer in fake_quants:
            layer.enabled = True
    for layer, (low, high) in zip(fake_quants, ranges):
        layer.set_range(low, high)


def lower(model, representative=None, *, batch_size: int = 256) -> Lowered:
    """Lower a RobustQuantizer model to 8-bit fake quants (exact for its sub-8-bit grids).

    Args:
        model: a model returned by :meth:`RobustQuantizer.quantize` (not modified).
        representative: inputs that calibrate the ranges of tensors that are float in
            ``model`` (a weight-only model's activations, an unquantized output); a few
            hundred training inputs. Not needed when ``model`` quantizes every tensor.
    """
    model = check_model(model)
    if not is_robust_quantized(model):
        raise UnsupportedModelError(
            f"Model '{model.name}' has no keras_qrobust quantized layer; lower() takes a model made by "
            "RobustQuantizer.quantize (export a float or tfmot model with export.tflite / export.onnx directly).")
    if representative is not None:
        representative = np.asarray(representative, np.float32)
        if representative.ndim < 2 or representative.shape[1:] != tuple(model.input_shape[1:]) or \
                not len(representative):
            raise ValueError(f"representative inputs must have shape (n, {', '.join(map(str, model.input_shape[1:]))})"
                             f", got {representative.shape}")
    graph = Graph.from_model(model)
    ends = {ref[0] for ref in graph.config["output_layers"] + graph.config["input_layers"]}
    exact, requantized, bits = _lower_weights(graph, model)
    _lower_relus(graph, model)
    _lower_hard_sigmoids(graph, model)
    codes = _constant_codes()
    _lower_average_pooling(graph, model, codes)
    _requantize_concatenated(graph, model, codes)
    preset = _preset_tensor_ranges(graph)
    calibrated = _insert_fake_quants(graph)
    if calibrated and representative is None:
        raise ValueError(f"Model '{model.name}' leaves {', '.join(calibrated)} float: pass representative inputs "
                         "(e.g. representative=x_train[:512]) to calibrate their int8 ranges")
    graph.config["name"] = f"{model.name}_lowered"
    lowered = graph.to_model()
    if calibrated:
        _calibrate(lowered, representative, batch_size, preset)
    is_exact = not requantized and set(calibrated) <= ends
    return Lowered(lowered, tuple(exact), tuple(requantized), tuple(calibrated), bits, is_exact)


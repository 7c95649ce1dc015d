"""Carry a RobustQuantizer model's weight grids and activation ranges into quantizeml.

quantizeml (and so the Akida ``.fbz``) quantizes weights symmetrically per output channel with
the step ``Δw = max|w|/(2^(b-1) - 1)``, and activations as fixed point: a ``b``-bit unsigned
code ``n`` stands for ``n·2^-f``. A :class:`~keras_qrobust.layers.QuantizedReLU` uses the
step ``Δ_L = max_L/(2^a - 1)`` — any float. Requantizing our float model with quantizeml
(what :func:`keras_qrobust.export.akida` does for a float model) therefore computes another
function (benchmarks/akida_fidelity.py measures both ways against the attacked model).

ReLU is positively homogeneous, so the network can be rescaled without changing its codes.
With ``a_L = Δ_L·n_L`` the ReLU output of layer ``L``, ``z_L = W_L a_{L-1} + b_L`` and
``n_L = round(clip(z_L/Δ_L, 0, 2^a - 1))``, the layer

    W'_L = W_L·Δ_{L-1}/Δ_L,   b'_L = b_L/Δ_L,   ReLU(max_value = 2^a - 1)

computes ``n_L`` itself: activations on the integer grid (fixed point with ``f = 0``, which
quantizeml represents exactly). ``Δ_0 = 1`` for the model input (floats in [0, 1], the
uint8 pixel grid, as our input quantizer) and ``Δ = 1`` for the scores of the last layer. A
per-tensor factor scales every per-channel step of ``W_L`` alike, so the weight codes are
unchanged and quantizeml's max-based per-channel quantizer finds them again (checked,
:func:`apply_grids`). quantizeml's calibration would move the ranges (its cross-layer
equalization rescales channels and the next layer's weights): :func:`apply_grids` sets
them back. What remains different (docs/limits.md): Akida's integer arithmetic — each
accumulator times its per-channel scale quantized to 8 bits (``scale_bits=8``), fixed-point
biases — against the Keras model's float products, so a code within a few hundredths of a
step of a rounding tie can round the other way; and the ``.fbz`` returns unclipped scores
where an OutputQuantizer rounds them onto 8 bits (guard quantizes without one for Akida).

Supported: chains of Conv2D / DepthwiseConv2D / Dense + QuantizedReLU with MaxPooling2D,
Flatten, Reshape, Dropout and ZeroPadding2D between them, ending in a weight layer (the
scores). A tensor the int8 model stores at 8 bits (TensorQuantizer after an Add, an average,
a linear layer) and μ-law or 3-, 5-, 6- or 7-bit weights (not a sub-grid of Akida's 4- or
8-bit grid) have no exact Akida counterpart: :class:`~keras_qrobust.transforms.UnsupportedModelError`
names them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..layers import QuantizedReLU, TensorQuantizer
from ..quantizers.grid import activation_levels
from ..transforms._graph import Graph, UnsupportedModelError

__all__ = ["CarriedGrids", "carried_grids", "is_robust_quantized", "apply_grids", "CARRIED_WEIGHT_BITS"]

#: weight bits whose grid is a sub-grid of Akida's 4- or 8-bit one (codes ±1 become ±7 or ±127)
CARRIED_WEIGHT_BITS = (1, 2, 4, 8)
_WEIGHT_LAYERS = {"QuantizedConv2D": "Conv2D", "QuantizedDepthwiseConv2D": "DepthwiseConv2D",
                  "QuantizedDense": "Dense"}
_KEEP_SCALE = ("MaxPooling2D", "Flatten", "Reshape", "Dropout", "ZeroPadding2D", "InputLayer")
_QUANTIZER_ARGS = ("kernel_quantizer", "depthwise_quantizer")


@dataclass(frozen=True)
class CarriedGrids:
    """A float model whose quantizeml quantization reproduces a RobustQuantizer model's codes.

    ``model`` takes floats in [0, 1] (as the quantized model); ``weight_bits`` and
    ``input_weight_bits`` are the Akida containers (4 or 8), ``activation_bits`` the ReLU bits;
    ``kernels`` the rescaled float kernels by layer name, whose codes quantizeml must find again.
    """

    model: object
    weight_bits: int
    input_weight_bits: int
    activation_bits: int
    kernels: dict = field(repr=False)
    relus: tuple = ()


def is_robust_quantized(model) -> bool:
    """True for a model made by :class:`~keras_qrobust.RobustQuantizer` (or its fake-quant layers)."""
    return any(type(layer).__module__.startswith("keras_qrobust.") and
               (type(layer).__name__ in _WEIGHT_LAYERS or isinstance(layer, (QuantizedReLU, TensorQuantizer))
                or type(layer).__name__ in ("QuantizedSeparableConv2D", "MuLawDense"))
               for layer in model.layers)


def _container(bits: int, layer: str) -> int:
    if bits not in CARRIED_WEIGHT_BITS:
        raise UnsupportedModelError(
            f"layer '{layer}' has {bits}-bit weights: Akida stores 4- or 8-bit weights and a {bits}-bit grid is not "
            f"a sub-grid of either, so the .fbz would compute another function. Quantize with weight bits in "
            f"{', '.join(map(str, CARRIED_WEIGHT_BITS))} for Akida.")
    return 4 if bits <= 4 else 8


def _weight_bits(layer) -> int:
    quantizers = [q for q in layer.quantizers.values() if q is not None]
    if len(quantizers) != 1 or type(quantizers[0]).__name__ != "SymmetricQuantizer":
        found = ", ".join(str(q) for q in quantizers) or "no weight quantizer"
        raise UnsupportedModelError(
            f"layer '{layer.name}' has {found}; Akida's weights are symmetric per-channel grids: quantize it "
            "with RobustQuantizer's default (per_axis=True, no μ-law) for Akida.")
    quantizer = quantizers[0]
    if not quantizer.per_axis:
        raise UnsupportedModelError(
            f"layer '{layer.name}' has per-tensor weight steps; Akida's are per output channel, so its codes would "
            "change. Quantize with per_axis=True for Akida.")
    return int(quantizer.bits)


def _kind(model, name: str) -> str:
    return type(model.get_layer(name)).__name__


def _relu_after(graph: Graph, model, name: str):
    """The QuantizedReLU reading weight layer ``name``, or None when ``name`` gives the scores."""
    consumers = graph.consumers(name)
    if not consumers and graph.is_output(name):
        return None
    # a max pooling between the layer and its ReLU commutes with the scaling (cnn2snn's Conv + Pool + ReLU)
    while len(consumers) == 1 and _kind(model, consumers[0]) == "MaxPooling2D":
        consumers = graph.consumers(consumers[0])
    if len(consumers) == 1:
        layer = model.get_layer(consumers[0])
        if isinstance(layer, QuantizedReLU):
            return layer
        if _kind(model, consumers[0]) == "OutputQuantizer" and graph.is_output(consumers[0]):
            return None
    raise UnsupportedModelError(
        f"layer '{name}' feeds {', '.join(consumers) or 'nothing'}; carrying the grids to Akida needs each weight "
        "layer read by one QuantizedReLU, or to be the last layer. Export the float model instead "
        "(kq.export.akida(float_model, ...): quantizeml then requantizes it, computing another function).")


def carried_grids(model) -> CarriedGrids:
    """The float model quantizeml turns into ``model``'s integer function (see the module docstring)."""
    graph = Graph.from_model(model)
    steps: dict[str, float] = {}  # tensor (layer name) -> Δ: a value v of the rescaled model stands for v·Δ
    kernels: dict[str, np.ndarray] = {}
    input_bits, other_bits, activation_bits, relus = set(), set(), set(), []
    for entry in list(graph.layers):
        name, kind = entry["name"], entry["class_name"]
        inbound = graph.inbound_names(entry)
        source = steps.get(inbound[0], 1.0) if inbound else 1.0
        layer = model.get_layer(name)
        if kind in _KEEP_SCALE:
            steps[name] = source
        elif type(layer).__name__ == "OutputQuantizer" and graph.is_output(name):
            graph.remove_passthrough(name)  # the .fbz returns the unclipped scores
        elif isinstance(layer, TensorQuantizer) and inbound and _kind(model, inbound[0]) == "InputLayer":
            low, high = float(layer.min.numpy()), float(layer.max.numpy())
            if abs(low) > 1e-6 or abs(high - 1.0) > 1e-6:
                raise UnsupportedModelError(
                    f"the input quantizer '{name}' has the range [{low:g}, {high:g}]; Akida reads uint8 pixels "
                    "x·255, the grid of [0, 1]. Quantize a model that takes inputs in [0, 1].")
            graph.remove_passthrough(name)
            steps[inbound[0]] = 1.0
        elif kind in _WEIGHT_LAYERS:
            bits = _weight_bits(layer)
            reads_input = _kind(model, inbound[0]) in ("InputLayer", "TensorQuantizer")
            (input_bits if reads_input else other_bits).add((_container(bits, name), name))
            relu = _relu_after(graph, model, name)
            out_step = 1.0 if relu is None else relu.step
            (kernel,) = (np.asarray(k) for k in layer.quantized_kernels().values())
            config = {k: v for k, v in entry["config"].items() if k not in _QUANTIZER_ARGS}
            weights = [kernel * (source / out_step)]
            if config.get("use_bias", True):
                weights.append(np.asarray(layer.bias) / out_step)
            graph.replace(name, _WEIGHT_LAYERS[kind], config)
            graph.weights[name] = [w.astype(np.float32) for w in weights]
            kernels[name] = weights[0].astype(np.float32)
            steps[name] = out_step
        elif isinstance(layer, QuantizedReLU):
            if not np.isclose(source, layer.step, rtol=1e-6):  # not the ReLU its weight layer was scaled for
                raise UnsupportedModelError(
                    f"the QuantizedReLU '{name}' does not follow a weight layer (only max pooling may stand between "
                    "them); carrying the grids to Akida needs Conv2D/DepthwiseConv2D/Dense + ReLU blocks. Export the "
                    "float model instead (kq.export.akida(float_model, ...)), which quantizeml requantizes.")
            bits = int(layer.activation_quantizer.bits)
            activation_bits.add(bits)
            graph.replace(name, "ReLU", {"max_value": float(activation_levels(bits)), "trainable": False,
                                         "dtype": entry["config"].get("dtype", "float32")})
            graph.weights[name] = []
            steps[name] = layer.step  # codes n stand for n·Δ
            relus.append(name)
        else:
            raise UnsupportedModelError(
                f"layer '{name}' ({kind}) has no exact Akida counterpart when carrying the grids (supported: "
                f"Conv2D, DepthwiseConv2D, Dense + QuantizedReLU, {', '.join(_KEEP_SCALE[:-1])}). Export the float "
                "model instead (kq.export.akida(float_model, ...)), which quantizeml requantizes.")
    for group, what in ((input_bits, "reading the input"), (other_bits, "after the first")):
        if len({bits for bits, _ in group}) > 1:
            listed = ", ".join(f"{n} ({b}-bit container)" for b, n in sorted(group))
            raise UnsupportedModelError(f"the weight layers {what} need different Akida weight widths ({listed}); "
                                        "Akida export takes one width for them. Quantize them with one width.")
    if len(activation_bits) != 1:
        raise UnsupportedModelError("carrying the grids to Akida needs QuantizedReLU activations of one bit width, "
                                    f"found {sorted(activation_bits) or 'none'}.")
    (container,) = {b for b, _ in other_bits} or {4}
    (first,) = {b for b, _ in input_bits} or {8}
    graph.config["name"] = f"{model.name}_for_akida"
    return CarriedGrids(graph.to_model(), container, first, activation_bits.pop(), kernels, tuple(relus))


def apply_grids(qmodel, grids: CarriedGrids) -> None:
    """Undo quantizeml's calibration where it moved our grids (in place) and check the codes.

    Sets every ReLU output range to ``2^a - 1`` (fixed point, ``f = 0``) with no cross-layer
    equalization, restores the kernels and biases that equalization divided, and checks that
    quantizeml's weight quantizer reproduces every kernel (our codes): raises
    UnsupportedModelError naming the layer otherwise.
    """
    top = float(activation_levels(grids.activation_bits))
    for name in grids.relus:
        quantizer = qmodel.get_layer(name).out_quantizer
        quantizer.range_max.assign(np.full(quantizer.range_max.shape, top, np.float32))
        quantizer.rescaling_rate.assign(np.ones(quantizer.rescaling_rate.shape, np.float32))
    for name, kernel in grids.kernels.items():
        layer = qmodel.get_layer(name)
        weights = layer.get_weights()
        source = grids.model.get_layer(name).get_weights()
        layer.set_weights(source + weights[len(source):])
        found = np.asarray(layer.weight_quantizer(kernel).to_float())
        error = float(np.max(np.abs(found - kernel)))
        if error > 1e-5 * max(float(np.max(np.abs(kernel))), 1e-12):
            raise UnsupportedModelError(
                f"quantizeml quantizes the weights of '{name}' onto another grid (max difference {error:.3g}); "
                "Akida would compute another function. Quantize it with 4- or 8-bit per-channel weights.")

"""Round the biases of a quantized model onto the int32 grid that int8 deployment uses.

An integer kernel computes ``acc = Σ j·k + b_int`` with input codes ``j`` (step ``Δa``) and
weight codes ``k`` (step ``Δw``), so the bias it adds is ``b_int·Δa·Δw``: a float bias is
rounded to that grid when the model is exported, which at 2-4 bits moves outputs across
activation levels. :func:`round_biases` applies the same rounding in the Keras model, so the
fake-quant model is the function the int8 TFLite/ONNX artifact computes.

The grid is the one of keras_qrobust's int8 lowering (:mod:`keras_qrobust.export.lowering`):
``b``-bit weight codes ``k`` are stored as ``k·m`` with ``m = ⌊127/(2^(b-1) - 1)⌋`` and
step ``Δw/m``, so the bias step is ``Δa·Δw/m`` — fine enough that the rounding changes
accuracy by far less than the weight quantization itself.

Only layers whose input is on a known grid — a quantized ReLU's or a TensorQuantizer's
(possibly through max pooling, flattening, padding or dropout) — have a known ``Δa``; the
others keep float biases. A TensorQuantizer's grid has a zero point, which the integer
kernel subtracts from the input codes: the bias step is the same ``Δa·Δw/m``.
"""

from __future__ import annotations

import numpy as np

from .._keras import keras  # tf_keras, through the entry module
from ..layers import HardSigmoid, QuantizedKernelsMixin, QuantizedReLU, TensorQuantizer
from ..quantizers import SymmetricQuantizer
from ..quantizers.grid import int8_code_multiplier
from ..transforms._kinds import GRID_PRESERVING as GRID_PRESERVING_KINDS

__all__ = ["GRID_PRESERVING", "int8_code_multiplier", "grid_source", "inbound_layers", "input_step", "bias_step",
           "round_bias", "round_biases"]

#: layers whose output values are values of their input (int8 ops that keep the input scale)
GRID_PRESERVING = tuple(getattr(keras.layers, name) for name in GRID_PRESERVING_KINDS)


def inbound_layers(layer) -> list:
    nodes = getattr(layer, "_inbound_nodes", [])
    if not nodes:
        return []
    inbound = nodes[0].inbound_layers
    return list(inbound) if isinstance(inbound, (list, tuple)) else [inbound]


def grid_source(layer) -> tuple[object, int]:
    """The layer whose grid ``layer``'s input is on (through max pooling, flattening, padding
    or dropout) and its number of levels above zero; ``(None, 0)`` for a float input."""
    inbound = inbound_layers(layer)
    while len(inbound) == 1:
        source = inbound[0]
        if isinstance(source, TensorQuantizer):
            return source, 255
        if isinstance(source, QuantizedReLU):
            return (source, source.levels) if source.activation_quantizer.bits <= 8 else (None, 0)
        if not isinstance(source, GRID_PRESERVING):
            return None, 0
        inbound = inbound_layers(source)
    return None, 0


def input_step(layer) -> float | None:
    """The step ``Δa`` of the grid feeding ``layer`` (None if its input is float)."""
    source, _ = grid_source(layer)
    if isinstance(source, (TensorQuantizer, QuantizedReLU)):
        return source.step
    return None


def bias_step(layer) -> np.ndarray | None:
    """Per-output-channel bias step ``Δa·Δw/m`` of a quantized weight layer (``Δa/(6·127)``
    for a HardSigmoid, a 1x1 depthwise convolution with weight 1/6 in int8), or None."""
    if isinstance(layer, HardSigmoid):
        step_in = input_step(layer)
        return None if step_in is None else np.full(tuple(layer.bias.shape), step_in * layer.SLOPE / 127)
    if not isinstance(layer, QuantizedKernelsMixin) or not getattr(layer, "use_bias", False):
        return None
    attr = "pointwise_kernel" if hasattr(layer, "pointwise_kernel") else (
        "depthwise_kernel" if hasattr(layer, "depthwise_kernel") else "kernel")
    if attr == "pointwise_kernel":
        return None  # its input is the float depthwise output
    quantizer = layer.kernel_quantizer(attr)
    step_in = input_step(layer)
    if step_in is None or not isinstance(quantizer, SymmetricQuantizer) or quantizer.bits > 8:
        return None
    kernel = getattr(layer, attr)
    weight_step = np.asarray(quantizer.scale(kernel), np.float64).reshape(-1)
    channels = int(layer.bias.shape[0])
    weight_step = np.broadcast_to(weight_step, (channels,)) if weight_step.size == 1 else weight_step
    return step_in * weight_step / int8_code_multiplier(quantizer.bits)


def round_bias(layer) -> bool:
    """Round ``layer``'s bias onto its integer grid, in place, if it has one; True if it did."""
    step = bias_step(layer)
    if step is None:
        return False
    safe = np.where(step > 0, step, 1.0)
    bias = np.asarray(layer.bias.numpy(), np.float64)
    layer.bias.assign(np.where(step > 0, np.rint(bias / safe) * safe, bias).astype(np.float32))
    return True


def round_biases(model) -> list[str]:
    """Round every bias that has an integer grid onto it, in place; return the layer names."""
    return [layer.name for layer in model.layers if round_bias(layer)]

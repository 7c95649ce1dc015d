"""#params and the bytes of the parameters at their bit width; quantizer state is not a parameter."""

from __future__ import annotations

import numpy as np

from ..._keras import keras, tf
from ...layers import TensorQuantizer
from ._common import _check_graph_model

__all__ = ["count_params", "weight_bytes"]


def _quantizer_state_ids(model) -> set[int]:
    """ids of the variables that are quantizer state, not network parameters: the ranges
    and flags of keras_qrobust Quantized* layers and the extra weights of tfmot wrappers."""
    ids: set[int] = set()

    def visit(layer) -> None:
        if isinstance(layer, keras.Model):
            for inner in layer.layers:
                visit(inner)
            return
        if isinstance(layer, keras.layers.Wrapper):
            inner_ids = {id(w) for w in layer.layer.weights}
            ids.update(id(w) for w in layer.weights if id(w) not in inner_ids)
            visit(layer.layer)
            return
        if isinstance(layer, TensorQuantizer):
            ids.update(id(w) for w in layer.weights)
            return
        state = getattr(layer, "_quantizer_weights", None)  # a tracked _DictWrapper, not a Mapping
        if hasattr(state, "values"):
            for value in state.values():
                for variable in (value.values() if hasattr(value, "values") else [value]):
                    if isinstance(variable, tf.Variable):
                        ids.add(id(variable))

    for layer in model.layers:
        visit(layer)
    return ids


def count_params(keras_model) -> int:
    """Number of scalars in the model's weights, trainable and non-trainable (BatchNorm
    statistics included), as ``model.count_params()``; quantizer state (the calibrated
    ranges and flags of ``Quantized*`` layers, tfmot wrapper min/max/step variables) is
    not a network parameter and is left out."""
    model = _check_graph_model(keras_model, "count_params")
    return sum(int(np.prod(w.shape.as_list(), dtype=np.int64)) for w in _parameters(model))


def _parameters(model):
    """The model's weights, each once, without quantizer state."""
    excluded = _quantizer_state_ids(model)
    seen: set[int] = set()
    for weight in model.weights:
        if id(weight) not in seen and id(weight) not in excluded:
            seen.add(id(weight))
            yield weight


def weight_bytes(keras_model) -> int:
    """Bytes of the network's parameters stored at their bit width: a kernel a ``Quantized*``
    layer quantizes to b bits takes ⌈n·b/8⌉ bytes (packed, as INT4 ONNX stores ≤ 4 bits; TFLite
    keeps int8 containers, see docs/limits.md), every other parameter (biases on their int32
    grid, float layers) its dtype's size. Quantizer state is not counted (as :func:`count_params`)."""
    model = _check_graph_model(keras_model, "weight_bytes")
    packed: dict[int, int] = {}
    for layer in model.layers:
        for attr, argument in getattr(layer, "kernel_quantizer_args", {}).items():
            bits = getattr(layer.quantizers[argument], "bits", None)
            if bits is not None:
                packed[id(getattr(layer, attr))] = int(bits)
    total = 0
    for weight in _parameters(model):
        count = int(np.prod(weight.shape.as_list(), dtype=np.int64))
        bits = packed.get(id(weight))
        total += -(-count * bits // 8) if bits else count * weight.dtype.size
    return total


def _keras_weight_bytes(model) -> int:
    seen: set[int] = set()
    total = 0
    for weight in model.weights:
        if id(weight) not in seen:
            seen.add(id(weight))
            total += int(np.prod(weight.shape.as_list(), dtype=np.int64)) * weight.dtype.size
    return total

"""Rewrite: a TensorQuantizer at every tensor the int8 model stores that nothing else rounds.

A full-integer model stores the output of every op as int8 codes on a grid of its own. A
RobustQuantizer model already rounds the outputs of its QuantizedReLUs; every other tensor
the integer graph stores — the model input, a weight layer's linear output (a MobileNetV2
projection, the logits before a softmax), a residual sum, an average, a concatenation, a
non-ReLU activation — gets an 8-bit :class:`~keras_qrobust.layers.TensorQuantizer` here, so
the Keras model rounds where the integer graph rounds. Calibrated, its range is the one the
exported graph uses, and nothing is left for the exporter to measure.

Not marked:

* outputs of layers that only move, drop or pick values of their input (max pooling,
  padding, reshapes, dropout): they stay on their input's grid, as the int8 ops keep the
  input's scale;
* a weight layer or an ``Add`` whose consumers are all (at most 8-bit) QuantizedReLUs:
  the integer runtime fuses the ReLU into the op, which writes the ReLU's grid directly;
* a tensor followed only by a TensorQuantizer (e.g. the OutputQuantizer), also through
  reshapes (flatten, reshape, dropout, a linear activation): the converter writes it on that
  quantizer's grid directly (with a quantizer before the reshape too, the Keras model would
  round twice where the file, which keeps the first grid, rounds once);
* a tensor read only by concatenations: the int8 concatenation stores all its inputs on
  its output's grid, and the converter writes such a producer's output on that grid
  directly, so the concatenation's quantizer is the only rounding;
* a model output nothing quantizes (``quantize_output=False``): it stays float.
"""

from __future__ import annotations

from .. import quantizers as qz
from ._graph import Graph, graph_rewrite
from ._kinds import GRID_PRESERVING, QUANTIZED_WEIGHT_LAYERS

__all__ = ["quantize_tensors"]

_TENSOR_QUANTIZERS = ("TensorQuantizer", "OutputQuantizer")
_FUSES_RELU = (*QUANTIZED_WEIGHT_LAYERS, "Add")


def _int8_relu(entry: dict) -> bool:
    """A QuantizedReLU whose grid fits int8."""
    if Graph.kind(entry) != "QuantizedReLU":
        return False
    quantizer = qz.get(entry["config"].get("activation_quantizer"))
    return quantizer is not None and quantizer.bits <= 8


@graph_rewrite
def quantize_tensors(graph: Graph) -> Graph:
    graph = graph.copy()
    on_grid: set[str] = set()
    for entry in list(graph.layers):
        name, kind = entry["name"], Graph.kind(entry)
        if kind in _TENSOR_QUANTIZERS or _int8_relu(entry):
            on_grid.add(name)
            continue
        inputs = graph.inbound_names(entry)
        if kind in GRID_PRESERVING and inputs and all(i in on_grid for i in inputs):
            on_grid.add(name)
            continue
        consumers = [graph.layer(c) for c in graph.consumers(name)]
        if graph.is_output(name) or graph.reaches_only(name, _TENSOR_QUANTIZERS):
            continue
        if kind in _FUSES_RELU and consumers and all(_int8_relu(c) for c in consumers):
            continue
        if consumers and all(Graph.kind(c) == "Concatenate" for c in consumers):
            continue
        # the model input is quantized by whoever calls the file (round half to even)
        rounding = "half_even" if kind == "InputLayer" else "half_up"
        quantizer = graph.insert_after(name, "TensorQuantizer", {"name": f"{name}_quantizer", "trainable": False,
                                                                 "dtype": "float32", "rounding": rounding})
        on_grid.add(quantizer)
    return graph

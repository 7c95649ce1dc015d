"""Rewrite: ``ReLU6(x + 3)/6`` written with raw TensorFlow ops -> one HardSigmoid layer.

``keras.applications.MobileNetV3Small``/``Large`` build h-sigmoid (and so h-swish,
``x·h-sigmoid(x)``, and every squeeze-excite gate) as ``ReLU(6.)(x + 3.) * (1. / 6.)``: a
``TFOpLambda`` add, a ReLU layer with ``max_value=6`` and a ``TFOpLambda`` multiply. This
rewrite replaces each such chain by a :class:`~keras_qrobust.layers.HardSigmoid`, so the
ReLU6 inside it is not taken for a hidden activation (and quantized at the activation
bits), and the integer graph gets the one requantization the Keras model mirrors.

Recognized, each step read only by the next: ``x + 3`` (``tf.__operators__.add`` or
``tf.math.add``), then ``ReLU(max_value=6)`` or ``tf.nn.relu6``, then ``* (1/6)``
(``tf.math.multiply``) or ``/ 6`` (``tf.math.truediv``, ``tf.math.divide``). Any other
``TFOpLambda`` is left for the caller to reject.
"""

from __future__ import annotations

import math

from ._graph import Graph, graph_rewrite

__all__ = ["fold_hard_sigmoid"]

_ADD = ("__operators__.add", "math.add")
_MULTIPLY = ("math.multiply", "__operators__.mul")
_DIVIDE = ("math.truediv", "__operators__.truediv", "math.divide")


def _op(entry: dict) -> tuple[str, list | None, dict]:
    """(function, input reference, keyword arguments) of a TFOpLambda entry; ("", None, {}) otherwise."""
    if entry["class_name"] != "TFOpLambda":
        return "", None, {}
    nodes = entry.get("inbound_nodes") or []
    if len(nodes) != 1:
        return "", None, {}
    node = nodes[0]
    # a TFOpLambda's node is one reference [layer, node, tensor, kwargs] (not a list of them)
    if not (isinstance(node, list) and len(node) >= 3 and isinstance(node[0], str)):
        return "", None, {}
    kwargs = node[3] if len(node) > 3 and isinstance(node[3], dict) else {}
    return entry["config"].get("function", ""), list(node[:3]), kwargs


def _constant(kwargs: dict) -> float | None:
    value = kwargs.get("y")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _only_consumer(graph: Graph, name: str) -> dict | None:
    consumers = graph.consumers(name)
    return graph.layer(consumers[0]) if len(consumers) == 1 and not graph.is_output(name) else None


def _is_relu6(entry: dict) -> bool:
    if entry["class_name"] == "TFOpLambda":
        return _op(entry)[0] == "nn.relu6"
    config = entry["config"]
    return (entry["class_name"] == "ReLU" and config.get("max_value") is not None
            and float(config["max_value"]) == 6.0 and not config.get("negative_slope") and not config.get("threshold"))


def _is_division_by_six(entry: dict) -> bool:
    function, _, kwargs = _op(entry)
    value = _constant(kwargs)
    if value is None:
        return False
    if function in _MULTIPLY:
        return math.isclose(value, 1 / 6, rel_tol=1e-6)
    return function in _DIVIDE and value == 6.0


def _chain(graph: Graph, entry: dict) -> tuple[list, list[dict]] | None:
    """(x, [add, relu6, scale]) when ``entry`` starts ``ReLU6(x + 3)/6``."""
    function, source, kwargs = _op(entry)
    if function not in _ADD or _constant(kwargs) != 3.0:
        return None
    relu = _only_consumer(graph, entry["name"])
    if relu is None or not _is_relu6(relu):
        return None
    scale = _only_consumer(graph, relu["name"])
    if scale is None or not _is_division_by_six(scale):
        return None
    return source, [entry, relu, scale]


@graph_rewrite
def fold_hard_sigmoid(graph: Graph) -> Graph:
    graph = graph.copy()
    for entry in list(graph.layers):
        if entry not in graph.layers:
            continue
        found = _chain(graph, entry)
        if found is None:
            continue
        source, (add, relu, scale) = found
        name = graph.unique_name(f"{relu['name']}_hard_sigmoid")
        dtype = relu["config"].get("dtype", "float32")
        index = graph.layers.index(add)
        for part in (add, relu, scale):
            graph.layers.remove(part)
            graph.weights.pop(part["name"], None)
        graph.layers.insert(index, {"class_name": "HardSigmoid", "name": name,
                                    "config": {"name": name, "trainable": False, "dtype": dtype},
                                    "inbound_nodes": [[[*source, {}]]]})
        graph._redirect(scale["name"], [name, 0, 0])
    return graph

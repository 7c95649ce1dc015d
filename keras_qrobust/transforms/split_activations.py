"""Rewrite: move fused activations out of weight layers into their own layers.

``Conv2D(..., activation="relu")`` becomes ``Conv2D(..., activation="linear")`` followed by a
``ReLU`` layer named ``<conv>_relu``, and ``Activation("relu")`` becomes ``ReLU``, so
BatchNormalization can be folded and the ReLU output quantized on its own.
"""

from __future__ import annotations

from ._graph import Graph, graph_rewrite
from ._kinds import WEIGHT_LAYERS

__all__ = ["split_activations"]

LINEAR = (None, "linear")


def _relu_config(name: str, dtype) -> dict:
    return {"name": name, "trainable": True, "dtype": dtype, "max_value": None,
            "negative_slope": 0.0, "threshold": 0.0}


@graph_rewrite
def split_activations(graph: Graph) -> Graph:
    graph = graph.copy()
    for entry in graph.iter_layers():
        name, config = entry["name"], entry["config"]
        if entry["class_name"] == "Activation":
            if config["activation"] == "relu":
                graph.replace(name, "ReLU", _relu_config(name, config.get("dtype")))
            continue
        if entry["class_name"] not in WEIGHT_LAYERS or config.get("activation") in LINEAR:
            continue
        activation = config["activation"]
        config["activation"] = "linear"
        if activation == "relu":
            graph.insert_after(name, "ReLU", _relu_config(f"{name}_relu", config.get("dtype")))
        else:
            suffix = activation if isinstance(activation, str) else "activation"
            graph.insert_after(
                name,
                "Activation",
                {"name": f"{name}_{suffix}", "trainable": True, "dtype": config.get("dtype"),
                 "activation": activation},
            )
    return graph

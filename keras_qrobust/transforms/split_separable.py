"""Rewrite: SeparableConv2D -> DepthwiseConv2D followed by a 1x1 Conv2D.

The two layers compute exactly what the SeparableConv2D computes (the bias and activation
move to the pointwise Conv2D, which keeps the original name). TFLite runs separable
convolutions this way, and tfmot wrappers save to SavedModel only in this form.
"""

from __future__ import annotations

from ._graph import Graph, graph_rewrite

__all__ = ["split_separable"]

_SHARED = ("trainable", "dtype")


@graph_rewrite
def split_separable(graph: Graph) -> Graph:
    graph = graph.copy()
    for entry in list(graph.iter_layers(("SeparableConv2D",))):
        name, config = entry["name"], entry["config"]
        if config.get("data_format", "channels_last") != "channels_last":
            continue
        depthwise_kernel, pointwise_kernel, *bias = graph.weights[name]
        dw_name = graph.unique_name(f"{name}_depthwise")
        graph.layers.insert(
            graph.layers.index(entry),
            {
                "class_name": "DepthwiseConv2D",
                "name": dw_name,
                "config": {
                    **{k: config[k] for k in _SHARED if k in config},
                    "name": dw_name,
                    "kernel_size": config["kernel_size"],
                    "strides": config["strides"],
                    "padding": config["padding"],
                    "depth_multiplier": config["depth_multiplier"],
                    "dilation_rate": config["dilation_rate"],
                    "use_bias": False,
                    "depthwise_initializer": config["depthwise_initializer"],
                    "depthwise_regularizer": config.get("depthwise_regularizer"),
                    "depthwise_constraint": config.get("depthwise_constraint"),
                },
                "inbound_nodes": entry["inbound_nodes"],
            },
        )
        graph.replace(
            name,
            "Conv2D",
            {
                **{k: config[k] for k in _SHARED if k in config},
                "filters": config["filters"],
                "kernel_size": [1, 1],
                "strides": [1, 1],
                "padding": "valid",
                "activation": config.get("activation", "linear"),
                "use_bias": config["use_bias"],
                "kernel_initializer": config["pointwise_initializer"],
                "bias_initializer": config["bias_initializer"],
                "kernel_regularizer": config.get("pointwise_regularizer"),
                "bias_regularizer": config.get("bias_regularizer"),
                "activity_regularizer": config.get("activity_regularizer"),
                "kernel_constraint": config.get("pointwise_constraint"),
                "bias_constraint": config.get("bias_constraint"),
            },
        )
        entry["inbound_nodes"] = [[[dw_name, 0, 0, {}]]]
        graph.weights[dw_name] = [depthwise_kernel]
        graph.weights[name] = [pointwise_kernel, *bias]
    return graph

"""Rewrite: fold inference-mode BatchNormalization into the weight layer before it.

For ``y = γ (z - μ)/√(σ² + ε) + β`` applied to ``z = W x + b`` this sets, per output channel,
``a = γ/√(σ² + ε)``, ``W' = a·W`` and ``b' = a·(b - μ) + β``, and removes the BatchNormalization
layer (cnn2snn's ``fold_batchnorm``). Supported hosts: Dense, Conv2D, DepthwiseConv2D
(output channel ``c·m + k`` scales ``W[..., c, k]``) and SeparableConv2D (the pointwise kernel).
"""

from __future__ import annotations

import numpy as np

from ._graph import Graph, UnsupportedModelError, graph_rewrite
from ._kinds import KERNELS, WEIGHT_LAYERS

__all__ = ["fold_batchnorm"]

_FIX = (
    "Place each BatchNormalization directly after the Dense/Conv2D/DepthwiseConv2D/"
    "SeparableConv2D layer it normalizes, with no activation in between "
    "(Conv2D(activation=None) -> BatchNormalization -> ReLU)."
)


def _channel_axis_ok(bn: dict) -> bool:
    axis = bn["config"].get("axis", -1)
    axes = axis if isinstance(axis, (list, tuple)) else [axis]
    if len(axes) != 1:
        return False
    shape = (bn.get("build_config") or {}).get("input_shape")
    return axes[0] == -1 or (shape is not None and axes[0] == len(shape) - 1)


def _why_not_foldable(graph: Graph, bn: dict) -> str | None:
    sources = graph.inbound_names(bn)
    if len(sources) != 1:
        return "it does not have exactly one input"
    host = graph.layer(sources[0])
    if host["class_name"] not in WEIGHT_LAYERS:
        return f"it follows '{host['name']}' ({host['class_name']}), not a weight layer"
    if host["config"].get("activation") not in (None, "linear"):
        return f"'{host['name']}' applies activation {host['config']['activation']!r} before it"
    others = [c for c in graph.consumers(host["name"]) if c != bn["name"]]
    if others or graph.is_output(host["name"]):
        used_by = ", ".join(repr(o) for o in others) or "the model output"
        return f"the output of '{host['name']}' before normalization is also used by {used_by}"
    if not _channel_axis_ok(bn):
        return f"it normalizes axis {bn['config'].get('axis')}, not the channel (last) axis"
    if host["config"].get("data_format", "channels_last") != "channels_last":
        return f"'{host['name']}' is channels_first"
    return None


def _bn_affine(bn: dict, weights: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(a, c)`` with ``BN(z) = a·z + c``, in float64."""
    config = bn["config"]
    values = [np.asarray(w, np.float64) for w in weights]
    gamma = values.pop(0) if config.get("scale", True) else None
    beta = values.pop(0) if config.get("center", True) else None
    mean, variance = values
    a = 1.0 / np.sqrt(variance + config.get("epsilon", 1e-3))
    if gamma is not None:
        a = a * gamma
    c = -mean * a + (beta if beta is not None else 0.0)
    return a, c


@graph_rewrite
def fold_batchnorm(graph: Graph) -> Graph:
    """Fold every BatchNormalization of ``graph``; raise if one cannot be folded."""
    graph = graph.copy()
    for bn in list(graph.iter_layers(("BatchNormalization",))):
        reason = _why_not_foldable(graph, bn)
        if reason:
            raise UnsupportedModelError(
                f"Cannot fold BatchNormalization '{bn['name']}': {reason}. {_FIX}"
            )
        host = graph.layer(graph.inbound_names(bn)[0])
        kind = host["class_name"]
        a, c = _bn_affine(bn, graph.weights[bn["name"]])
        weights = [np.asarray(w, np.float64) for w in graph.weights[host["name"]]]
        n_kernels = len(KERNELS[kind])
        kernels, bias = weights[:n_kernels], weights[n_kernels:]
        bias = bias[0] if bias else np.zeros_like(a)
        if kind == "DepthwiseConv2D":
            kernels[0] = kernels[0] * a.reshape(kernels[0].shape[-2:])
        else:  # the kernel whose last axis is the output channel
            kernels[-1] = kernels[-1] * a
        dtype = graph.weights[host["name"]][0].dtype
        graph.weights[host["name"]] = [k.astype(dtype) for k in kernels] + [
            (a * bias + c).astype(dtype)
        ]
        host["config"]["use_bias"] = True
        graph.remove_passthrough(bn["name"])
    return graph

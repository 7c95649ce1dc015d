"""Rewrite: swap layers for other classes that keep their weights (e.g. quantized twins)."""

from __future__ import annotations

from typing import Callable, Optional, Tuple

from ._graph import Graph, graph_rewrite

__all__ = ["replace_layers", "Replacement"]

#: Given a layer's config entry, return ``(class_name, config)`` to swap it, or None to keep it.
Replacement = Callable[[dict], Optional[Tuple[str, dict]]]


@graph_rewrite
def replace_layers(graph: Graph, replacement: Replacement) -> Graph:
    """Apply ``replacement`` to every layer; replaced layers keep name, inputs and weights.

    A new class may add weights after the original ones (quantizer ranges); they start at
    their initial values.
    """
    graph = graph.copy()
    for entry in graph.iter_layers():
        swapped = replacement(entry)
        if swapped is not None:
            graph.replace(entry["name"], *swapped)
    return graph

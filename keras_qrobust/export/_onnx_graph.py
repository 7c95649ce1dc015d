"""Small in-place helpers shared by the ONNX graph rewrites."""

from __future__ import annotations

__all__ = ["drop_unused_initializers"]


def drop_unused_initializers(proto) -> None:
    """Remove the initializers no node reads and no graph output names (in place)."""
    graph = proto.graph
    used = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)

"""Rewrite: drop the Reshape nodes that give a tensor the shape it already has (exact).

The TFLite converter turns a 1×1 convolution on a 1×1 feature map (the squeeze-excite block
of MobileNetV3, EfficientNet-lite) into ``FULLY_CONNECTED`` followed by a ``RESHAPE`` back to
``N×1×1×C``; tf2onnx writes that pair as a ``Conv`` and a ``Reshape`` to ``[-1, C, 1, 1]``,
the shape the convolution's output has already. The Reshape moves no value, but
onnxruntime's NHWC layout for its integer ``QLinearConv`` cannot pass a Transpose through
it: every such Reshape kept a Transpose to NCHW before it and one back after it in the
optimized graph (tests/test_export_onnx_reshapes.py shows them come back when the rewrite is
off). Without them a keras.applications MobileNetV3Small's graph keeps one Transpose, at the
input (benchmarks/results/onnx_latency.md).

A Reshape is an identity when the inferred shape of its input is known in every dimension
but the batch, and the target shape names the same dimensions (``-1``, or ``0`` when it
copies, at the batch). Its consumers then read its input; a Reshape whose output is a graph
output is kept, so the graph's interface does not change.
"""

from __future__ import annotations

from ._onnx_graph import drop_unused_initializers

__all__ = ["drop_identity_reshapes"]


def _static_shapes(proto) -> dict[str, list]:
    """Tensor name -> its inferred dimensions (an int, or None where unknown)."""
    from onnx import shape_inference

    graph = shape_inference.infer_shapes(proto).graph
    shapes = {}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None
                                  for d in value.type.tensor_type.shape.dim]
    return shapes


def _is_identity(source: list, target: list[int], allow_zero: bool) -> bool:
    """True when reshaping a tensor of shape ``source`` (None: unknown) to ``target`` keeps it."""
    if len(source) != len(target) or any(d is None for d in source[1:]):
        return False
    batch_kept = target[0] == source[0] if source[0] is not None else target[0] == -1 or (
        target[0] == 0 and not allow_zero)
    return batch_kept and all(t == s or (t == 0 and not allow_zero) for s, t in zip(source[1:], target[1:]))


def drop_identity_reshapes(proto) -> int:
    """Remove every Reshape of ``proto`` that keeps its input's shape (in place); returns how many."""
    from onnx import numpy_helper

    graph = proto.graph
    constants = {init.name: init for init in graph.initializer}
    outputs = {value.name for value in graph.output}
    shapes = _static_shapes(proto)
    dropped: dict[str, str] = {}  # a dropped Reshape's output -> its input
    for node in list(graph.node):
        if (node.op_type != "Reshape" or node.output[0] in outputs or node.input[0] not in shapes
                or node.input[1] not in constants):
            continue
        allow_zero = any(a.name == "allowzero" and a.i for a in node.attribute)
        target = [int(v) for v in numpy_helper.to_array(constants[node.input[1]]).ravel()]
        if _is_identity(shapes[node.input[0]], target, allow_zero):
            dropped[node.output[0]] = dropped.get(node.input[0], node.input[0])
            graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in dropped:
                node.input[i] = dropped[name]
    if dropped:
        drop_unused_initializers(proto)
    return len(dropped)

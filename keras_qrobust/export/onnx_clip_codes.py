"""Rewrite: an activation's upper clip as a Clip on its uint8 codes instead of in float (exact).

A ``b``-bit activation (``b < 8``) keeps ``2^b`` levels of its 8-bit container: the int8
graph clamps the codes at the top level with a ``MINIMUM`` whose inputs and output share one
scale and zero point (TFLite requires it). tf2onnx writes it as ``DequantizeLinear →
Min(·, DequantizeLinear(top)) → QuantizeLinear``, which onnxruntime has no integer kernel for:
it converts the whole feature map to float, takes the minimum and quantizes it back — three
passes over the feature map where the w8a8 file has none.

With one scale ``s`` and zero point ``z`` on all three, ``Q(min(DQ(c), DQ(t))) = min(c, t)``:
``DQ`` is increasing, so the minimum picks the same operand, and ``Q(DQ(c)) = c`` for every
code (``(c − z)·s`` rounded to float32, divided by ``s`` and rounded, is ``c − z`` again: its
error is far below half a step). So the three nodes become ``Clip(c, max=t)`` on the codes,
one pass over bytes. ``Clip`` takes uint8 from opset 12; the rewrite runs after
:func:`~keras_qrobust.export.onnx_unsigned.unsign_codes`, on uint8 codes.
"""

from __future__ import annotations

import numpy as np

from ._onnx_graph import drop_unused_initializers
from .onnx_layout import LAYOUT_OPS

__all__ = ["clip_on_codes"]


def _scalar(initializers: dict, name: str):
    """The value of a one-element initializer ``name`` (with its dtype), else None."""
    from onnx import numpy_helper

    if name not in initializers:
        return None
    value = numpy_helper.to_array(initializers[name])
    return value.reshape(()) if value.size == 1 else None


def _grid(node, initializers: dict):
    """``(scale, zero point)`` of a Q/DQ node when both are scalar initializers, else None."""
    if len(node.input) < 3:
        return None
    scale, zero_point = _scalar(initializers, node.input[1]), _scalar(initializers, node.input[2])
    if scale is None or zero_point is None or zero_point.dtype != np.uint8:
        return None
    return scale.astype(np.float32).item(), int(zero_point)


def clip_on_codes(proto) -> int:
    """Replace every ``DQ(c) → Min(·, DQ(t)) → Q`` on one uint8 grid by ``Clip(c, max=t)`` (in
    place; layout ops between the Min and the Q then move the codes); returns how many. The
    dequantize nodes stay when something else reads them."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    outputs = {value.name for value in graph.output}
    producers = {name: node for node in graph.node for name in node.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    replaced, touched = 0, []
    for node in list(graph.node):
        if node.op_type != "Min" or len(node.input) != 2 or node.output[0] in outputs:
            continue
        dequantized = [producers.get(name) for name in node.input]
        layout, after = [], readers.get(node.output[0], [])
        while len(after) == 1 and after[0].op_type in LAYOUT_OPS and after[0].output[0] not in outputs:
            layout.append(after[0])  # moved above the QuantizeLinear by onnx_layout: they move codes alike
            after = readers.get(after[0].output[0], [])
        if (any(d is None or d.op_type != "DequantizeLinear" for d in dequantized) or len(after) != 1
                or after[0].op_type != "QuantizeLinear"):
            continue
        quantize = after[0]
        grids = {_grid(d, initializers) for d in dequantized} | {_grid(quantize, initializers)}
        tops = [_scalar(initializers, d.input[0]) for d in dequantized]
        if len(grids) != 1 or None in grids or sum(t is not None for t in tops) != 1:
            continue
        codes, top = (0, 1) if tops[1] is not None else (1, 0)
        top_name = f"{quantize.output[0]}_top"
        graph.initializer.append(numpy_helper.from_array(np.array(tops[top], np.uint8), top_name))
        clipped = f"{quantize.output[0]}_clipped" if layout else quantize.output[0]
        clip = helper.make_node("Clip", [dequantized[codes].input[0], "", top_name], [clipped],
                                name=f"{node.name or quantize.output[0]}_on_codes")
        if layout:
            layout[0].input[0], layout[-1].output[0] = clipped, quantize.output[0]
        position = list(graph.node).index(node)
        graph.node.remove(node)
        graph.node.remove(quantize)
        graph.node.insert(position, clip)
        touched.extend(dequantized)
        replaced += 1
    read = {name for node in graph.node for name in node.input} | outputs
    for dequantize in {id(d): d for d in touched}.values():
        if dequantize.output[0] not in read and dequantize in graph.node:
            graph.node.remove(dequantize)
    if replaced:
        drop_unused_initializers(proto)
    return replaced

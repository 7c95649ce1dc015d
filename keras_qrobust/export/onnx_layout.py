"""Rewrite: move layout ops above the QuantizeLinear that feeds them (exact, for onnxruntime's fusion).

tf2onnx translates a TFLite int8 ``RESHAPE`` (a Dense layer's input, a flatten) or
``TRANSPOSE`` into the same op on int8 codes: ``QuantizeLinear → Reshape → DequantizeLinear →
Conv``. onnxruntime fuses a ``DequantizeLinear → Conv → QuantizeLinear`` group into one
integer ``QLinearConv`` only when the DequantizeLinear reads a QuantizeLinear's output
directly; with a layout op in between it runs the convolution in float between a dequantize
and a quantize — the QDQ int8 file of ``cnn_small`` was 9× slower than with the rewrite, and
slower than the float model.

With a per-tensor scale and zero point, quantizing commutes with ops that only move values
(``Q(reshape(x)) = reshape(Q(x))``), so ``x → Q → Reshape`` becomes ``x → Reshape → Q``:
the same codes, in the order onnxruntime fuses.
"""

from __future__ import annotations

__all__ = ["hoist_layout_ops", "LAYOUT_OPS"]

#: ops that move values without changing them
LAYOUT_OPS = ("Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze")


def _per_tensor(node, initializers: dict) -> bool:
    """True when ``node`` (a QuantizeLinear) has a scalar scale and zero point."""
    import numpy as np
    from onnx import numpy_helper

    for name in node.input[1:3]:
        if name and (name not in initializers or np.size(numpy_helper.to_array(initializers[name])) != 1):
            return False
    return True


def hoist_layout_ops(proto) -> int:
    """Move every layout op whose input is a per-tensor QuantizeLinear's only use above that
    QuantizeLinear (in place, repeatedly: a Transpose then a Reshape both move). Returns
    how many moved. Tensor names are kept: the layout op's output name is now the
    QuantizeLinear's, so every consumer reads the same codes as before."""
    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    outputs = {value.name for value in graph.output}
    moved = 0
    while True:
        producers = {name: node for node in graph.node for name in node.output}
        uses: dict[str, int] = {}
        for node in graph.node:
            for name in node.input:
                uses[name] = uses.get(name, 0) + 1
        for layout in graph.node:
            if layout.op_type not in LAYOUT_OPS or not layout.input:
                continue
            quantize = producers.get(layout.input[0])
            if (quantize is None or quantize.op_type != "QuantizeLinear" or uses.get(quantize.output[0]) != 1
                    or quantize.output[0] in outputs or not _per_tensor(quantize, initializers)):
                continue
            codes, moved_values = quantize.output[0], layout.output[0]
            layout.input[0], layout.output[0] = quantize.input[0], f"{codes}_float"
            quantize.input[0], quantize.output[0] = layout.output[0], moved_values
            order = [node.output[0] for node in graph.node]  # nodes named by their first output
            order.remove(layout.output[0])
            order.insert(order.index(quantize.output[0]), layout.output[0])
            by_output = {node.output[0]: type(node).FromString(node.SerializeToString()) for node in graph.node}
            del graph.node[:]
            graph.node.extend(by_output[name] for name in order)
            moved += 1
            break
        else:
            return moved

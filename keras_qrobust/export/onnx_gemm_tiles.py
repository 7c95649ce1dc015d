"""Rewrite: pad a convolution's filters to whole blocks of 32 where onnxruntime 1.23's AMX kernel errs.

onnxruntime 1.23 runs int8 convolutions on CPUs with AMX-INT8 (Intel Xeon 4th generation and
later) through a GEMM that writes wrong sums into some rows of the last block of output
channels when that block is partly filled past its first 16 (``16 < N mod 32``):
microsoft/onnxruntime#26324, fixed in 1.25; the pinned ``quantizeml`` needs 1.23. Measured on
such a CPU (``./run.sh bench onnxruntime_gemm_tails``): a 1×1 ``QLinearConv`` with 64 input
channels on 7×7 maps is wrong for 17–31, 49–63 and 81–95 filters with uint8 weights (up to
0.99% of its outputs, by up to 251 steps), for most of those counts with int8 weights too,
and exact for every other count.

The rewrite gives each such convolution (``group = 1``; a Dense layer is a 1×1 convolution in
the file) zero filters up to the next multiple of 32 — zero codes, zero bias, the last
channel's scale — and slices the extra channels off its quantized output::

    DQ → Conv(N) → [Relu] → Q   becomes   DQ → Conv(⌈N/32⌉·32) → [Relu] → Q → DQ → Slice(N) → Q

The added channels are computed and dropped, so every value the file stores is the one it
stored before, on every runtime, for ``(⌈N/32⌉·32 − N)/N`` more multiply-adds in those layers.
"""

from __future__ import annotations

import numpy as np

from ._onnx_graph import drop_unused_initializers

__all__ = ["pad_gemm_tails", "BLOCK"]

#: output channels per block of the AMX kernel (two tiles of 16)
BLOCK = 32
_ELEMENTWISE = ("Relu", "Clip")


def _needs_padding(channels: int) -> bool:
    return channels % BLOCK > BLOCK // 2


def _attribute(node, name: str, default):
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def pad_gemm_tails(proto) -> list[str]:
    """Pad every eligible convolution of ``proto`` (QDQ, int8 codes; in place) as the module
    doc says. Returns the names of the convolutions padded."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {name: node for node in graph.node for name in node.output}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {value.name for value in graph.output}

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(initializers[name])

    def replace(node, index: int, values: np.ndarray, suffix: str) -> None:
        """Point ``node.input[index]`` at a new initializer holding ``values``."""
        name = f"{node.input[index]}_{suffix}"
        if name not in initializers:
            initializers[name] = numpy_helper.from_array(values, name)
            graph.initializer.append(initializers[name])
        node.input[index] = name

    def per_channel(dequantize, channels: int) -> bool:
        return (dequantize is not None and dequantize.op_type == "DequantizeLinear"
                and all(name in initializers for name in dequantize.input[:3]) and len(dequantize.input) == 3
                and _attribute(dequantize, "axis", 1) == 0 and array(dequantize.input[0]).shape[:1] == (channels,))

    def quantizer_after(conv, widened: list):
        """The QuantizeLinear the convolution's output reaches through ReLU/Clip alone (the
        tensors on the way, which the padding widens, go into ``widened``)."""
        name = conv.output[0]
        while True:
            consumers = readers.get(name, [])
            if len(consumers) != 1 or name in outputs:
                return None
            (node,) = consumers
            widened.append(node.output[0])
            if node.op_type == "QuantizeLinear":
                return None if node.output[0] in outputs else node
            if node.op_type not in _ELEMENTWISE or node.input[0] != name:
                return None
            name = node.output[0]

    padded, widened = [], set()
    added = []  # (after this node, the nodes to insert)
    for conv in graph.node:
        if conv.op_type != "Conv" or _attribute(conv, "group", 1) != 1 or len(conv.input) < 2:
            continue
        weights = producers.get(conv.input[1])
        channels = array(weights.input[0]).shape[0] if weights is not None and weights.input[0] in initializers else 0
        if not _needs_padding(channels) or not per_channel(weights, channels):
            continue
        bias = producers.get(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else None
        if bias is not None and not per_channel(bias, channels):
            continue
        chain = [conv.output[0]]
        quantize = quantizer_after(conv, chain)
        if quantize is None:
            continue
        extra = -channels % BLOCK
        for dequantize in (weights, bias):
            if dequantize is None:
                continue
            codes, scale, zero = (array(name) for name in dequantize.input[:3])
            replace(dequantize, 0, np.concatenate([codes, np.zeros((extra, *codes.shape[1:]), codes.dtype)]), "padded")
            replace(dequantize, 1, np.concatenate([scale, np.full(extra, scale[-1], scale.dtype)]), "padded")
            replace(dequantize, 2, np.concatenate([zero, np.zeros(extra, zero.dtype)]), "padded")
        # Q → DQ → Slice → Q with Q's own scale and zero point: the same codes, channels [0, N)
        codes = quantize.output[0]
        dequantized, sliced, kept = f"{codes}_padded_dq", f"{codes}_padded_slice", f"{codes}_kept"
        for name, values in ((f"{codes}_starts", [0]), (f"{codes}_ends", [channels]), (f"{codes}_axes", [1])):
            initializers[name] = numpy_helper.from_array(np.asarray(values, np.int64), name)
            graph.initializer.append(initializers[name])
        nodes = [
            helper.make_node("DequantizeLinear", [codes, *quantize.input[1:3]], [dequantized],
                             name=f"{conv.name}_pad_dq"),
            helper.make_node("Slice", [dequantized, f"{codes}_starts", f"{codes}_ends", f"{codes}_axes"], [sliced],
                             name=f"{conv.name}_pad_slice"),
            helper.make_node("QuantizeLinear", [sliced, *quantize.input[1:3]], [kept], name=f"{conv.name}_pad_q"),
        ]
        for reader in readers.get(codes, []):
            for j, name in enumerate(reader.input):
                if name == codes:
                    reader.input[j] = kept
        added.append((quantize, nodes))
        widened.update(chain)
        padded.append(conv.name)
    for quantize, nodes in added:
        at = list(graph.node).index(quantize) + 1
        for offset, node in enumerate(nodes):
            graph.node.insert(at + offset, node)
    # the shapes from the convolutions to their quantizers changed: let the checker infer them again
    for value in list(graph.value_info):
        if value.name in widened:
            graph.value_info.remove(value)
    drop_unused_initializers(proto)
    return padded

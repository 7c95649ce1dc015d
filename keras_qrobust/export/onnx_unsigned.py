"""Rewrite: store the QDQ graph's int8 codes as uint8 (exact), so no CPU saturates a product sum.

An int8 code ``c`` with zero point ``z`` stands for ``s·(c - z)``; the uint8 code ``c + 128``
with zero point ``z + 128`` stands for the same value, and ``QuantizeLinear`` rounds and
clamps to the same level (``[-128, 127]`` shifted is ``[0, 255]``). So the rewrite changes
no value any node computes — only which integer kernel onnxruntime picks for it:

- int8 activations with int8 weights: on x86 onnxruntime shifts the activations to uint8 and
  runs a u8·s8 kernel. Without AVX-VNNI that kernel is ``VPMADDUBSW``, which adds two
  products ``u·s`` into an int16 and saturates: ``2·255·127 = 64,770 > 32,767``. An 8-bit
  input layer, or any 8-bit weight beyond ±64, then changes scores by many output steps on
  some machines and not on others.
- uint8 activations with uint8 weights: the u8·u8 kernels widen both operands to int16 and
  add pairs into int32 (``VPMADDWD``), which cannot overflow; ARM has u8·u8 dot products.

onnxruntime documents the same remedy for the saturation ("use the U8U8 format"); its own
``session.x64quantprecision`` option does it at load time but is off by default and fails on
initializers shared by several nodes — a file must not depend on how its reader is configured.
"""

from __future__ import annotations

import numpy as np

from ._onnx_graph import drop_unused_initializers

__all__ = ["unsign_codes", "signed_codes"]


def _int8_initializers(proto) -> dict:
    from onnx import TensorProto

    return {init.name: init for init in proto.graph.initializer if init.data_type == TensorProto.INT8}


def unsign_codes(proto) -> int:
    """Store every int8 code and zero point of ``proto``'s Q/DQ nodes as uint8 (in place).

    Returns how many initializers were converted; raises ValueError if an int8 tensor is left
    that the rewrite cannot shift (a QuantizeLinear/DequantizeLinear without an explicit zero
    point on an int8 tensor, or an int8 initializer read by another op).
    """
    from onnx import TensorProto, numpy_helper

    graph = proto.graph
    int8 = _int8_initializers(proto)
    shifted: dict[str, str] = {}

    def unsigned(name: str) -> str:
        if name not in shifted:
            codes = numpy_helper.to_array(int8[name]).astype(np.int16) + 128
            new = numpy_helper.from_array(codes.astype(np.uint8), f"{name}_u8")
            graph.initializer.append(new)
            shifted[name] = new.name
        return shifted[name]

    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zero = node.input[2] if len(node.input) > 2 else ""
        if zero in int8:
            node.input[2] = unsigned(zero)
            if node.op_type == "DequantizeLinear" and node.input[0] in int8:
                node.input[0] = unsigned(node.input[0])
    drop_unused_initializers(proto)
    # shapes stay, element types of the shifted tensors change: let the checker re-infer them
    stale = [value for value in graph.value_info if value.type.tensor_type.elem_type == TensorProto.INT8]
    for value in stale:
        graph.value_info.remove(value)
    left = signed_codes(proto)
    if left:
        raise ValueError(f"int8 tensors left after the uint8 rewrite: {', '.join(left[:5])}; they would run "
                         "in onnxruntime's saturating u8s8 kernels on CPUs without AVX-VNNI")
    return len(shifted)


def signed_codes(proto) -> list[str]:
    """Names of the int8 initializers and Constant tensors of ``proto`` (none after :func:`unsign_codes`)."""
    from onnx import AttributeProto, TensorProto

    names = list(_int8_initializers(proto))
    for node in proto.graph.node:
        if node.op_type == "Constant":
            names += [node.output[0] for attribute in node.attribute
                      if attribute.type == AttributeProto.TENSOR and attribute.t.data_type == TensorProto.INT8]
    return names

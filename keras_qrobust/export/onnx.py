"""ONNX export: QDQ int8 (opset 13+), optionally with packed INT4 weights (opset 21).

The ONNX graph is translated by tf2onnx from the int8 TFLite model of
:func:`~keras_qrobust.export.tflite.convert_tflite` (with float input and output), so both
artifacts carry the same integer weights, biases, scales and zero points:
QuantizeLinear/DequantizeLinear pairs around float Conv/MaxPool nodes, which
onnxruntime fuses into integer kernels; exact rewrites then drop identity Reshapes
(:mod:`~keras_qrobust.export.onnx_reshapes`) and clamp sub-8-bit activations with a Clip on
their codes (:mod:`~keras_qrobust.export.onnx_clip_codes`). The codes are then stored as uint8 (zero points
+128, the same values; :mod:`~keras_qrobust.export.onnx_unsigned`), because onnxruntime's
u8·s8 kernels saturate on x86 CPUs without AVX-VNNI and its u8·u8 kernels cannot.

INT4 weights: a ``b``-bit layer (``b ≤ 4``) stores its codes ``k`` as ``k·m`` in int8 (see
:mod:`keras_qrobust.quantization.integer_bias`); by default they are stored back as ``k`` in an INT4
initializer, half the bytes, with a constant chain that decodes them to the 8-bit container
when onnxruntime loads the file (:func:`pack_int4_weights`), so the file computes what the
8-bit file computes. Layers with more bits keep 8-bit codes. The saved file carries no
intermediate shape hints (``value_info``): onnxruntime and onnx shape inference derive them.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from .._io import atomic_path, check_new_file
from ..quantizers.grid import int8_code_multiplier
from ._onnx_graph import drop_unused_initializers
from .onnx_clip_codes import clip_on_codes
from .onnx_gemm_tiles import pad_gemm_tails
from .onnx_layout import hoist_layout_ops
from .onnx_reshapes import drop_identity_reshapes
from .onnx_unsigned import unsign_codes
from .tflite import convert_tflite

__all__ = ["onnx", "convert_onnx", "dedicate_dequantize", "pack_int4_weights", "shorten_names", "INT4_OPSET"]

INT4_OPSET = 21
_INT4_IR_VERSION = 10


def convert_onnx(model, representative=None, *, opset: int = 13):
    """``model`` -> an ``onnx.ModelProto`` in QDQ 8-bit form, uint8 codes (checked with ``onnx.checker``)."""
    import onnx as onnx_lib
    import tf2onnx

    if not isinstance(opset, int) or not 13 <= opset <= 18:
        raise ValueError(f"opset must be an int in [13, 18] (tf2onnx writes up to 18; INT4 weights raise it to "
                         f"{INT4_OPSET}), got {opset!r}")
    blob, info = convert_tflite(model, representative, precision="int8", int8_io=False)
    handle, scratch = tempfile.mkstemp(suffix=".tflite")
    os.close(handle)
    try:
        Path(scratch).write_bytes(blob)
        proto, _ = tf2onnx.convert.from_tflite(scratch, opset=opset)
    finally:
        os.unlink(scratch)
    hoist_layout_ops(proto)
    drop_identity_reshapes(proto)
    dedicate_dequantize(proto)
    shorten_names(proto)
    pad_gemm_tails(proto)
    unsign_codes(proto)
    clip_on_codes(proto)
    onnx_lib.checker.check_model(proto)
    return proto, info


def dedicate_dequantize(proto) -> None:
    """Give every consumer of a shared ``DequantizeLinear`` its own copy (in place).

    tf2onnx shares one dequantized constant (e.g. the 3 of every ``x + 3`` in a
    MobileNetV3) or tensor among several ops; onnxruntime fuses a QDQ group into an integer
    kernel only when its DequantizeLinear nodes serve it alone, and its QDQ selector fails
    on some shared ones ("two nodes with same node name"). The copies compute the same values.
    """
    from onnx import NodeProto

    graph = proto.graph
    readers: dict[str, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            readers.setdefault(name, []).append(index)
    outputs = {value.name for value in graph.output}
    renamed: dict[int, dict[str, str]] = {}  # consumer index -> {shared name: its copy's}
    copies: dict[int, list] = {}  # DequantizeLinear index -> its copies
    for index, node in enumerate(graph.node):
        if node.op_type != "DequantizeLinear" or node.output[0] in outputs:
            continue
        consumers = list(dict.fromkeys(readers.get(node.output[0], [])))
        for k, consumer in enumerate(consumers[1:], start=1):
            copy = NodeProto()
            copy.CopyFrom(node)
            copy.name, copy.output[0] = f"{node.name}_for_{k}", f"{node.output[0]}_for_{k}"
            copies.setdefault(index, []).append(copy)
            renamed.setdefault(consumer, {})[node.output[0]] = copy.output[0]
    if not copies:
        return
    nodes = []
    for index, node in enumerate(graph.node):
        node = NodeProto.FromString(node.SerializeToString())
        for j, name in enumerate(node.input):
            node.input[j] = renamed.get(index, {}).get(name, name)
        nodes.append(node)
        nodes.extend(copies.get(index, []))
    del graph.node[:]
    graph.node.extend(nodes)


def shorten_names(proto) -> None:
    """Rename tensors and nodes ``t0, t1, ...`` / ``n0, n1, ...`` in place (graph input and
    output keep theirs): tf2onnx names carry whole TF op paths, ~10% of a small model's bytes."""
    graph = proto.graph
    keep = {value.name for value in list(graph.input) + list(graph.output)}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for init in graph.initializer:
        init.name = short(init.name)
    for i, node in enumerate(graph.node):
        node.name = f"n{i}"  # not OpType_i: onnxruntime names the nodes it adds so
        for j, name in enumerate(node.input):
            node.input[j] = short(name)
        for j, name in enumerate(node.output):
            node.output[j] = short(name)
    for value in graph.value_info:
        value.name = short(value.name)


def _initializers(proto) -> dict:
    return {init.name: init for init in proto.graph.initializer}


def _int4_tensor(name: str, values: np.ndarray):
    """An INT4 initializer, two's-complement nibbles packed two per byte (low nibble first)."""
    from onnx import TensorProto, helper

    nibbles = (np.asarray(values, np.int32).reshape(-1) & 0x0F).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    packed = nibbles[0::2] | (nibbles[1::2] << 4)
    return helper.make_tensor(name, TensorProto.INT4, list(np.shape(values)), packed.tobytes(), raw=True)


def _default_opset(proto) -> int:
    return max((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), default=0)


def pack_int4_weights(proto) -> list[str]:
    """Store every 8-bit weight whose codes are ``k·m`` with ``|k| ≤ 7`` as INT4 ``k`` (in place).

    The codes are read as int8 with zero point 0 or as uint8 with zero point 128 (after
    :func:`~keras_qrobust.export.onnx_unsigned.unsign_codes`). The file stores ``k`` in half a
    byte; a constant chain in front of the weight's DequantizeLinear decodes it back to the
    8-bit container, ``cast(cast(k, int32)·m + z)`` with ``z`` the symmetric zero point (128
    for uint8), which is exactly the tensor it replaces. onnxruntime folds that chain into an
    initializer when it loads the file, so the DequantizeLinear → Conv/MatMul → QuantizeLinear
    group is fused into the same integer kernel as in the 8-bit file and computes the same
    outputs bit for bit. (A DequantizeLinear reading INT4 directly is not fused: onnxruntime
    then runs a float convolution, which rounds some sums to the neighbouring output level.)

    Returns the names of the converted initializers; raises the opset to 21 (INT4, Cast from INT4).
    """
    import onnx as onnx_lib
    from onnx import helper, numpy_helper, version_converter

    symmetric_zero = {onnx_lib.TensorProto.INT8: 0, onnx_lib.TensorProto.UINT8: 128}  # a symmetric grid's

    def packable(node, inits) -> tuple | None:
        """(8-bit weight, its codes, their multiplier) of a DequantizeLinear whose codes fit INT4."""
        if node.op_type != "DequantizeLinear" or node.input[0] not in inits or len(node.input) < 2:
            return None
        weight = inits[node.input[0]]
        middle = symmetric_zero.get(weight.data_type)
        if middle is None or len(weight.dims) < 2:
            return None
        zero = node.input[2] if len(node.input) > 2 else ""
        if zero and zero not in inits or not zero and middle:
            return None
        if zero and np.any(numpy_helper.to_array(inits[zero]).astype(np.int32) != middle):
            return None  # an asymmetric constant (e.g. the 3 of x + 3)
        codes = numpy_helper.to_array(weight).astype(np.int32) - middle
        multiplier = next((m for m in map(int8_code_multiplier, (4, 3, 2, 1))
                           if np.all(codes % m == 0) and np.abs(codes // m).max() <= 7), None)
        return None if multiplier is None else (weight, codes, multiplier)

    inits = _initializers(proto)
    if not any(packable(node, inits) for node in proto.graph.node):
        return []
    if _default_opset(proto) < INT4_OPSET:
        # ops whose form changed since the graph's opset (e.g. ReduceMean's axes, an input
        # from opset 18) are rewritten, not just relabelled
        proto.CopyFrom(version_converter.convert_version(proto, INT4_OPSET))
        for i, node in enumerate(proto.graph.node):  # the nodes it adds may reuse existing names
            node.name = f"n{i}"
        inits = _initializers(proto)
    constants: dict[int, str] = {}  # an int32 scalar -> its initializer

    def constant(value: int) -> str:
        if value not in constants:
            constants[value] = f"int4_decode_{value}"
            proto.graph.initializer.append(numpy_helper.from_array(np.array(value, np.int32), constants[value]))
        return constants[value]

    decoders = []
    decoded: dict[str, str] = {}  # 8-bit weight -> the decoded tensor (one chain for a shared weight)
    for node in proto.graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        if node.input[0] not in decoded:
            found = packable(node, inits)
            if found is None:
                continue
            weight, codes, multiplier = found
            tensor = f"{weight.name}_int4"
            proto.graph.initializer.append(_int4_tensor(tensor, codes // multiplier))
            middle = symmetric_zero[weight.data_type]
            chain = [("Cast", [], {"to": onnx_lib.TensorProto.INT32}), ("Mul", [constant(multiplier)], {}),
                     *([("Add", [constant(middle)], {})] if middle else []), ("Cast", [], {"to": weight.data_type})]
            for i, (op, operands, attributes) in enumerate(chain):  # each step reads the one before
                output = f"{weight.name}_decode_{i}"
                decoders.append(helper.make_node(op, [tensor, *operands], [output], name=output, **attributes))
                tensor = output
            decoded[weight.name] = tensor
        node.input[0] = decoded[node.input[0]]
    if decoded:
        nodes = decoders + list(proto.graph.node)  # the chains read initializers only: first is topological
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
        drop_unused_initializers(proto)
        proto.ir_version = max(proto.ir_version, _INT4_IR_VERSION)
    return list(decoded)


def onnx(model, path: str | os.PathLike, representative=None, *, opset: int = 13,
         int4_weights: Optional[bool] = None, overwrite: bool = False) -> Path:
    """Export ``model`` to a QDQ 8-bit ``.onnx`` file at ``path`` (the int8 TFLite model's codes as uint8).

    Args:
        model: a RobustQuantizer model (sub-8-bit grids lowered exactly), a tfmot 8-bit
            model, or a float model (quantized post-training on ``representative``).
        representative: model inputs that calibrate the ranges of a float model and the
            tensors a RobustQuantizer model leaves float (none, with activation bits).
        opset: ONNX opset of the QDQ graph (13-18).
        int4_weights: store the weights of layers with ≤ 4 bits as packed INT4 (opset 21),
            so a 4-bit model is a 4-bit file. None (default): whenever a layer qualifies;
            True: raise if none does; False: keep int8 containers. Either way the packed
            file is checked to run in onnxruntime.
        overwrite: replace an existing file (else FileExistsError, before any work).
    """
    import onnx as onnx_lib

    path = check_new_file(path, ".onnx", overwrite, "an ONNX export")
    proto, _ = convert_onnx(model, representative, opset=opset)
    if int4_weights is not False:
        packed = pack_int4_weights(proto)
        if int4_weights and not packed:
            raise ValueError("int4_weights=True but no layer has weights of 4 bits or fewer: quantize with "
                             "weight_bits <= 4 (input layers keep input_weight_bits), or export int8 weights")
        if packed:
            onnx_lib.checker.check_model(proto)
            _check_runs(proto)
    # the intermediate shapes tf2onnx records are hints onnxruntime infers again when it loads the
    # file; in the small 4-bit zoo models they were 5–8 % of the bytes
    del proto.graph.value_info[:]
    with atomic_path(path, overwrite=overwrite) as temporary:
        onnx_lib.save(proto, str(temporary))
    return path


def _check_runs(proto) -> None:
    import onnxruntime as ort

    try:
        ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        raise RuntimeError(f"onnxruntime {ort.__version__} cannot run the INT4 model ({error}); export with "
                           "int4_weights=False") from error

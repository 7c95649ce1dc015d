"""What an ``.onnx`` file holds, read with onnx (and onnxruntime when shapes stay unknown): memory, precision."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .liveness import MemoryAnalysis, _activation_peak


def _onnx_nbytes(elem_type: int, dims: Sequence[int]) -> int:
    import onnx

    count = int(np.prod(dims, dtype=np.int64))
    if elem_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (count + 1) // 2
    if elem_type == onnx.TensorProto.STRING:
        raise ValueError("string tensors have no fixed size")
    return count * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize


def _onnx_shapes_inferred(model, batch_size: int) -> dict[str, tuple[int, list[int]]] | None:
    """name -> (elem_type, dims) of every value, by onnx shape inference with the batch set;
    None when some shape stays unknown."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    initializers = {i.name for i in model.graph.initializer}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_value = batch_size
    for value in model.graph.output:
        value.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    shapes = {}
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if any(d is None for d in dims):
            continue
        shapes[value.name] = (tensor_type.elem_type, dims)
    return shapes


def _onnx_shapes_run(model, batch: Mapping[str, np.ndarray]) -> dict[str, tuple[int, list[int]]]:
    """name -> (elem_type, dims) of every node output, measured by running onnxruntime with
    every intermediate value exposed as a graph output."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name and name not in existing:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
                existing.add(name)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, dict(batch))
    shapes = {}
    for name, value in zip(names, values):
        value = np.asarray(value)
        shapes[name] = (onnx.helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape))
    for name, value in batch.items():
        shapes[name] = (onnx.helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape))
    return shapes


def _onnx_memory(path: Path, batch_size: int) -> MemoryAnalysis:
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    weights = sum(_onnx_nbytes(i.data_type, i.dims) for i in graph.initializer)
    constant_outputs = set()
    for node in graph.node:
        if node.op_type == "Constant":
            constant_outputs.update(node.output)
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.TENSOR:
                    weights += _onnx_nbytes(attribute.t.data_type, attribute.t.dims)
    graph_inputs = [v.name for v in graph.input if v.name not in initializers]
    graph_outputs = [v.name for v in graph.output]
    ops = [(tuple(n for n in node.input if n), tuple(n for n in node.output if n))
           for node in graph.node if node.op_type != "Constant"]
    needed = set(graph_inputs) | {t for _, outs in ops for t in outs}
    shapes = _onnx_shapes_inferred(model, batch_size)
    method = "static: onnx shape inference"
    if not needed <= set(shapes):
        batch = {}
        for value in graph.input:
            if value.name in initializers:
                continue
            tensor_type = value.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                    for d in tensor_type.shape.dim]
            if any(d is None for d in dims[1:]):
                raise ValueError(f"{path}: input '{value.name}' has unknown dimensions besides the batch")
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)
            batch[value.name] = np.zeros([batch_size, *dims[1:]], dtype)
        shapes = _onnx_shapes_run(model, batch)
        method = "measured: onnxruntime tensor shapes"
    sizes = {name: _onnx_nbytes(*shapes[name]) for name in needed if name in shapes}
    peak = _activation_peak(ops, sizes, graph_inputs, graph_outputs)
    return MemoryAnalysis(weights + peak, weights, peak, method)


def _onnx_precision(path: Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    types = {i.name: i.data_type for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.TENSOR:
                    types[node.output[0]] = attribute.t.data_type
    bits = {onnx.TensorProto.INT8: (8, "int8"), onnx.TensorProto.UINT8: (8, "uint8"),
            onnx.TensorProto.INT4: (4, "int4"), onnx.TensorProto.UINT4: (4, "uint4")}
    qdq = [bits[types[n.input[0]]] for n in model.graph.node
           if n.op_type == "DequantizeLinear" and types.get(n.input[0]) in bits]
    if qdq:
        return f"{min(qdq)[1]} QDQ"
    counts: dict[str, int] = {}
    for initializer in model.graph.initializer:
        if initializer.data_type in (onnx.TensorProto.INT32, onnx.TensorProto.INT64):
            continue
        name = onnx.helper.tensor_dtype_to_np_dtype(initializer.data_type).name
        counts[name] = counts.get(name, 0) + int(np.prod(initializer.dims, dtype=np.int64))
    return max(counts, key=counts.get) if counts else "float32"

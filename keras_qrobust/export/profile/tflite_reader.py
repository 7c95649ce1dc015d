"""What a ``.tflite`` file holds, read with the LiteRT interpreter: its tensors' memory and its precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .liveness import MemoryAnalysis, _activation_peak


def _tflite_memory(path: Path, batch_size: int) -> MemoryAnalysis:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # no XNNPACK delegate: it would hide the ops and keep intermediate shapes at batch 1
    interpreter = Interpreter(model_path=str(path),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    inputs = interpreter.get_input_details()
    for detail in inputs:
        interpreter.resize_tensor_input(detail["index"], [batch_size, *detail["shape"][1:]])
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = [(tuple(int(i) for i in op["inputs"] if i >= 0), tuple(int(i) for i in op["outputs"] if i >= 0))
           for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    graph_inputs = [int(d["index"]) for d in inputs]
    graph_outputs = [int(d["index"]) for d in interpreter.get_output_details()]
    produced = {t for _, outs in ops for t in outs}
    used = {t for ins, _ in ops for t in ins}

    def nbytes(index: int) -> int:
        detail = tensors[index]
        return int(np.prod(detail["shape"], dtype=np.int64)) * np.dtype(detail["dtype"]).itemsize

    constants = used - produced - set(graph_inputs)
    activations = {t: nbytes(t) for t in (produced | set(graph_inputs) | set(graph_outputs))}
    weights = sum(nbytes(t) for t in constants)
    peak = _activation_peak(ops, activations, graph_inputs, graph_outputs)
    return MemoryAnalysis(weights + peak, weights, peak, "static: tflite tensors (LiteRT, no delegate)")


def _tflite_precision(path: Path) -> str:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    produced = {int(t) for op in ops for t in op["outputs"]}
    inputs = {int(d["index"]) for d in interpreter.get_input_details()}
    elements: dict[str, int] = {}
    consumers: dict[int, list] = {}
    for op in ops:
        for t in op["inputs"]:
            t = int(t)
            if t >= 0 and t not in produced and t not in inputs:
                consumers.setdefault(t, []).append(op)
    for t in consumers:
        dtype = np.dtype(tensors[t]["dtype"]).name
        if dtype in ("int32", "int64"):  # shapes, axes, biases
            continue
        elements[dtype] = elements.get(dtype, 0) + int(np.prod(tensors[t]["shape"], dtype=np.int64))
    if not elements:
        return "float32"
    weight = max(elements, key=elements.get)
    activation_counts: dict[str, int] = {}
    for t, ops_using in consumers.items():
        if np.dtype(tensors[t]["dtype"]).name != weight:
            continue
        for op in ops_using:
            for out in op["outputs"]:
                name = np.dtype(tensors[int(out)]["dtype"]).name
                activation_counts[name] = activation_counts.get(name, 0) + 1
    activation = max(activation_counts, key=activation_counts.get) if activation_counts else weight
    return weight if activation == weight else f"{weight} weights, {activation} activations"

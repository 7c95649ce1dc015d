"""Deployment profile of exported models: the columns of Zhou et al. 2022, Table I.

Zhou et al. (2022) compare deployed models by format, precision, file size, number of
parameters, number of multiply-accumulates (MACs), peak memory and inference latency, the
latency being measured on a batch of 32 inputs and averaged over 100 executions. ``profile``
builds the same table for ``.tflite`` / ``.onnx`` / ``.fbz`` artifacts (run in their own
runtime through :func:`keras_qrobust.export.runtime.load`) and for tf_keras models:

>>> table = profile(["model_f32.tflite", "model_int8.tflite", "model.onnx"], keras_model=model)
>>> print(table.to_markdown())

Definitions (all deterministic except latency):

* **size**: the artifact's file size (``os.path.getsize``); MB = 10**6 bytes. For a Keras
  model (no file) the bytes of its weights as held in memory.
* **#params**: :func:`count_params` of the Keras model (the exported files compute the same
  network); ``None`` for a file profiled without ``keras_model``.
* **#MACs**: :func:`count_macs`, multiply-accumulates for one input example.
* **peak memory**: :func:`peak_memory`, weights bytes plus the peak of live activation bytes
  over the op execution order, for a batch of ``batch_size``.
* **latency**: wall time of one ``predict`` call on one batch, ``runs`` times after ``warmup``
  untimed runs; mean and sample standard deviation in milliseconds.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .._keras import check_model, keras, tf
from ..layers import TensorQuantizer
from . import runtime

__all__ = [
    "ProfileRow",
    "ProfileTable",
    "count_params",
    "weight_bytes",
    "count_macs",
    "peak_memory",
    "memory_analysis",
    "profile",
]

MB = 1_000_000

# ----------------------------------------------------------------------------- Keras helpers


def _check_graph_model(model, function: str) -> "keras.Model":
    """A built Sequential/functional tf_keras model, else a ValueError saying why not."""
    model = check_model(model)
    if not getattr(model, "_is_graph_network", False):
        if not model.built:
            raise ValueError(
                f"{function}: model '{model.name}' is not built; give it an input shape "
                "(keras.Input(...) as its first layer, or model.build(input_shape)) first"
            )
        raise ValueError(
            f"{function}: model '{model.name}' is a subclassed model ({type(model).__name__}); its layer graph "
            "cannot be read. Use a Sequential or functional model (keras.Model(inputs, outputs))."
        )
    return model


def _nodes_in_order(model) -> list:
    """The model's graph nodes in execution (topological) order: highest depth first."""
    return [node for depth in sorted(model._nodes_by_depth, reverse=True) for node in model._nodes_by_depth[depth]]


def _quantizer_state_ids(model) -> set[int]:
    """ids of the variables that are quantizer state, not network parameters: the ranges
    and flags of keras_qrobust Quantized* layers and the extra weights of tfmot wrappers."""
    ids: set[int] = set()

    def visit(layer) -> None:
        if isinstance(layer, keras.Model):
            for inner in layer.layers:
                visit(inner)
            return
        if isinstance(layer, keras.layers.Wrapper):
            inner_ids = {id(w) for w in layer.layer.weights}
            ids.update(id(w) for w in layer.weights if id(w) not in inner_ids)
            visit(layer.layer)
            return
        if isinstance(layer, TensorQuantizer):
            ids.update(id(w) for w in layer.weights)
            return
        state = getattr(layer, "_quantizer_weights", None)  # a tracked _DictWrapper, not a Mapping
        if hasattr(state, "values"):
            for value in state.values():
                for variable in (value.values() if hasattr(value, "values") else [value]):
                    if isinstance(variable, tf.Variable):
                        ids.add(id(variable))

    for layer in model.layers:
        visit(layer)
    return ids


def count_params(keras_model) -> int:
    """Number of scalars in the model's weights, trainable and non-trainable (BatchNorm
    statistics included), as ``model.count_params()``; quantizer state (the calibrated
    ranges and flags of ``Quantized*`` layers, tfmot wrapper min/max/step variables) is
    not a network parameter and is left out."""
    model = _check_graph_model(keras_model, "count_params")
    return sum(int(np.prod(w.shape.as_list(), dtype=np.int64)) for w in _parameters(model))


def _parameters(model):
    """The model's weights, each once, without quantizer state."""
    excluded = _quantizer_state_ids(model)
    seen: set[int] = set()
    for weight in model.weights:
        if id(weight) not in seen and id(weight) not in excluded:
            seen.add(id(weight))
            yield weight


def weight_bytes(keras_model) -> int:
    """Bytes of the network's parameters stored at their bit width: a kernel a ``Quantized*``
    layer quantizes to b bits takes ⌈n·b/8⌉ bytes (packed, as INT4 ONNX stores ≤ 4 bits; TFLite
    keeps int8 containers, see docs/limits.md), every other parameter (biases on their int32
    grid, float layers) its dtype's size. Quantizer state is not counted (as :func:`count_params`)."""
    model = _check_graph_model(keras_model, "weight_bytes")
    packed: dict[int, int] = {}
    for layer in model.layers:
        for attr, argument in getattr(layer, "kernel_quantizer_args", {}).items():
            bits = getattr(layer.quantizers[argument], "bits", None)
            if bits is not None:
                packed[id(getattr(layer, attr))] = int(bits)
    total = 0
    for weight in _parameters(model):
        count = int(np.prod(weight.shape.as_list(), dtype=np.int64))
        bits = packed.get(id(weight))
        total += -(-count * bits // 8) if bits else count * weight.dtype.size
    return total


# weight layers with elementwise or lookup arithmetic only: 0 MACs
_ZERO_MAC_WEIGHT_LAYERS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.PReLU,
    keras.layers.ReLU,
    keras.layers.Embedding,
)


def _shape(tensor) -> tuple:
    return tuple(tf.TensorShape(tensor.shape).as_list())


def _known(shape: Sequence, what: str) -> list[int]:
    if any(d is None for d in shape):
        raise ValueError(
            f"count_macs: {what} has unknown dimensions {tuple(shape)}; give the model a fixed input shape"
        )
    return [int(d) for d in shape]


def _layer_macs(layer, input_shape: tuple, output_shape: tuple) -> int:
    """MACs of one call of ``layer`` on one example (shapes include the batch axis)."""
    while isinstance(layer, keras.layers.Wrapper):  # tfmot QuantizeWrapper & co.
        layer = layer.layer
    if not layer.weights:
        return 0
    name = f"layer '{layer.name}' ({type(layer).__name__})"
    sep = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
    depthwise = tuple(c for c in (getattr(keras.layers, "DepthwiseConv1D", None), keras.layers.DepthwiseConv2D) if c)
    transpose = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
    conv = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    if isinstance(layer, sep):
        out = _known(output_shape[1:], name)
        *kernel, c_in, multiplier = layer.depthwise_kernel.shape.as_list()
        spatial = int(np.prod(out[:-1], dtype=np.int64))
        return spatial * int(np.prod(kernel)) * c_in * multiplier + spatial * c_in * multiplier * out[-1]
    if isinstance(layer, depthwise):
        out = _known(output_shape[1:], name)
        kernel = layer.depthwise_kernel.shape.as_list()[:-2]
        return int(np.prod(out, dtype=np.int64)) * int(np.prod(kernel))
    if isinstance(layer, transpose):  # every input element meets kh·kw·c_out weights
        inputs = _known(input_shape[1:], name)
        kernel = layer.kernel.shape.as_list()  # (*k, c_out, c_in)
        return int(np.prod(inputs, dtype=np.int64)) * int(np.prod(kernel[:-1]))
    if isinstance(layer, conv):  # out elements × kh·kw·c_in/groups
        out = _known(output_shape[1:], name)
        return int(np.prod(out, dtype=np.int64)) * int(np.prod(layer.kernel.shape.as_list()[:-1]))
    if isinstance(layer, keras.layers.Dense):  # out elements × in features
        out = _known(output_shape[1:], name)
        return int(np.prod(out, dtype=np.int64)) * int(layer.kernel.shape[0])
    if isinstance(layer, _ZERO_MAC_WEIGHT_LAYERS) or not layer.trainable_weights:
        return 0
    raise ValueError(
        f"count_macs does not know how to count the MACs of {name}; supported are Dense, Conv1D/2D/3D "
        "(and transposed), DepthwiseConv2D, SeparableConv1D/2D and their keras_qrobust Quantized* twins"
    )


def count_macs(keras_model) -> int:
    """Multiply-accumulates of one forward pass on one input example.

    Dense: in·out (times the leading axes of a Dense applied to sequences); Conv2D:
    out_h·out_w·kh·kw·(c_in/groups)·c_out; DepthwiseConv2D: out_h·out_w·kh·kw·c_in·multiplier;
    SeparableConv2D: that depthwise count plus the pointwise out_h·out_w·(c_in·multiplier)·c_out.
    Quantized*/Lipschitz/tfmot-wrapped twins count as the layer they wrap; pooling, activation,
    reshape, normalization (folded at export) and biases count 0. A layer shared by several
    calls counts once per call; a nested model counts as its own layers.
    """
    model = _check_graph_model(keras_model, "count_macs")
    total = 0
    for node in _nodes_in_order(model):
        layer = node.layer
        if node.is_input:
            continue
        if isinstance(layer, keras.Model):
            total += count_macs(layer)
            continue
        inputs = tf.nest.flatten(node.keras_inputs)
        outputs = tf.nest.flatten(node.outputs)
        if not inputs or not outputs:
            continue
        total += _layer_macs(layer, _shape(inputs[0]), _shape(outputs[0]))
    return int(total)


# ----------------------------------------------------------------------------- peak memory


@dataclass(frozen=True)
class MemoryAnalysis:
    """The parts of :func:`peak_memory`: ``weights_bytes + activations_bytes = peak_bytes``."""

    peak_bytes: int
    weights_bytes: int
    activations_bytes: int
    method: str


def _activation_peak(ops: Sequence[tuple[Sequence, Sequence]], sizes: Mapping, graph_inputs: Sequence,
                     graph_outputs: Sequence) -> int:
    """Peak of the summed sizes of the live tensors over ``ops`` (``(inputs, outputs)`` in
    execution order). A tensor lives from the op producing it (graph inputs: from the start)
    to its last consumer (graph outputs: to the end); an op's inputs and outputs are alive
    together while it runs. Only tensors in ``sizes`` (the activations) are counted."""
    end = len(ops)
    last_use: dict = {}
    for i, (inputs, _) in enumerate(ops):
        for tensor in inputs:
            last_use[tensor] = i
    for tensor in graph_outputs:
        last_use[tensor] = end
    alive = {t: sizes[t] for t in graph_inputs if t in sizes}
    peak = sum(alive.values())
    for i, (_, outputs) in enumerate(ops):
        for tensor in outputs:
            if tensor in sizes:
                alive[tensor] = sizes[tensor]
        peak = max(peak, sum(alive.values()))
        for tensor in [t for t in alive if last_use.get(t, i) <= i]:
            del alive[tensor]
    return int(peak)


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


def _keras_weight_bytes(model) -> int:
    seen: set[int] = set()
    total = 0
    for weight in model.weights:
        if id(weight) not in seen:
            seen.add(id(weight))
            total += int(np.prod(weight.shape.as_list(), dtype=np.int64)) * weight.dtype.size
    return total


def _keras_memory(model, batch_size: int) -> MemoryAnalysis:
    model = _check_graph_model(model, "peak_memory")
    key = lambda t: (id(t._keras_history.layer), t._keras_history.node_index, t._keras_history.tensor_index)
    ops, sizes = [], {}
    unknown = []
    for node in _nodes_in_order(model):
        outputs = tf.nest.flatten(node.outputs)
        for tensor in outputs:
            shape = _shape(tensor)[1:]
            if any(d is None for d in shape):
                unknown.append(tensor)
                continue
            sizes[key(tensor)] = batch_size * int(np.prod(shape, dtype=np.int64)) * tf.as_dtype(tensor.dtype).size
        if not node.is_input:
            ops.append((tuple(key(t) for t in tf.nest.flatten(node.keras_inputs)), tuple(key(t) for t in outputs)))
    method = "static: keras layer output shapes"
    if unknown:  # measure the shapes on a zero batch
        shapes = [_shape(t) for t in model.inputs]
        if any(d is None for s in shapes for d in s[1:]):
            raise ValueError(f"peak_memory: model '{model.name}' has inputs of unknown shape {shapes}")
        probe = keras.Model(model.inputs, unknown)
        values = probe.predict_on_batch([np.zeros([batch_size, *s[1:]], t.dtype) for s, t in zip(shapes, model.inputs)])
        for tensor, value in zip(unknown, values if isinstance(values, list) else [values]):
            sizes[key(tensor)] = int(np.asarray(value).nbytes)
        method = "measured: keras layer output shapes"
    graph_inputs = [key(t) for t in model.inputs]
    graph_outputs = [key(t) for t in model.outputs]
    peak = _activation_peak(ops, sizes, graph_inputs, graph_outputs)
    weights = _keras_weight_bytes(model)
    return MemoryAnalysis(weights + peak, weights, peak, method)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _measured_memory(deployed: runtime.DeployedModel, batch: np.ndarray) -> MemoryAnalysis:
    """Fallback for formats that cannot be analysed: the file size plus the largest increase
    of the process's resident memory, sampled every 0.2 ms, during one ``predict``."""
    if not os.path.exists("/proc/self/statm"):
        raise ValueError(f"{deployed.path}: its memory can neither be analysed nor measured on this platform")
    base = _rss_bytes()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        deployed.predict(batch, batch_size=len(batch))
    finally:
        done.set()
        sampler.join()
    activations = max(peak[0], _rss_bytes()) - base
    weights = os.path.getsize(deployed.path)
    return MemoryAnalysis(weights + activations, weights, activations, "measured: RSS increase during predict")


def _artifact_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.suffix.lower() not in runtime.FORMATS:
        raise ValueError(f"{path}: unknown artifact type {path.suffix!r}; expected one of {', '.join(runtime.FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (export it first with keras_qrobust.export)")
    return path


def memory_analysis(artifact_or_model, batch_size: int = 32, *, x=None) -> MemoryAnalysis:
    """:func:`peak_memory` with its parts and the method used (see there)."""
    _check_positive_int(batch_size, "batch_size")
    if isinstance(artifact_or_model, keras.Model) or not isinstance(
            artifact_or_model, (str, os.PathLike, runtime.DeployedModel)):
        return _keras_memory(artifact_or_model, batch_size)
    deployed = artifact_or_model if isinstance(artifact_or_model, runtime.DeployedModel) else None
    path = deployed.path if deployed is not None else _artifact_path(artifact_or_model)
    kind = runtime.FORMATS.get(path.suffix.lower())
    analyse = {"tflite": _tflite_memory, "onnx": _onnx_memory}.get(kind)
    if analyse is not None:
        try:
            return analyse(path, batch_size)
        except Exception as error:  # noqa: BLE001 - fall back to a measurement, and say so
            warnings.warn(f"{path.name}: static memory analysis failed ({error}); measuring instead", stacklevel=2)
    deployed = deployed or runtime.load(path)
    batch = _batch(x, deployed.input_shape, batch_size)
    return _measured_memory(deployed, batch)


def peak_memory(artifact_or_model, batch_size: int = 32) -> int:
    """Peak memory in bytes of one inference on a batch of ``batch_size``.

    Defined as **weights bytes + peak live activation bytes**:

    * weights bytes: the constant tensors as stored in the artifact (TFLite constant
      tensors, ONNX initializers and Constant nodes; int4 counts half a byte), or
      the Keras model's weights (float32: 4 bytes each);
    * activations: walking the ops in execution order, a tensor is alive from the op that
      produces it (graph inputs: from the start) to its last consumer (graph outputs: to the
      end), an op's inputs and outputs being alive together while it runs; the peak over the
      ops of the summed bytes (elements × dtype size, batch axis = ``batch_size``) of the live
      tensors. No in-place reuse, arena sharing or kernel scratch buffers (im2col) are assumed,
      so the number is comparable across formats and does not depend on the machine.

    Tensors and ops come from the LiteRT interpreter (``.tflite``, resized to the batch, no
    delegate), from onnx shape inference with the batch set (``.onnx``; the shapes are
    measured with onnxruntime when inference leaves some unknown), or from the layer graph
    (Keras, output shapes; a nested model counts as one op). A format that cannot be analysed
    (``.fbz``) is measured: file size + resident-memory increase during one ``predict``.
    :func:`memory_analysis` also returns the parts and the method.
    """
    return memory_analysis(artifact_or_model, batch_size).peak_bytes


# ----------------------------------------------------------------------------- precision


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


def _keras_precision(model) -> str:
    from .. import layers as kq_layers

    quantized = (*kq_layers.QUANTIZED_LAYERS.values(), kq_layers.QuantizedReLU)

    def walk(layers) -> Iterator:
        for layer in layers:
            if isinstance(layer, keras.Model):
                yield from walk(layer.layers)
            elif isinstance(layer, keras.layers.Wrapper):
                yield layer
                yield from walk([layer.layer])
            else:
                yield layer

    fake = any(isinstance(layer, quantized) or type(layer).__name__.startswith("Quantize")
               for layer in walk(model.layers))
    return "float32 (fake-quant)" if fake else "float32"


def _precision(path: Path) -> str:
    kind = runtime.FORMATS[path.suffix.lower()]
    if kind == "tflite":
        return _tflite_precision(path)
    if kind == "onnx":
        return _onnx_precision(path)
    return "akida"


# ----------------------------------------------------------------------------- table


@dataclass(frozen=True)
class ProfileRow:
    """One artifact's deployment profile (one row of Zhou et al. 2022, Table I)."""

    name: str
    format: str  # "tflite", "onnx", "akida" or "keras"
    precision: str
    size_bytes: int  # file size; a Keras model: bytes of its weights
    params: int | None
    macs: int | None  # per input example
    peak_memory_bytes: int
    memory_method: str
    latency_ms_mean: float  # one predict on a batch of ``batch_size``
    latency_ms_std: float
    batch_size: int
    runs: int
    path: str | None = None
    weights_bytes: int | None = None  # the weights part of peak_memory_bytes
    latencies_ms: tuple[float, ...] = field(default=(), repr=False)

    @property
    def size_mb(self) -> float:
        return self.size_bytes / MB

    @property
    def peak_memory_mb(self) -> float:
        return self.peak_memory_bytes / MB

    @property
    def bytes_per_param(self) -> float | None:
        """File size / #params (about 4 for float32, about 1 for int8); None without #params."""
        return self.size_bytes / self.params if self.params else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["latencies_ms"] = list(self.latencies_ms)
        data.update(size_mb=self.size_mb, peak_memory_mb=self.peak_memory_mb, bytes_per_param=self.bytes_per_param)
        return data


_COLUMNS = ("Model", "Format", "Precision", "Size (bytes)", "Size (MB)", "#Params", "Bytes/param", "#MACs",
            "Peak memory (MB)", "Memory method", "Latency mean (ms)", "Latency std (ms)")


def _cell(value, fmt: str = "{}") -> str:
    return "–" if value is None else fmt.format(value).replace("|", "\\|")


@dataclass(frozen=True)
class ProfileTable:
    """Profile rows with Markdown and JSON views."""

    rows: tuple[ProfileRow, ...]
    batch_size: int = 32
    runs: int = 100
    warmup: int = 5

    def __iter__(self) -> Iterator[ProfileRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | str) -> ProfileRow:
        if isinstance(key, str):
            for row in self.rows:
                if row.name == key:
                    return row
            raise KeyError(f"no row named {key!r}; rows: {', '.join(r.name for r in self.rows)}")
        return self.rows[key]

    def to_markdown(self) -> str:
        """A Markdown table with the Table I columns (MB with 3 decimals, ms with 2)."""
        lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 6 + ["---"] + ["---:"] * 2)
                 + "|"]
        for r in self.rows:
            cells = [_cell(r.name), r.format, _cell(r.precision), f"{r.size_bytes:,}", f"{r.size_mb:.3f}",
                     _cell(r.params, "{:,}"), _cell(r.bytes_per_param, "{:.2f}"), _cell(r.macs, "{:,}"),
                     f"{r.peak_memory_mb:.3f}", _cell(r.memory_method), f"{r.latency_ms_mean:.2f}",
                     f"{r.latency_ms_std:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
        caption = (f"Latency: one batch of {self.batch_size}, mean ± std over {self.runs} runs after "
                   f"{self.warmup} warm-up runs; peak memory for a batch of {self.batch_size}; MB = 10^6 bytes.")
        return "\n".join(lines) + "\n\n" + caption + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: ``{"batch_size", "runs", "warmup", "rows": [...]}``."""
        data = {"batch_size": self.batch_size, "runs": self.runs, "warmup": self.warmup,
                "rows": [row.to_dict() for row in self.rows]}
        return json.loads(json.dumps(data, default=_json_default))


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (Path, np.dtype)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# ----------------------------------------------------------------------------- profile


def _check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _batch(x, input_shape: Sequence[int], batch_size: int) -> np.ndarray:
    """``batch_size`` rows of ``x`` (repeated if ``x`` is shorter), or zeros of ``input_shape``."""
    if x is None:
        if any(d is None or d < 0 for d in input_shape):
            raise ValueError(f"the input shape {tuple(input_shape)} has unknown dimensions: pass x")
        return np.zeros((batch_size, *input_shape), np.float32)
    x = np.asarray(x, np.float32)
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"x must hold at least one example, got shape {x.shape}")
    if len(x) < batch_size:
        x = x[np.arange(batch_size) % len(x)]
    return np.ascontiguousarray(x[:batch_size])


def _time(call, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def _normalise(artifacts, names) -> list[tuple[str | None, Any]]:
    if isinstance(artifacts, (str, os.PathLike, keras.Model, runtime.DeployedModel)):
        artifacts = [artifacts]
    if isinstance(artifacts, Mapping):
        if names is not None:
            raise ValueError("give names either as the keys of artifacts or as names=, not both")
        return [(str(name), item) for name, item in artifacts.items()]
    items = list(artifacts)
    if names is None:
        return [(None, item) for item in items]
    names = list(names)
    if len(names) != len(items):
        raise ValueError(f"got {len(names)} names for {len(items)} artifacts")
    return list(zip(map(str, names), items))


def _given_precision(precisions, index: int, name: str) -> str | None:
    if precisions is None:
        return None
    if isinstance(precisions, str):
        return precisions
    if isinstance(precisions, Mapping):
        return precisions.get(name)
    precisions = list(precisions)
    return precisions[index] if index < len(precisions) else None


def profile(artifacts, *, keras_model=None, x=None, batch_size: int = 32, runs: int = 100, warmup: int = 5,
            names: Sequence[str] | None = None,
            precisions: Sequence[str | None] | Mapping[str, str] | str | None = None,
            num_threads: int | None = None) -> ProfileTable:
    """Profile artifacts as in Zhou et al. 2022, Table I.

    ``artifacts``: paths (``.tflite``/``.onnx``/``.fbz``, run through :func:`runtime.load`),
    loaded :class:`~keras_qrobust.export.runtime.DeployedModel` s and/or tf_keras models
    (format ``"keras"``, run with ``predict_on_batch``), as a list or a ``{name: artifact}``
    mapping. ``keras_model`` gives #params/#MACs of the files (the network they compute);
    ``x`` the input batch (its first ``batch_size`` rows, repeated if fewer; zeros of the
    input shape without it). ``precisions`` (a list aligned with ``artifacts``, a mapping by
    name, or one string) overrides the inferred precision: tflite the weight dtype ("int8",
    "float32", "int8 weights, float32 activations" for dynamic range); onnx "int8 QDQ" /
    "uint8 QDQ" / "int4 QDQ" by the narrowest initializer a DequantizeLinear reads, else the float
    dtype; keras "float32 (fake-quant)" with quantized layers, else "float32".
    ``num_threads`` is passed to the runtimes. Latency is the wall time of one ``predict`` of
    the batch, ``runs`` timed runs after ``warmup`` untimed ones.
    """
    batch_size = _check_positive_int(batch_size, "batch_size")
    runs = _check_positive_int(runs, "runs")
    warmup = _check_positive_int(warmup, "warmup", minimum=0)
    items = _normalise(artifacts, names)
    if not items:
        raise ValueError("no artifacts to profile")
    if keras_model is not None:
        keras_params, keras_macs = count_params(keras_model), count_macs(keras_model)
    else:
        keras_params = keras_macs = None
    rows = []
    for index, (name, item) in enumerate(items):
        if isinstance(item, keras.Model) or not isinstance(item, (str, os.PathLike, runtime.DeployedModel)):
            model = _check_graph_model(item, "profile")
            batch = _batch(x, tuple(model.input_shape[1:]), batch_size)
            memory = _keras_memory(model, batch_size)
            times = _time(lambda: model.predict_on_batch(batch), runs, warmup)
            name = name or model.name
            precision = _given_precision(precisions, index, name) or _keras_precision(model)
            fmt, path, size = "keras", None, _keras_weight_bytes(model)
            params, macs = count_params(model), count_macs(model)
        else:
            deployed = item if isinstance(item, runtime.DeployedModel) else runtime.load(_artifact_path(item),
                                                                                         num_threads)
            path = deployed.path
            name = name or path.name
            batch = _batch(x, deployed.input_shape, batch_size)
            memory = memory_analysis(deployed, batch_size, x=batch)
            times = _time(lambda: deployed.predict(batch, batch_size=batch_size), runs, warmup)
            precision = _given_precision(precisions, index, name) or _precision(path)
            fmt, size = deployed.format, os.path.getsize(path)
            path = str(path)
            params, macs = keras_params, keras_macs
        std = float(np.std(times, ddof=1)) if len(times) > 1 else 0.0
        rows.append(ProfileRow(
            name=name, format=fmt, precision=precision, size_bytes=int(size), params=params, macs=macs,
            peak_memory_bytes=int(memory.peak_bytes), memory_method=memory.method,
            latency_ms_mean=float(np.mean(times)), latency_ms_std=std if math.isfinite(std) else 0.0,
            batch_size=batch_size, runs=runs, path=path, weights_bytes=int(memory.weights_bytes),
            latencies_ms=tuple(float(t) for t in times),
        ))
    return ProfileTable(tuple(rows), batch_size=batch_size, runs=runs, warmup=warmup)

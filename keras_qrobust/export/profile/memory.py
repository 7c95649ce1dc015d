"""Peak memory of one inference: analysed from the file or the layer graph, measured otherwise."""

from __future__ import annotations

import os
import threading
import time
import warnings

import numpy as np

from ..._keras import keras, tf
from .. import runtime
from ._common import _batch, _check_graph_model, _check_positive_int, _nodes_in_order, _shape
from .liveness import MemoryAnalysis, _activation_peak
from .onnx_reader import _onnx_memory
from .params import _keras_weight_bytes
from .tflite_reader import _tflite_memory

__all__ = ["memory_analysis", "peak_memory"]


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


def memory_analysis(artifact_or_model, batch_size: int = 32, *, x=None) -> MemoryAnalysis:
    """:func:`peak_memory` with its parts and the method used (see there)."""
    _check_positive_int(batch_size, "batch_size")
    if isinstance(artifact_or_model, keras.Model) or not isinstance(
            artifact_or_model, (str, os.PathLike, runtime.DeployedModel)):
        return _keras_memory(artifact_or_model, batch_size)
    deployed = artifact_or_model if isinstance(artifact_or_model, runtime.DeployedModel) else None
    path = deployed.path if deployed is not None else runtime.check_artifact_path(artifact_or_model)
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

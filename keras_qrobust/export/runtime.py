"""Run an exported artifact in its own runtime with a Keras-like ``predict``.

``load(path)`` picks the runtime by extension: ``.tflite`` → LiteRT (``ai_edge_litert``),
``.onnx`` → onnxruntime (CPU), ``.fbz`` → Akida (software backend, needs the ``akida``
extra). Every loaded model takes the float inputs the Keras model takes (e.g. images in
[0, 1]); int8 input/output quantization is done here with the artifact's own scale and zero
point, so accuracy, transfer attacks and UAPs are scored on exactly what the device runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DeployedModel", "TFLiteModel", "ONNXModel", "load", "FORMATS"]

#: file extension -> format name
FORMATS = {".tflite": "tflite", ".onnx": "onnx", ".fbz": "akida"}


@dataclass(eq=False)  # compared (and hashed) by identity: attacks cache compiled loops per model
class DeployedModel:
    """An exported model loaded in its runtime. ``predict`` returns float scores."""

    path: Path
    format: str
    input_shape: tuple = field(default=())  # one example's shape, e.g. (28, 28, 1)

    def predict(self, x, batch_size: int = 256, verbose: int = 0) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if x.shape[1:] != tuple(self.input_shape):
            raise ValueError(
                f"{self.path.name} takes inputs of shape (n, {', '.join(map(str, self.input_shape))}); "
                f"got {x.shape}"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        outputs = [self._run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)

    def __call__(self, x) -> np.ndarray:
        return self.predict(x)

    @property
    def name(self) -> str:
        return self.path.name

    def _run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


def _quantize_input(x: np.ndarray, dtype, scale: float, zero_point: int) -> np.ndarray:
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    info = np.iinfo(dtype)
    # float32 division, round half to even: what onnxruntime's QuantizeLinear and the Keras
    # model's input quantizer (TensorQuantizer(rounding="half_even")) compute
    codes = np.round(np.asarray(x, np.float32) / np.float32(scale))
    return np.clip(codes + zero_point, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.integer):
        return y.astype(np.float32)
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


class TFLiteModel(DeployedModel):
    """A ``.tflite`` file run by the LiteRT interpreter (``ai_edge_litert``)."""

    def __init__(self, path: Path, num_threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        if len(self._interpreter.get_input_details()) != 1 or len(self._interpreter.get_output_details()) != 1:
            raise ValueError(f"{path} has several inputs or outputs; only single-input, single-output models run here")
        self._batch = int(self._input["shape"][0])
        super().__init__(Path(path), "tflite", tuple(int(d) for d in self._input["shape"][1:]))

    @property
    def input_details(self) -> dict:
        return dict(self._input)

    @property
    def output_details(self) -> dict:
        return dict(self._output)

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            self._interpreter.resize_tensor_input(self._input["index"], [batch, *self.input_shape])
            self._interpreter.allocate_tensors()
            self._input = self._interpreter.get_input_details()[0]
            self._output = self._interpreter.get_output_details()[0]
            self._batch = batch

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self._resize(len(batch))
        scale, zero_point = self._input["quantization"]
        self._interpreter.set_tensor(self._input["index"],
                                     _quantize_input(batch, self._input["dtype"], scale, zero_point))
        self._interpreter.invoke()
        out = self._interpreter.get_tensor(self._output["index"])
        return _dequantize(out, *self._output["quantization"])


class ONNXModel(DeployedModel):
    """An ``.onnx`` file run by onnxruntime on the CPU execution provider."""

    def __init__(self, path: Path, num_threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{path} has several inputs or outputs; only single-input, single-output models run here")
        self._input_name = inputs[0].name
        shape = tuple(int(d) if isinstance(d, int) else -1 for d in inputs[0].shape[1:])
        if any(d < 0 for d in shape):
            raise ValueError(f"{path}: the input shape {inputs[0].shape} has unknown dimensions besides the batch")
        super().__init__(Path(path), "onnx", shape)

    @property
    def session(self) -> Any:
        return self._session

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(None, {self._input_name: batch})[0], np.float32)


def load(path: str | os.PathLike, num_threads: int | None = None) -> DeployedModel:
    """Load an exported model (``.tflite``, ``.onnx`` or ``.fbz``) for ``predict``."""
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(f"{path}: unknown artifact type {path.suffix!r}; expected one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (export it first with keras_qrobust.export)")
    try:
        if kind == "tflite":
            return TFLiteModel(path, num_threads)
        if kind == "onnx":
            return ONNXModel(path, num_threads)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as error:  # the runtimes raise their own types for corrupt files
        raise ValueError(f"{path} could not be loaded by the {kind} runtime ({error}); is the file "
                         "complete?") from error
    from .akida import AkidaModel

    return AkidaModel(path)

"""``.onnx`` files run by onnxruntime on the CPU execution provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .base import DeployedModel

__all__ = ["ONNXModel"]


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

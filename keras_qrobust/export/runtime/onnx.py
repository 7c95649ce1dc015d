"""``.onnx`` files run by onnxruntime on the CPU execution provider."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .base import DeployedModel

__all__ = ["ONNXModel", "FLOAT_ARITHMETIC"]

#: ONNX ops that compute new values (a QDQ file's integer kernels replace them once fused)
FLOAT_ARITHMETIC = ("Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Sub", "Mul", "Div", "AveragePool",
                    "GlobalAveragePool", "ReduceMean", "ReduceSum", "Sum", "Mean", "HardSigmoid", "HardSwish",
                    "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Softmax")


class ONNXModel(DeployedModel):
    """An ``.onnx`` file run by onnxruntime on the CPU execution provider."""

    def __init__(self, path: Path, num_threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = num_threads
        self._num_threads = num_threads
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

    def optimized_graph(self):
        """The ``onnx.GraphProto`` onnxruntime runs for this file: its graph after every
        optimization of the default session (fusions into integer kernels, layout changes)."""
        import onnx
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="kq_ort_") as folder:
            options = ort.SessionOptions()
            options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
            options.log_severity_level = 3  # not the warning that a saved optimized graph is hardware-specific
            ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            return onnx.load(options.optimized_model_filepath).graph

    def float_ops(self) -> list[tuple[str, str]]:
        """``(op, output tensor)`` of every arithmetic op onnxruntime's optimized graph still
        runs in float (between a DequantizeLinear and a QuantizeLinear) instead of fusing it
        into an integer kernel: those round a float result, not an integer one."""
        return [(node.op_type, node.output[0]) for node in self.optimized_graph().node
                if node.domain in ("", "ai.onnx") and node.op_type in FLOAT_ARITHMETIC]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(None, {self._input_name: batch})[0], np.float32)

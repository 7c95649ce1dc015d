"""``.tflite`` files run by the LiteRT interpreter (``ai_edge_litert``), int8 I/O quantized here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DeployedModel

__all__ = ["TFLiteModel", "KERNELS"]

#: LiteRT's kernel sets: ``"default"`` — its default delegate, XNNPACK, where it takes the
#: ops (what LiteRT runs on phones and desktops); ``"reference"`` — the builtin kernels
#: alone, whose int8 requantization (fixed-point, rounding twice) is what microcontroller
#: runtimes run
KERNELS = ("default", "reference")


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

    def __init__(self, path: Path, num_threads: int | None = None, kernels: str = "default"):
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
        resolver = OpResolverType.AUTO if kernels == "default" else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        self.kernels = kernels
        self._interpreter = Interpreter(model_path=str(path), num_threads=num_threads,
                                        experimental_op_resolver_type=resolver)
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

    def undelegated_ops(self) -> list[tuple[str, str]]:
        """``(op, output tensor)`` of every op no delegate took: with ``kernels="default"``, the
        ops XNNPACK left to LiteRT's builtin kernels (which requantize in fixed point).

        The interpreter lists a delegated op as well as the DELEGATE node that runs it; an op
        is delegated when it lies between a DELEGATE node's inputs and its outputs."""
        ops = self._interpreter._get_ops_details()
        producer = {tensor: op for op in ops if op["op_name"] != "DELEGATE" for tensor in op["outputs"]}
        delegated = set()
        for delegate in (op for op in ops if op["op_name"] == "DELEGATE"):
            boundary, stack = set(delegate["inputs"]), list(delegate["outputs"])
            while stack:
                tensor = stack.pop()
                op = producer.get(tensor)
                if tensor in boundary or op is None or op["index"] in delegated:
                    continue
                delegated.add(op["index"])
                stack.extend(op["inputs"])
        names = {t["index"]: t["name"] for t in self._interpreter.get_tensor_details()}
        return [(op["op_name"], names.get(op["outputs"][0], "")) for op in ops
                if op["op_name"] != "DELEGATE" and op["index"] not in delegated]

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

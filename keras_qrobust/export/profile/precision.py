"""The precision column: inferred from the file's tensors, or fake-quant for a Keras model."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..._keras import keras
from ...layers import QUANTIZED_LAYERS, QuantizedReLU
from .. import runtime
from .onnx_reader import _onnx_precision
from .tflite_reader import _tflite_precision


def _keras_precision(model) -> str:
    quantized = (*QUANTIZED_LAYERS.values(), QuantizedReLU)

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

"""Full-integer int8 TFLite export (and a float32 baseline).

* RobustQuantizer models are lowered first (:func:`~keras_qrobust.export.lowering.lower`): every
  sub-8-bit grid is kept exactly inside int8 and the converter only reads the ranges.
* tfmot quantization-aware (8-bit) models convert as they are: their fake quants carry the
  ranges.
* Float models are quantized by the TFLite converter itself (post-training, calibrated on
  ``representative``) — the usual TFLite flow, for comparison.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._io import atomic_path, check_new_file
from .._keras import check_model, tf
from ..transforms._graph import UnsupportedModelError
from .lowering import is_robust_quantized, lower

__all__ = ["tflite", "convert_tflite", "convert_lowered", "is_tfmot_model", "PRECISIONS"]

PRECISIONS = ("int8", "float32")


def is_tfmot_model(model) -> bool:
    """True when ``model`` has tfmot quantize wrappers (QAT or tfmot PTQ)."""
    return any(type(layer).__name__ in ("QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer")
               for layer in model.layers)


def _tfmot_bits(model) -> set[int]:
    """Bit widths of the fake quants in a tfmot model (tfmot's own configs and keras_qrobust's)."""
    bits = set()
    for layer in model.layers:
        config = getattr(layer, "quantize_config", None)
        for name in ("weight_bits", "activation_bits", "num_bits"):
            if isinstance(getattr(config, name, None), int):
                bits.add(getattr(config, name))
        for quantizer in (getattr(config, "weight_quantizer", None), getattr(config, "activation_quantizer", None),
                          getattr(layer, "quantizer", None)):
            for name in ("num_bits", "bits"):
                if isinstance(getattr(quantizer, name, None), int):
                    bits.add(getattr(quantizer, name))
    return bits


def _representative_array(representative, model) -> np.ndarray:
    array = np.asarray(representative, np.float32)
    expected = tuple(model.input_shape[1:])
    if array.ndim < 2 or array.shape[1:] != expected or not len(array):
        raise ValueError(f"representative must be an array of model inputs shaped (n, "
                         f"{', '.join(map(str, expected))}); got {array.shape}: pass training inputs of the model's "
                         "input shape, e.g. representative=x_train[:512]")
    if not np.all(np.isfinite(array)):
        raise ValueError("representative contains NaN or inf: pass finite model inputs (a few hundred training "
                         "inputs, e.g. representative=x_train[:512])")
    return array


def convert_tflite(model, representative=None, *, precision: str = "int8", int8_io: bool = True) -> tuple[bytes,
                                                                                                          dict]:
    """Convert ``model`` to TFLite bytes; also return what the lowering guarantees."""
    model = check_model(model)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    info: dict = {"source": "float", "precision": precision}
    if precision == "float32":
        if is_robust_quantized(model) or is_tfmot_model(model):
            raise UnsupportedModelError("precision='float32' exports a float model; this one is quantized (export it "
                                        "with precision='int8', or export the float model it came from).")
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        return converter.convert(), info
    if is_robust_quantized(model):
        lowered = lower(model, None if representative is None else _representative_array(representative, model))
        info.update(source="RobustQuantizer", exact=lowered.exact, calibrated=list(lowered.calibrated),
                    requantized_weights=list(lowered.requantized_weights), weight_bits=dict(lowered.weight_bits))
        return convert_lowered(lowered.model, int8_io), info
    if is_tfmot_model(model):
        low_bits = sorted(b for b in _tfmot_bits(model) if b != 8)
        if low_bits:
            raise UnsupportedModelError(
                f"This tfmot model uses {low_bits}-bit fake quants; the TFLite converter only reads 8-bit ones and "
                "would silently re-quantize. Quantize the float model with keras_qrobust.RobustQuantizer at the same "
                "wXaY setting: its export lowers sub-8-bit grids exactly.")
        info["source"] = "tfmot"
        return _int8_converter(model, int8_io).convert(), info
    if representative is None:
        raise ValueError("a float model needs representative inputs for full-integer quantization: pass "
                         "representative=x_train[:512] (or precision='float32')")
    array = _representative_array(representative, model)
    converter = _int8_converter(model, int8_io)
    converter.representative_dataset = lambda: ([array[i:i + 1]] for i in range(min(len(array), 512)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert(), info


def _int8_converter(model, int8_io: bool):
    """A TFLite converter for an int8 model (``Optimize.DEFAULT``; int8 input and output with ``int8_io``)."""
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter


def convert_lowered(lowered_model, int8_io: bool = True) -> bytes:
    """TFLite bytes of a lowered model (:func:`~keras_qrobust.export.lowering.lower`) or of a
    part of one ending at a fake quant: its fake quants carry every range."""
    return _int8_converter(lowered_model, int8_io).convert()


def _strip_names(blob: bytes) -> bytes:
    """Drop tensor names and signature strings (TF op paths: bytes that no runtime needs)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(blob))
    flatbuffer_utils.strip_strings(model)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def tflite(model, path: str | os.PathLike, representative=None, *, int8_io: bool = True, precision: str = "int8",
           strip_names: bool = True, overwrite: bool = False) -> Path:
    """Export ``model`` to a full-integer int8 (or float32) ``.tflite`` file at ``path``.

    Args:
        model: a RobustQuantizer model (lowered exactly, any bits 1-8), a tfmot 8-bit model,
            or a float model (quantized by the TFLite converter).
        representative: model inputs (a few hundred training inputs) that calibrate all
            ranges of a float model, and the tensors a RobustQuantizer model leaves float
            (a weight-only model's activations); a model quantized with activation bits
            carries its own ranges and needs none.
        int8_io: int8 input and output tensors (else float32 ones around the int8 graph).
        precision: ``"int8"`` (full integer) or ``"float32"`` (a float baseline).
        strip_names: drop tensor names and signature strings to keep the file small.
        overwrite: replace an existing file (else FileExistsError, before any work).
    """
    path = check_new_file(path, ".tflite", overwrite, "a TFLite export")
    blob, _ = convert_tflite(model, representative, precision=precision, int8_io=int8_io)
    if strip_names:
        blob = _strip_names(blob)
    with atomic_path(path, overwrite=overwrite) as temporary:
        temporary.write_bytes(blob)
    return path

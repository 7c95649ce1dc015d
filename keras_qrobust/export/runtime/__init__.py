"""Run an exported artifact in its own runtime with a Keras-like ``predict``.

``load(path)`` picks the runtime by extension: ``.tflite`` → LiteRT (``ai_edge_litert``),
``.onnx`` → onnxruntime (CPU), ``.fbz`` → Akida (software backend, needs the ``akida``
extra). Every loaded model takes the float inputs the Keras model takes (e.g. images in
[0, 1]); int8 input/output quantization is done here with the artifact's own scale and zero
point, so accuracy, transfer attacks and UAPs are scored on exactly what the device runs.

Every runtime is a :class:`DeployedModel` (``base``); ``tflite``, ``onnx`` and ``akida``
hold one runtime each. Their modules import only numpy: each runtime library is imported
when a model is loaded, so importing this package does not need any of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from .akida import AkidaModel
from .base import DeployedModel
from .onnx import ONNXModel
from .tflite import TFLiteModel

__all__ = ["DeployedModel", "TFLiteModel", "ONNXModel", "AkidaModel", "load", "check_artifact_path", "FORMATS"]

#: file extension -> format name
FORMATS = {".tflite": "tflite", ".onnx": "onnx", ".fbz": "akida"}


def check_artifact_path(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it names an existing artifact of a known format; else ValueError/FileNotFoundError."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"{path}: unknown artifact type {path.suffix!r}; expected one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (export it first with keras_qrobust.export)")
    return path


def load(path: str | os.PathLike, num_threads: int | None = None, *, kernels: str = "default") -> DeployedModel:
    """Load an exported model (``.tflite``, ``.onnx`` or ``.fbz``) for ``predict``.

    ``kernels``: for a ``.tflite`` file, ``"default"`` (LiteRT with XNNPACK) or
    ``"reference"`` (LiteRT's builtin kernels alone, :data:`~.tflite.KERNELS`).
    """
    path = check_artifact_path(path)
    kind = FORMATS[path.suffix.lower()]
    if kernels != "default" and kind != "tflite":
        raise ValueError(f"kernels={kernels!r} selects LiteRT's kernels and applies to .tflite files only; load "
                         f"{path.name} with kernels='default'")
    if kind == "akida":
        return AkidaModel(path)  # probes the file in a child process and raises its own ValueError
    try:
        return TFLiteModel(path, num_threads, kernels) if kind == "tflite" else ONNXModel(path, num_threads)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as error:  # the runtimes raise their own types for corrupt files
        raise ValueError(f"{path} could not be loaded by the {kind} runtime ({error}); is the file "
                         "complete?") from error

"""``.fbz`` files run by the Akida software backend (needs the ``akida`` extra).

:class:`AkidaModel` takes the float [0, 1] inputs of the Keras model: they become the uint8
pixels ``round(clip(x, 0, 1) * 255)`` the exported model reads
(:func:`keras_qrobust.export.akida` builds it so).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .base import DeployedModel

__all__ = ["AkidaModel", "INSTALL_HINT"]

INSTALL_HINT = "pip install 'keras-qrobust[akida]'"


def _import_akida() -> tuple[Any, Any, Any]:
    """Return ``(akida, cnn2snn, quantizeml.models)`` or raise an ImportError saying how to install them."""
    try:
        import akida as akida_module
        import cnn2snn
        import quantizeml.models as qml_models
    except ImportError as error:
        raise ImportError(
            f"Akida export needs cnn2snn, akida and quantizeml ({error}). Install them with {INSTALL_HINT}"
        ) from error
    return akida_module, cnn2snn, qml_models


def _probe(path: Path) -> None:
    """Load ``path`` in a child process first: akida 2.19 segfaults on a truncated .fbz (~0.3 s)."""
    probe = subprocess.run([sys.executable, "-c", "import sys, akida; akida.Model(sys.argv[1])", str(path)],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines()
        detail = lines[-1] if lines else f"the runtime crashed with exit status {probe.returncode}"
        raise ValueError(f"{path} could not be loaded by the akida runtime ({detail}); is the file complete?")


class AkidaModel(DeployedModel):
    """A ``.fbz`` model run by the Akida software backend; ``predict`` takes floats in [0, 1].

    Inputs (n, height, width, channels) become uint8 ``round(clip(x, 0, 1) * 255)``; outputs
    are the dequantized float scores, shape (n, classes).
    """

    def __init__(self, path: str | os.PathLike):
        akida_module, _, _ = _import_akida()
        path = Path(path)
        _probe(path)
        try:
            self._model = akida_module.Model(str(path))
        except Exception as error:
            raise ValueError(f"{path} could not be loaded by the akida runtime ({error}); is the file complete?") \
                from error
        super().__init__(path, "akida", tuple(int(d) for d in self._model.input_shape))

    @property
    def model(self) -> Any:
        """The underlying ``akida.Model``."""
        return self._model

    def _run(self, batch: np.ndarray) -> np.ndarray:
        pixels = np.round(np.clip(batch, 0.0, 1.0) * 255.0).astype(np.uint8)
        pixels = np.ascontiguousarray(pixels)
        try:
            out = self._model.predict(pixels)
        except RuntimeError:  # the last layer has an activation: predict refuses, forward does not
            out = self._model.forward(pixels)
        return np.asarray(out, np.float32).reshape(len(batch), -1)

"""Where a TFLite file and its Keras twin part: every stored tensor compared, in steps.

:func:`compare_layers` cuts the lowered model (:func:`~keras_qrobust.export.lowering.lower`)
after each tensor the int8 graph stores — every fake quant and clipped ReLU —, converts the
part up to it as the export does (:func:`~keras_qrobust.export.tflite.convert_lowered`), runs
it in LiteRT on ``x`` and measures, in steps ``s`` of that tensor in the file,

    max |y_file − y_keras| / s    and    the fraction of values with |y_file − y_keras| ≥ s/2.

The first row with a difference is where the file starts to compute another function; what
follows it inherits the difference (a deep network amplifies one step into many at its
output). Each part is a file of its own, so LiteRT's default delegate (XNNPACK) runs it as it
runs the whole model — reading intermediate tensors of one interpreter would only show the
builtin kernels. ``kernels`` (:data:`~keras_qrobust.export.runtime.tflite.KERNELS`) compares
XNNPACK and LiteRT's reference kernels, which requantize differently.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .._keras import check_model, keras
from .._progress import progress_bar
from .layers import FixedFakeQuant, LoweredReLU
from .lowering import lower
from .runtime.tflite import KERNELS, TFLiteModel
from .tflite import convert_lowered

__all__ = ["LayerDifference", "stored_tensors", "compare_layers", "first_difference"]


@dataclass(frozen=True)
class LayerDifference:
    """One stored tensor of the int8 graph, in the file and in the Keras twin.

    Attributes:
        layer: the lowered model's layer that writes the tensor.
        shape: the tensor's shape without the batch.
        step: the tensor's step (scale) in the file.
        max_steps: kernels -> largest ``|file − Keras|`` in steps.
        fraction_off: kernels -> fraction of values off by half a step or more.
    """

    layer: str
    shape: tuple
    step: float
    max_steps: dict
    fraction_off: dict

    def differs(self, kernels: str = "default") -> bool:
        return self.fraction_off[kernels] > 0


def stored_tensors(lowered_model) -> list[str]:
    """Names of the layers of a lowered model whose outputs the int8 graph stores, in order."""
    return [layer.name for layer in lowered_model.layers if isinstance(layer, (FixedFakeQuant, LoweredReLU))]


def compare_layers(model, x, *, kernels: str | Sequence[str] = KERNELS, layers: Optional[Sequence[str]] = None,
                   representative=None, batch_size: int = 256, verbose: int = 0) -> list[LayerDifference]:
    """Compare the TFLite export of ``model`` with its Keras twin at every stored tensor (module doc).

    Args:
        model: a RobustQuantizer model (what :func:`~keras_qrobust.export.tflite` exports).
        x: model inputs to compare on.
        kernels: LiteRT kernel set(s) to run each part with.
        layers: names from :func:`stored_tensors` to cut at (default: all of them; each is one
            conversion, a few seconds).
        representative: as for :func:`~keras_qrobust.export.lower`, for models that leave
            tensors float.
        verbose: 1 shows a progress bar over the tensors.
    """
    model = check_model(model)
    x = np.asarray(x, np.float32)
    if x.ndim < 2 or x.shape[1:] != tuple(model.input_shape[1:]) or not len(x):
        raise ValueError(f"x must have shape (n, {', '.join(map(str, model.input_shape[1:]))}), got {x.shape}")
    kernels = (kernels,) if isinstance(kernels, str) else tuple(kernels)
    unknown = [k for k in kernels if k not in KERNELS]
    if unknown or not kernels:
        raise ValueError(f"kernels must name some of {', '.join(KERNELS)}, got {list(kernels)!r}")
    lowered = lower(model, representative).model
    stored = stored_tensors(lowered)
    if layers is None:
        layers = stored
    missing = [name for name in layers if name not in stored]
    if missing:
        raise ValueError(f"{', '.join(missing)} not stored tensors of the lowered model: choose from "
                         "export.layer_diff.stored_tensors(export.lower(model).model)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="kq_layer_diff_") as folder:
        for index, name in enumerate(progress_bar(layers, desc="layer diff", unit="tensor", verbose=verbose)):
            part = keras.Model(lowered.inputs, lowered.get_layer(name).output)
            path = Path(folder) / f"part{index}.tflite"
            path.write_bytes(convert_lowered(part))
            expected = np.asarray(part.predict(x, batch_size=batch_size, verbose=0), np.float32)
            max_steps, fraction_off, step = {}, {}, None
            for kind in kernels:
                deployed = TFLiteModel(path, kernels=kind)
                step = float(deployed.output_details["quantization"][0])
                found = deployed.predict(x, batch_size=batch_size)
                steps = np.abs(found.reshape(expected.shape) - expected) / step
                max_steps[kind] = float(steps.max())
                fraction_off[kind] = float(np.mean(steps >= 0.5))
            rows.append(LayerDifference(name, tuple(expected.shape[1:]), step, max_steps, fraction_off))
    return rows


def first_difference(rows: Sequence[LayerDifference], kernels: str = "default") -> Optional[LayerDifference]:
    """The first row whose file values differ from the Keras twin's on ``kernels``, or None."""
    return next((row for row in rows if row.differs(kernels)), None)

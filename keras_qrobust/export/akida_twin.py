"""The Akida twin: what an exported ``.fbz`` computes, as a Keras model of the model's inputs.

:func:`~keras_qrobust.export.akida` converts a quantizeml model with cnn2snn — a RobustQuantizer
model's own grids carried into quantizeml (:mod:`~keras_qrobust.export.akida_grids`), or
quantizeml's quantization of a float model. The Akida runtime computes that quantizeml model's
integer inference, and :class:`~keras_qrobust.export.AkidaModel` feeds the file the pixels
``round(clip(x, 0, 1)·255)``. So the twin is the quantizeml model ``Q`` behind the same input
rounding::

    twin(x) = Q(round(clip(x, 0, 1)·255)),    ∂twin/∂x = 255·∂Q/∂p  for x in [0, 1], 0 outside

``Q`` rounds with straight-through gradients (quantizeml's ``round_through``), so white-box
attacks run on the twin as on the RobustQuantizer model — and reach the file's function rather
than the float-arithmetic model it was exported from (which agrees with the file on 98–99.7%
of inputs, benchmarks/akida_fidelity.py).

Where cnn2snn's conversion computes otherwise than the quantizeml model (it fuses a global
average pooling into the convolution before it and requantizes once where quantizeml rounds
twice), the twin's outputs differ from the file's: :func:`akida_twin` runs both on probe
inputs and states the difference in :attr:`AkidaTwin.approximated` (empty when every probe's
outputs are the same bit for bit).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._keras import check_model, keras, tf

__all__ = ["AkidaTwin", "akida_twin"]

_PROBES = 256


@dataclass(frozen=True)
class AkidaTwin:
    """A Keras model that computes what a model's ``.fbz`` export computes.

    Attributes:
        model: Keras model taking the model's [0, 1] inputs; forward = the quantizeml model
            cnn2snn converts, on the file's uint8 pixels; gradient straight through its rounding.
        quantized: that quantizeml model (it takes pixels 0..255).
        approximated: how the twin's outputs differ from the converted file's on the probe
            inputs (empty: the same outputs bit for bit).
        runtime: ``"akida"``.
    """

    model: object
    quantized: object
    approximated: tuple[str, ...]
    runtime: str = "akida"

    @property
    def exact(self) -> bool:
        return not self.approximated


@tf.custom_gradient
def _pixels(x):
    """``round(clip(x, 0, 1)·255)``, the uint8 pixels AkidaModel feeds the file; gradient 255 inside [0, 1]."""
    pixels = tf.round(tf.clip_by_value(x, 0.0, 1.0) * 255.0)

    def gradient(upstream):
        # quantizeml's backward pass loses the static batch size; the input's is given back, as a
        # caller's loop that keeps its batch shape static (APGD's) requires
        return tf.ensure_shape(upstream * 255.0 * tf.cast((x >= 0.0) & (x <= 1.0), upstream.dtype), x.shape)

    return pixels, gradient


class AkidaPixels(keras.layers.Layer):
    """The model's [0, 1] inputs as the ``.fbz``'s uint8 pixel values (kept as floats)."""

    def call(self, inputs):
        return _pixels(inputs)


class QuantizeMLModel(keras.layers.Layer):
    """A quantizeml model run through its own ``tf.function`` with autograph on: its layers use
    Python ``len`` on tensors, which only autograph turns into graph ops, so the twin can be
    called inside the attacks' autograph-free compiled functions."""

    def __init__(self, quantized, **kwargs):
        super().__init__(**kwargs)
        self.quantized = quantized
        self._run = tf.function(lambda x: self.quantized(x, training=False), autograph=True, reduce_retracing=True)

    def call(self, inputs):
        return self._run(inputs)


def _probe_inputs(shape: tuple, samples, count: int, seed: int) -> np.ndarray:
    """Uniform [0, 1] inputs, then the first ``samples``: inputs off and on the data."""
    probes = np.random.default_rng(seed).uniform(0.0, 1.0, (count, *shape)).astype(np.float32)
    if samples is not None:
        probes = np.concatenate([probes, np.asarray(samples, np.float32)[:count]])
    return probes


def _differences(twin_scores: np.ndarray, file_scores: np.ndarray) -> tuple[str, ...]:
    differing = np.any(twin_scores != file_scores, axis=1)
    if not differing.any():
        return ()
    labels = int(np.sum(twin_scores.argmax(1) != file_scores.argmax(1)))
    return (f"outputs differ from the .fbz's on {int(differing.sum())} of {len(differing)} probe inputs "
            f"(largest score difference {float(np.abs(twin_scores - file_scores).max()):.4g}, top-1 on {labels})",)


def akida_twin(model, samples=None, *, file: str | os.PathLike | None = None, probes: int = _PROBES,
               seed: int = 0, weight_bits: int | None = None, activation_bits: int | None = None,
               input_weight_bits: int | None = None) -> AkidaTwin:
    """The Akida twin of ``model``'s ``.fbz`` export (module doc).

    Args:
        model: what :func:`~keras_qrobust.export.akida` takes: a RobustQuantizer model (its
            grids are carried), a float model (quantizeml quantizes it at w4a4, first layer 8
            bits), or the quantizeml model :func:`~keras_qrobust.export.quantize_for_akida`
            returned (taken as it is).
        samples: calibration inputs in [0, 1], as for :func:`~keras_qrobust.export.akida`
            (pass the same ones: a float model's quantization depends on them; a RobustQuantizer
            model's carried grids do not, and None calibrates it on random inputs).
        file: the model's ``.fbz`` export to check the twin against; None converts the twin's
            quantizeml model with cnn2snn (what the export does).
        probes: random [0, 1] inputs (plus as many of ``samples``) on which the twin's outputs
            are compared with the file's.
        weight_bits, activation_bits, input_weight_bits: a float model's bits, as for
            :func:`~keras_qrobust.export.akida` (pass the same ones as to the export); a
            RobustQuantizer model keeps its own.
    """
    from .akida import AkidaModel, convert_quantized, is_akida_quantized, quantize_for_akida
    from .akida_grids import is_robust_quantized

    model = check_model(model)
    if file is not None and (not Path(file).is_file() or Path(file).suffix != ".fbz"):
        raise ValueError(f"file={str(file)!r} is not a .fbz file: pass the path export.akida wrote, or None")
    shape = tuple(model.inputs[0].shape[1:])
    if is_akida_quantized(model):
        if (weight_bits, activation_bits, input_weight_bits) != (None, None, None):
            raise ValueError(f"'{model.name}' is quantize_for_akida's output, already quantized: leave the bits out")
        quantized = model
    else:
        if samples is None and is_robust_quantized(model):  # carried grids replace what calibration finds
            samples = _probe_inputs(shape, None, probes, seed + 1)
        quantized = quantize_for_akida(model, samples, weight_bits=weight_bits, activation_bits=activation_bits,
                                       input_weight_bits=input_weight_bits)
    inputs = keras.Input(shape, name="akida_twin_input")
    pixels = AkidaPixels(name="akida_pixels")(inputs)
    scores = QuantizeMLModel(quantized, name="akida_quantized")(pixels)
    twin = keras.Model(inputs, scores, name=f"{model.name}_akida_twin")
    x = _probe_inputs(shape, samples, probes, seed)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(file) if file is not None else Path(folder) / "twin.fbz"
        if file is None:
            convert_quantized(quantized, model.name).save(str(path))
        file_scores = AkidaModel(path).predict(x)
    twin_scores = np.asarray(twin.predict(x, verbose=0), np.float32).reshape(len(x), -1)
    if file_scores.shape != twin_scores.shape:
        raise ValueError(f"{path.name} outputs {file_scores.shape[1]} values per input where '{model.name}' "
                         f"outputs {twin_scores.shape[1]}: it is not this model's export. Pass the .fbz "
                         "export.akida wrote for it.")
    return AkidaTwin(twin, quantized, _differences(twin_scores, file_scores))

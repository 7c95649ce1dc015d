"""Export a Keras model to BrainChip Akida (``.fbz``) and run it in the Akida runtime.

Flow of :func:`akida` (needs the ``akida`` extra: ``pip install 'keras-qrobust[akida]'``):

1. :func:`check_akida_compatible` lists everything that cannot be converted (layer types,
   activations, input shape, a grid Akida cannot hold, ...) before any slow work.
2. A **RobustQuantizer model** becomes the float model whose quantizeml quantization has its
   weight codes and activation ranges (:mod:`keras_qrobust.export.akida_grids`: each layer
   rescaled so its ReLU codes are Akida's fixed-point values); its bits are the model's own.
   A **float model** is used as it is, at ``weight_bits``/``activation_bits`` (default w4a4,
   ``input_weight_bits`` 8): quantizeml then chooses the grids, another function than any
   RobustQuantizer model. Either is rebuilt as a functional model with a leading
   ``Rescaling(1/255)`` layer (and any Lipschitz layer turned back into the plain layer it
   computes, :func:`keras_qrobust.transforms.strip_lipschitz`). The Keras model takes floats
   in [0, 1]; Akida takes uint8 pixels 0..255, so the rebuilt model takes what Akida takes.
3. ``quantizeml.models.quantize`` quantizes it (``weight_bits``, ``activation_bits``,
   ``input_weight_bits`` for the first layer, uint8 input) and calibrates the activation
   ranges on ``samples`` (as 0..255 pixels). quantizeml's InputQuantizer range is then pinned
   to [0, 255]: calibrated with momentum it could end below 127.5 on dark images, which would
   halve the input step and saturate bright pixels; pinned, it is the identity on 0..255. For
   a RobustQuantizer model the carried ranges and weights are then set back
   (:func:`~keras_qrobust.export.akida_grids.apply_grids`, which checks every weight code).
4. ``cnn2snn.convert`` turns the quantized model into an Akida model (the Rescaling is folded
   into the first layer), saved atomically to ``path``.

Limits (cnn2snn 2.19, Akida 2): image inputs only, read by a Conv2D + ReLU (optionally with
MaxPooling2D between); 4- or 8-bit weights; ReLU activations; each MaxPooling2D fused into
the convolution before it with the same padding; other block patterns (e.g. SeparableConv2D
+ MaxPooling2D) are rejected by cnn2snn, whose message is passed on.

The ``.fbz`` model computes the integer inference of the quantizeml model: a uint8 input
quantizer, integer convolution/dense layers with ``weight_bits`` weights and
``activation_bits`` activations (the first layer with ``input_weight_bits`` weights), and a
final dequantizer that returns float scores (the quantized logits). Its outputs match the
quantizeml Keras model (:func:`quantize_for_akida`) exactly in our tests. Against a
RobustQuantizer model whose grids it carries, top-1 agrees on 98-99.7% of inputs (Akida's
integer arithmetic rounds a few codes the other way; benchmarks/akida_fidelity.py); against
a float model only the top-1 class mostly agrees (quantization error).

:class:`AkidaModel` loads a ``.fbz`` (also via :func:`keras_qrobust.export.runtime.load`) and
takes the float [0, 1] inputs of the Keras model: they become ``round(clip(x, 0, 1) * 255)``.

This module holds the conversion (steps 2-4); the checks of step 1 are in
:mod:`keras_qrobust.export.akida_compat`, :class:`AkidaModel` in
:mod:`keras_qrobust.export.runtime.akida`; both are re-exported here.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_path, check_new_file
from ..transforms._graph import Graph, UnsupportedModelError
from ..transforms.lipschitz import strip_lipschitz
from .akida_compat import SUPPORTED_LAYERS, _raise_if_incompatible, check_akida_compatible
from .akida_grids import CarriedGrids, apply_grids
from .runtime.akida import INSTALL_HINT, AkidaModel, _import_akida  # noqa: F401 - INSTALL_HINT re-exported

__all__ = ["akida", "check_akida_compatible", "quantize_for_akida", "is_akida_quantized", "AkidaModel",
           "SUPPORTED_LAYERS"]

_RESCALING_NAME = "akida_input_rescaling"
_DEFAULT_CALIBRATION = 256  # random [0, 1] samples when none are given


def _check_bits(weight_bits, activation_bits, input_weight_bits) -> None:
    # Akida 2 (cnn2snn's default target) layers take 4- or 8-bit weights
    for name, value, allowed in (("weight_bits", weight_bits, (4, 8)), ("input_weight_bits", input_weight_bits, (4, 8)),
                                 ("activation_bits", activation_bits, tuple(range(1, 9)))):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))} for Akida 2, got {value!r}")


_FLOAT_DEFAULTS = {"weight_bits": 4, "activation_bits": 4, "input_weight_bits": 8}


def _settings(model, **given) -> tuple[Any, CarriedGrids | None, dict]:
    """The model quantizeml quantizes, the grids it must carry (RobustQuantizer models) and the bits.

    A float model takes the bits given (defaults w4a4, first layer 8 bits); a RobustQuantizer
    model brings its own, and a bit width given that differs from them is an error.
    """
    grids = _raise_if_incompatible(model)
    if grids is None:
        bits = {k: _FLOAT_DEFAULTS[k] if v is None else v for k, v in given.items()}
        _check_bits(**bits)
        return model, None, bits
    bits = {"weight_bits": grids.weight_bits, "activation_bits": grids.activation_bits,
            "input_weight_bits": grids.input_weight_bits}
    differing = [f"{k}={v} (the model has {bits[k]})" for k, v in given.items() if v is not None and v != bits[k]]
    if differing:
        raise ValueError(f"'{model.name}' is already quantized, so Akida export keeps its bits: "
                         f"{', '.join(differing)}. Leave the bit arguments out, or pass the float model to requantize.")
    _check_bits(**bits)
    return grids.model, grids, bits


def akida_bits(model, *, weight_bits: int | None = None, activation_bits: int | None = None,
               input_weight_bits: int | None = None) -> dict:
    """The bits :func:`akida` will quantize ``model`` to, checked before any data is read.

    Raises ``ValueError`` (``UnsupportedModelError`` for a layer Akida cannot take) when the
    model cannot convert, a bit width is out of Akida's range, or a bit width given differs
    from those of a RobustQuantizer model (its own bits are kept).
    """
    return _settings(model, weight_bits=weight_bits, activation_bits=activation_bits,
                     input_weight_bits=input_weight_bits)[2]


def _calibration_pixels(model, samples) -> np.ndarray:
    """``samples`` (floats in [0, 1]) as the 0..255 pixel values Akida will see."""
    shape = tuple(model.inputs[0].shape[1:])
    if samples is None:
        warnings.warn(
            "akida(): no calibration samples given; calibrating on random [0, 1] inputs, which gives "
            "poor activation ranges. Pass a few hundred training inputs as `samples`.",
            stacklevel=4,
        )
        samples = np.random.default_rng(0).uniform(0.0, 1.0, (_DEFAULT_CALIBRATION, *shape))
    samples = np.asarray(samples, np.float32)
    if samples.ndim != len(shape) + 1 or tuple(samples.shape[1:]) != shape or len(samples) == 0:
        raise ValueError(f"samples must have shape (n, {', '.join(map(str, shape))}), got {samples.shape}")
    if samples.min() < -1e-3 or samples.max() > 1 + 1e-3:
        raise ValueError(
            f"samples range over [{samples.min():.3g}, {samples.max():.3g}]; Akida export expects a model "
            "taking inputs in [0, 1] (they become uint8 pixels x*255). Scale the data to [0, 1]."
        )
    return np.round(np.clip(samples, 0.0, 1.0) * 255.0).astype(np.float32)


def _with_input_rescaling(model):
    """A functional copy of ``model`` taking 0..255 pixels: ``Rescaling(1/255)`` then ``model``."""
    graph = strip_lipschitz(Graph.from_model(model))
    input_name = graph.config["input_layers"][0][0]
    graph.insert_after(input_name, "Rescaling", {
        "name": graph.unique_name(_RESCALING_NAME), "scale": 1.0 / 255.0, "offset": 0.0, "trainable": False,
    })
    return graph.to_model()


def quantize_for_akida(model, samples=None, *, weight_bits: int | None = None, activation_bits: int | None = None,
                       input_weight_bits: int | None = None):
    """The quantizeml model :func:`akida` converts. NOTE: it takes pixels 0..255 (``x * 255``), not [0, 1].

    Useful to compare the Akida model with the Keras integer simulation it came from.
    """
    source, grids, bits = _settings(model, weight_bits=weight_bits, activation_bits=activation_bits,
                                    input_weight_bits=input_weight_bits)
    return _quantize(source, samples, grids, **bits)


def _quantize(model, samples, grids: CarriedGrids | None, weight_bits: int, activation_bits: int,
              input_weight_bits: int):
    _, _, qml_models = _import_akida()
    pixels = _calibration_pixels(model, samples)
    rescaled = _with_input_rescaling(model)
    params = qml_models.QuantizationParams(weight_bits=int(weight_bits), activation_bits=int(activation_bits),
                                           input_weight_bits=int(input_weight_bits), input_dtype="uint8")
    batch_size = min(len(pixels), 100)
    try:
        # quantizeml's calibration prints a Keras progress bar and warns at length: keep both quiet
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            qmodel = qml_models.quantize(rescaled, qparams=params, samples=pixels, num_samples=len(pixels),
                                         batch_size=batch_size)
    except Exception as error:
        raise UnsupportedModelError(f"quantizeml could not quantize '{model.name}' for Akida: {error}") from error
    _pin_input_range(qmodel)
    if grids is not None:
        apply_grids(qmodel, grids)
    return qmodel


def is_akida_quantized(model) -> bool:
    """``model`` is a quantizeml model :func:`quantize_for_akida` made (it reads 0..255 pixels
    through the Rescaling(1/255) it adds): what cnn2snn converts as it is."""
    layers = getattr(model, "layers", ())
    return (any(layer.name.startswith(_RESCALING_NAME) for layer in layers)
            and any(type(layer).__module__.split(".")[0] == "quantizeml" for layer in layers))


def _pin_input_range(qmodel) -> None:
    from quantizeml.layers import InputQuantizer

    for layer in qmodel.layers:
        if isinstance(layer, InputQuantizer):
            layer.range_min.assign(np.zeros(layer.range_min.shape, np.float32))
            layer.range_max.assign(np.full(layer.range_max.shape, 255.0, np.float32))


def convert_quantized(qmodel, name: str):
    """The ``akida.Model`` cnn2snn converts the quantizeml model ``qmodel`` (of the model ``name``) into.

    Raises UnsupportedModelError when cnn2snn fails, or when it converts only a leading part of
    the model (quantizeml leaves a layer it cannot quantize in float behind a Dequantizer, and
    cnn2snn stops there): such a file would compute another function than the model.
    """
    _, cnn2snn, _ = _import_akida()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = cnn2snn.convert(qmodel)
    except Exception as error:
        raise UnsupportedModelError(
            f"cnn2snn could not convert '{name}' to Akida: {error}\n"
            "Restructure the layers it names into a block Akida maps (e.g. Conv2D [+ MaxPooling2D] + ReLU, "
            "DepthwiseConv2D + ReLU, Dense + ReLU); cnn2snn lists the valid patterns when it can."
        ) from error
    _check_whole(converted, qmodel, name)
    return converted


def _check_whole(converted, qmodel, name: str) -> None:
    """The converted model ends where ``qmodel`` does (cnn2snn silently converts a prefix)."""
    expected, found = int(np.prod(qmodel.output_shape[1:])), int(np.prod(converted.output_shape))
    if found == expected:
        return
    last = converted.layers[-1].name.split("/")[0]  # "<layer>/dequantizer" when cut short
    names = [layer.name for layer in qmodel.layers]
    following = names.index(last) + 1 if last in names else len(names)
    while following < len(names) and type(qmodel.layers[following]).__name__ == "Dequantizer":
        following += 1
    rest = (f"'{names[following]}' ({type(qmodel.layers[following]).__name__}), which quantizeml left in float"
            if following < len(names) else "the layers after it")
    raise UnsupportedModelError(
        f"cnn2snn converted '{name}' only up to layer '{last}': the .fbz would output {found} values, not the "
        f"model's {expected}, and compute another function. Akida stops at {rest}; restructure it into a block "
        "Akida maps (e.g. a strided convolution with padding='same' instead of ZeroPadding2D + padding='valid').")


def akida(model, path: str | os.PathLike, samples=None, *, weight_bits: int | None = None,
          activation_bits: int | None = None, input_weight_bits: int | None = None, overwrite: bool = False) -> Path:
    """Export ``model`` to Akida (.fbz): quantized by quantizeml, converted by cnn2snn, saved to ``path``.

    ``model`` is either a RobustQuantizer model — its weight codes and activation ranges are
    carried over (:mod:`keras_qrobust.export.akida_grids`), so the file computes the integer
    function that was attacked, and its bits are used — or a float model, which quantizeml
    quantizes itself at ``weight_bits``/``activation_bits`` (default w4a4, ``input_weight_bits``
    8 for the first layer), or what :func:`quantize_for_akida` returned, converted as it is.
    It takes floats in [0, 1]; the saved model takes uint8 pixels (``x * 255``), which
    :class:`AkidaModel` produces from [0, 1] floats. ``samples`` (a few
    hundred training inputs in [0, 1]) calibrate quantizeml. An existing ``path`` is replaced
    only with ``overwrite=True`` (FileExistsError otherwise, before any work). Raises
    UnsupportedModelError listing every problem found (or cnn2snn's message).
    """
    path = check_new_file(path, ".fbz", overwrite, "an Akida export")
    if is_akida_quantized(model):
        given = [n for n, v in (("weight_bits", weight_bits), ("activation_bits", activation_bits),
                                ("input_weight_bits", input_weight_bits)) if v is not None]
        if given:
            raise ValueError(f"'{model.name}' is quantize_for_akida's output, already quantized: leave "
                             f"{', '.join(given)} out, or pass the float model to requantize.")
        ak_model = convert_quantized(model, model.name)
    else:
        source, grids, bits = _settings(model, weight_bits=weight_bits, activation_bits=activation_bits,
                                        input_weight_bits=input_weight_bits)
        ak_model = convert_quantized(_quantize(source, samples, grids, **bits), model.name)
    with atomic_path(path, overwrite=overwrite) as temporary:
        ak_model.save(str(temporary))
    return path


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
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_path, check_new_file
from .._keras import is_keras3_object, keras
from ..transforms._graph import Graph, UnsupportedModelError
from ..transforms.lipschitz import strip_lipschitz
from .akida_grids import CarriedGrids, apply_grids, carried_grids, is_robust_quantized
from .runtime import DeployedModel

__all__ = ["akida", "check_akida_compatible", "quantize_for_akida", "AkidaModel", "SUPPORTED_LAYERS"]

INSTALL_HINT = "pip install 'keras-qrobust[akida]'"

#: Keras layer classes quantizeml 1.2 quantizes and cnn2snn 2.19 converts (Lipschitz layers are
#: turned back into Dense/Conv2D first; BatchNormalization is folded into the layer before it).
SUPPORTED_LAYERS = (
    "InputLayer",
    "Conv2D",
    "DepthwiseConv2D",
    "SeparableConv2D",
    "Conv2DTranspose",
    "Dense",
    "LipschitzDense",
    "LipschitzConv2D",
    "BatchNormalization",
    "ReLU",
    "Activation",
    "MaxPooling2D",
    "GlobalAveragePooling2D",
    "Flatten",
    "Reshape",
    "Dropout",
    "ZeroPadding2D",
    "Add",
    "Concatenate",
)
_ACTIVATIONS = ("relu", "linear")
_RESCALING_NAME = "akida_input_rescaling"
_DEFAULT_CALIBRATION = 256  # random [0, 1] samples when none are given


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


# --------------------------------------------------------------------------- compatibility
def _activation_name(activation) -> str:
    if activation is None:
        return "linear"
    return activation if isinstance(activation, str) else getattr(activation, "__name__", str(activation))


def check_akida_compatible(model) -> list[str]:
    """Reasons ``model`` cannot be exported to Akida, each with its fix; empty when it can.

    Checks only what is known before quantization; cnn2snn may still reject a layer
    pattern it cannot map (its message is then reported by :func:`akida`).
    """
    return _problems(model)[0]


def _problems(model) -> tuple[list[str], CarriedGrids | None]:
    """:func:`check_akida_compatible`'s reasons, and the grids a RobustQuantizer model carries."""
    if is_keras3_object(model):
        return [
            f"'{getattr(model, 'name', type(model).__name__)}' is a Keras 3 model; quantizeml and cnn2snn "
            "need a Keras 2 (tf_keras) model. Build it with `keras_qrobust.keras` (tf_keras) or load it "
            "with `keras_qrobust.keras.models.load_model`."
        ], None
    if not isinstance(model, keras.Model):
        return [f"expected a tf_keras Model, got {type(model).__module__}.{type(model).__name__}"], None
    if not is_robust_quantized(model):
        return _float_model_problems(model), None
    try:
        grids = carried_grids(model)
    except UnsupportedModelError as error:
        return [str(error)], None
    return _float_model_problems(grids.model), grids


def _float_model_problems(model) -> list[str]:
    """Reasons the float (or carried) tf_keras ``model`` cannot be converted."""
    reasons: list[str] = []
    quantized = [
        layer.name for layer in model.layers
        if type(layer).__name__.startswith(("Quantized", "MuLaw"))
        and type(layer).__module__.split(".")[0] in ("quantizeml", "cnn2snn")
    ]
    if quantized:
        reasons.append(
            f"the model is already quantized by quantizeml (layers {', '.join(map(repr, quantized[:5]))}"
            f"{', ...' if len(quantized) > 5 else ''}); Akida export quantizes with quantizeml itself: "
            "pass the float model or the RobustQuantizer model, not quantizeml's output."
        )
        return reasons  # the layer checks below would only repeat this

    try:
        graph = Graph.from_model(model)
    except UnsupportedModelError as error:
        return [str(error)]

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        reasons.append(
            f"the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; Akida export "
            "handles one input and one output."
        )
        return reasons

    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3:
        reasons.append(
            f"the input shape {shape} is not an image (height, width, channels): cnn2snn 2.19 converts a "
            "uint8 input only into a Conv2D (a Dense reading 1-D uint8 inputs fails with 'InputData sign "
            "incompatible'). Feed images, e.g. keras.Input((28, 28, 1)) followed by Conv2D(..., activation='relu')."
        )
    elif any(d is None for d in shape):
        reasons.append(f"the input shape {shape} has unknown sizes; give keras.Input a fixed shape.")
    if not model.inputs[0].dtype.is_floating:
        reasons.append(
            f"the input dtype is {model.inputs[0].dtype.name}; Akida export expects a float model "
            "taking inputs in [0, 1] (it adds the uint8 conversion itself)."
        )

    unsupported: dict[str, list[str]] = {}
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in SUPPORTED_LAYERS and kind != "Rescaling":
            unsupported.setdefault(kind, []).append(layer.name)
            continue
        activation = _activation_name(getattr(layer, "activation", None))
        if kind != "ReLU" and activation not in _ACTIVATIONS:
            reasons.append(
                f"layer '{layer.name}' ({kind}) uses the activation '{activation}'; Akida export supports "
                "ReLU (or none). " + (
                    "Remove the final softmax: the scores keep the same argmax."
                    if activation == "softmax" else "Retrain with ReLU."
                )
            )
        if kind == "ReLU" and (float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0):
            reasons.append(
                f"layer '{layer.name}' is a leaky or thresholded ReLU (negative_slope={float(layer.negative_slope)}, "
                f"threshold={float(layer.threshold)}); Akida runs a plain ReLU (max_value allowed)."
            )
    for kind, names in unsupported.items():
        reasons.append(
            f"{kind} layer{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))}: no Akida equivalent. "
            f"Supported layers: {', '.join(n for n in SUPPORTED_LAYERS if n != 'InputLayer')}."
        )

    reasons.extend(_first_layer_problems(model, graph))
    reasons.extend(_pooling_problems(model, graph))
    return reasons


_CONVS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "LipschitzConv2D")
_FOLDED = ("BatchNormalization",)  # folded into the weight layer before it by quantizeml


def _is_relu(layer) -> bool:
    kind = type(layer).__name__
    return kind == "ReLU" or (kind == "Activation" and _activation_name(layer.activation) == "relu")


def _first_layer_problems(model, graph: Graph) -> list[str]:
    """Akida's uint8 input layer (InputConv2D) is a Conv2D, optionally MaxPooling2D, then ReLU."""
    input_name = graph.config["input_layers"][0][0]
    first = graph.consumers(input_name)
    kinds = [type(model.get_layer(name)).__name__ for name in first]
    if "Rescaling" in kinds:
        return ["the model starts with a Rescaling layer; Akida export adds its own Rescaling(1/255) and expects "
                "the float model to take inputs in [0, 1]. Remove the Rescaling and scale the data to [0, 1]."]
    found = ", ".join(f"'{n}' ({k})" for n, k in zip(first, kinds)) or "nothing"
    if len(first) != 1 or kinds[0] not in ("Conv2D", "LipschitzConv2D"):
        return [f"the input feeds {found}; Akida's uint8 input layer must be read by exactly one Conv2D "
                "(followed by ReLU): start the model with Conv2D(..., activation='relu')."]
    layer = model.get_layer(first[0])
    if _activation_name(layer.activation) == "relu":
        return []
    name = first[0]
    while len(nxt := graph.consumers(name)) == 1:
        following = model.get_layer(nxt[0])
        if _is_relu(following):
            return []
        if type(following).__name__ not in _FOLDED + ("MaxPooling2D",):
            break
        name = nxt[0]
    return [f"the first layer '{layer.name}' (Conv2D) is not followed by a ReLU; Akida's input layer is "
            "Conv2D [+ MaxPooling2D] + ReLU (cnn2snn fails with 'InputData sign incompatible' otherwise). "
            "Give it activation='relu'."]


def _pooling_problems(model, graph: Graph) -> list[str]:
    """cnn2snn fuses MaxPooling2D into the convolution before it, so both need the same padding."""
    problems = []
    for entry in graph.iter_layers(("MaxPooling2D",)):
        name = entry["name"]
        while len(inbound := graph.inbound_names(graph.layer(name))) == 1:
            name = inbound[0]
            producer = model.get_layer(name)
            if type(producer).__name__ in _FOLDED or _is_relu(producer):
                continue
            pool = model.get_layer(entry["name"])
            if type(producer).__name__ in _CONVS and producer.padding != pool.padding:
                problems.append(
                    f"MaxPooling2D '{pool.name}' has padding='{pool.padding}' but the convolution before it, "
                    f"'{producer.name}', has padding='{producer.padding}'; Akida fuses them, so use the same "
                    "padding on both."
                )
            break
    return problems


def _raise_if_incompatible(model) -> CarriedGrids | None:
    """Raise UnsupportedModelError listing every problem; else the grids a RobustQuantizer model carries."""
    reasons, grids = _problems(model)
    if reasons:
        raise UnsupportedModelError(
            f"The model cannot be exported to Akida ({len(reasons)} problem{'s' if len(reasons) > 1 else ''}):\n"
            + "\n".join(f"  - {reason}" for reason in reasons)
        )
    return grids


# ------------------------------------------------------------------------------ export
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


def _pin_input_range(qmodel) -> None:
    from quantizeml.layers import InputQuantizer

    for layer in qmodel.layers:
        if isinstance(layer, InputQuantizer):
            layer.range_min.assign(np.zeros(layer.range_min.shape, np.float32))
            layer.range_max.assign(np.full(layer.range_max.shape, 255.0, np.float32))


def akida(model, path: str | os.PathLike, samples=None, *, weight_bits: int | None = None,
          activation_bits: int | None = None, input_weight_bits: int | None = None, overwrite: bool = False) -> Path:
    """Export ``model`` to Akida (.fbz): quantized by quantizeml, converted by cnn2snn, saved to ``path``.

    ``model`` is either a RobustQuantizer model — its weight codes and activation ranges are
    carried over (:mod:`keras_qrobust.export.akida_grids`), so the file computes the integer
    function that was attacked, and its bits are used — or a float model, which quantizeml
    quantizes itself at ``weight_bits``/``activation_bits`` (default w4a4, ``input_weight_bits``
    8 for the first layer). It takes floats in [0, 1]; the saved model takes uint8 pixels
    (``x * 255``), which :class:`AkidaModel` produces from [0, 1] floats. ``samples`` (a few
    hundred training inputs in [0, 1]) calibrate quantizeml. An existing ``path`` is replaced
    only with ``overwrite=True`` (FileExistsError otherwise, before any work). Raises
    UnsupportedModelError listing every problem found (or cnn2snn's message).
    """
    path = check_new_file(path, ".fbz", overwrite, "an Akida export")
    source, grids, bits = _settings(model, weight_bits=weight_bits, activation_bits=activation_bits,
                                    input_weight_bits=input_weight_bits)
    _, cnn2snn, _ = _import_akida()
    qmodel = _quantize(source, samples, grids, **bits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ak_model = cnn2snn.convert(qmodel)
    except Exception as error:
        raise UnsupportedModelError(
            f"cnn2snn could not convert '{model.name}' to Akida: {error}\n"
            "Restructure the layers it names into a block Akida maps (e.g. Conv2D [+ MaxPooling2D] + ReLU, "
            "DepthwiseConv2D + ReLU, Dense + ReLU); cnn2snn lists the valid patterns when it can."
        ) from error
    with atomic_path(path, overwrite=overwrite) as temporary:
        ak_model.save(str(temporary))
    return path


# ----------------------------------------------------------------------------- runtime
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

"""RobustQuantizer: post-training quantization in the style of BrainChip's CNN2SNN flow.

``quantize(model, samples)``:

1. splits fused activations off the weight layers and folds BatchNormalization into the
   Dense/Conv2D/DepthwiseConv2D/SeparableConv2D before it (:mod:`keras_qrobust.transforms`);
2. replaces every weight layer by its quantized twin with a symmetric per-axis quantizer
   (``input_weight_bits`` for the layers that read the model input, μ-law companding for the
   last ``mu_law_last`` weight layers) and every ReLU by a :class:`~keras_qrobust.layers.QuantizedReLU`;
3. with activation bits ≤ 8, marks every other tensor the int8 model stores (the input, linear
   outputs, sums, averages; separable convolutions are split so their depthwise half has
   an output of its own) with an 8-bit TensorQuantizer
   (:func:`~keras_qrobust.transforms.quantize_tensors`), so the Keras model rounds where the
   exported integer graph rounds;
4. calibrates each ReLU's range ``[0, max]`` and each tensor's ``[min, max]`` on ``samples``,
   in graph order, so a layer's range is measured on the outputs of the already-quantized
   layers before it, and rounds each bias onto its int32 grid.

The caller's model is not modified; the result is a plain tf_keras model that saves and
loads without ``custom_objects``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from .. import quantizers as qz
from .._keras import check_model, keras
from ..layers import QUANTIZED_LAYERS, TensorQuantizer
from ..quantizers.grid import parse_setting, setting_name
from ..transforms import (
    Graph,
    UnsupportedModelError,
    fold_batchnorm,
    fold_hard_sigmoid,
    quantize_tensors,
    replace_layers,
    split_activations,
    split_separable,
    strip_lipschitz,
)
from ..transforms._kinds import QUANTIZED_WEIGHT_LAYERS, SUPPORTED, WEIGHT_LAYERS
from .calibration import CALIBRATIONS, calibrate
from .integer_bias import inbound_layers

__all__ = ["RobustQuantizer", "parse_setting", "setting_name", "round_inputs_half_even"]

def _check_clip(value, name: str) -> float:
    if not 0.0 < float(value) <= 1.0:
        raise ValueError(f"{name} must be a clipping ratio in (0, 1], got {value!r}")
    return float(value)


def _check_optional_bits(value, name: str) -> Optional[int]:
    return None if value is None else qz.check_bits(value, name)


@dataclass(frozen=True)
class RobustQuantizer:
    """Post-training wXaY quantization of a tf_keras model (immutable settings).

    Args:
        weight_bits: bits of every kernel except those of the input layers; None keeps
            kernels float.
        activation_bits: bits of every ReLU output; None quantizes weights only.
        layer_bits: weight bits by layer name, overriding ``weight_bits`` and
            ``input_weight_bits`` (mixed precision, e.g. from ``layerwise.allocate_bits``).
        layer_clip: clipping ratio ``r`` by layer name: ``s = r·max|W|`` (Song 2021).
        input_weight_bits: bits of the kernels of the layers that read the model input
            (cnn2snn's ``input_weight_quantization``); None uses ``weight_bits``.
        per_axis: one weight scale per output channel (else one per tensor).
        calibration: how each ReLU range is chosen from the calibration outputs:
            ``"max"`` — the largest; ``"percentile"`` — the ``percentile``-th percentile;
            ``"mse"`` — the range with the least mean squared quantization error at
            ``activation_bits`` (clips rare large values at low bit widths).
        percentile: used when ``calibration="percentile"``.
        mu_law_last: the last N weight layers use μ-law companding (Song 2020) instead of
            the uniform grid.
        mu: μ of the μ-law.
        batch_size: calibration batch size.
        integer_bias: round each bias whose input is on a known grid onto the int32 grid
            of int8 deployment (:mod:`keras_qrobust.quantization.integer_bias`), so the fake-quant model
            computes what the exported int8 model computes.
        quantize_output: end the model with an 8-bit OutputQuantizer on a calibrated range,
            as the int8 model's last layer writes int8 scores (needs ``activation_bits``).
        learn_activation_ranges: each ReLU range ``max`` starts where calibration puts it and
            is a trainable weight for quantization-aware fine-tuning (LSQ/PACT gradients,
            :class:`~keras_qrobust.quantizers.ActivationQuantizer`); else it stays frozen.
    """

    weight_bits: Optional[int] = 8
    activation_bits: Optional[int] = 8
    input_weight_bits: Optional[int] = 8
    per_axis: bool = True
    calibration: str = "mse"
    percentile: float = 99.99
    mu_law_last: int = 0
    mu: float = 255.0
    batch_size: int = 256
    integer_bias: bool = True
    quantize_output: bool = True
    layer_bits: Optional[Mapping[str, int]] = None
    layer_clip: Optional[Mapping[str, float]] = None
    learn_activation_ranges: bool = False

    def __post_init__(self):
        # per-layer settings are stored as sorted (name, value) tuples: immutable and hashable
        for name, check in (("layer_bits", lambda v, n: qz.check_bits(v, n)), ("layer_clip", _check_clip)):
            value = getattr(self, name)
            if value is not None:
                items = dict(value).items()
                object.__setattr__(self, name, tuple(sorted((str(k), check(v, f"{name}[{k!r}]")) for k, v in items)))
        for name in ("weight_bits", "activation_bits", "input_weight_bits"):
            _check_optional_bits(getattr(self, name), name)
        if self.weight_bits is None and self.activation_bits is None:
            raise ValueError("RobustQuantizer needs weight_bits or activation_bits (or both)")
        if self.calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {self.calibration!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {self.percentile}")
        if not isinstance(self.mu_law_last, int) or self.mu_law_last < 0:
            raise ValueError(f"mu_law_last must be an int >= 0, got {self.mu_law_last!r}")
        if self.mu_law_last and self.weight_bits is None:
            raise ValueError("mu_law_last needs weight_bits: the μ-law grid has weight_bits bits")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.learn_activation_ranges and self.activation_bits is None:
            raise ValueError("learn_activation_ranges needs activation_bits: a weight-only model has no ranges")

    @classmethod
    def from_setting(cls, setting: str, **kwargs) -> "RobustQuantizer":
        """``RobustQuantizer.from_setting("w4a4", input_weight_bits=8)``."""
        weight_bits, activation_bits = parse_setting(setting)
        return cls(weight_bits=weight_bits, activation_bits=activation_bits, **kwargs)

    @property
    def setting(self) -> str:
        return setting_name(self.weight_bits, self.activation_bits)

    def __str__(self) -> str:
        parts = [self.setting]
        if self.weight_bits is not None:
            parts.append(f"input w{self.input_weight_bits or self.weight_bits}")
            parts.append("per-axis" if self.per_axis else "per-tensor")
        if self.activation_bits is not None:
            parts.append(
                f"p{self.percentile:g} calibration" if self.calibration == "percentile"
                else f"{self.calibration} calibration"
            )
        if self.mu_law_last:
            parts.append(f"mu-law last {self.mu_law_last}")
        if self.layer_bits:
            parts.append("layer bits " + ", ".join(f"{k}={v}" for k, v in self.layer_bits))
        if self.layer_clip:
            parts.append("clip " + ", ".join(f"{k}={v:g}" for k, v in self.layer_clip))
        if self.activation_bits is not None and not self.integer_bias:
            parts.append("float bias")
        if self.activation_bits is not None and not self.quantize_output:
            parts.append("float output")
        if self.learn_activation_ranges:
            parts.append("learned ranges")
        return f"RobustQuantizer({', '.join(parts)})"

    # ------------------------------------------------------------------ quantize
    def quantize(self, model, samples=None):
        """Return a quantized, calibrated copy of ``model``.

        ``samples``: a float array shaped like the model input (a few hundred to a few
        thousand training images); needed when ``activation_bits`` is set.
        """
        model = check_model(model)
        if self.activation_bits is not None:
            samples = _check_samples(samples, model)
        # Lipschitz layers are Dense/Conv2D with a training-time penalty (and, with spectral
        # normalization, the kernel W/σ): quantize the kernels they compute with
        graph = fold_hard_sigmoid(strip_lipschitz(Graph.from_model(model)))
        _check_layers(graph)
        graph = fold_batchnorm(split_activations(graph))
        origins = {}
        int8_activations = self.activation_bits is not None and self.activation_bits <= 8
        if int8_activations:
            # the int8 graph stores the depthwise half's output: it needs a range of its own
            separable = [e["name"] for e in graph.iter_layers(("SeparableConv2D",))]
            graph = split_separable(graph)
            origins = {graph.inbound_names(graph.layer(name))[0]: name for name in separable}
        replacement, unquantized_activations = self._replacement(graph, origins)
        graph = replace_layers(graph, replacement)
        if unquantized_activations:
            warnings.warn(
                f"RobustQuantizer quantizes ReLU outputs to activation_bits={self.activation_bits} (as cnn2snn); "
                "these hidden activations get the int8 model's 8-bit grid instead: "
                f"{_listed(unquantized_activations)}",
                stacklevel=2,
            )
        if self.activation_bits is not None and self.quantize_output:
            outputs = graph.config["output_layers"]
            if len(outputs) != 1:
                raise UnsupportedModelError(f"Model '{model.name}' has {len(outputs)} outputs; pass "
                                            "quantize_output=False to quantize a multi-output model")
            graph.insert_after(outputs[0][0], "OutputQuantizer", {"name": "output_quantizer", "trainable": False,
                                                                  "dtype": "float32"})
        if int8_activations:  # wider activations have no int8 twin: their tensors stay float
            graph = quantize_tensors(graph)
        graph.config["name"] = f"{model.name}_{self.setting}"
        qmodel = graph.to_model()
        if self.activation_bits is not None:
            calibrate(qmodel, samples, self.calibration, self.percentile, self.batch_size, self.integer_bias)
        return qmodel

    def search(self, model, data, candidates=None, **kwargs):
        """Deprecated: call :func:`keras_qrobust.analysis.search` (``kq.analysis.search(quantizer,
        model, data, ...)``), which this forwards to for one release.

        The search scores quantized models with attacks, so it lives above quantization
        (:mod:`keras_qrobust.analysis`); this method was the one import from quantization up to it.
        """
        warnings.warn("RobustQuantizer.search is deprecated; call keras_qrobust.analysis.search(quantizer, "
                      "model, data, ...) instead", DeprecationWarning, stacklevel=2)
        from ..analysis.bit_width_search import search  # the deprecated bridge up to analysis, removed next release

        return search(self, model, data, candidates, **kwargs)

    def _weight_quantizer(self, bits: int, part: str, mu_law: bool, clip_ratio: float = 1.0):
        if mu_law:
            return qz.MuLawQuantizer(bits, mu=self.mu, mode="compand")
        depthwise = part == "depthwise_kernel"
        return qz.SymmetricQuantizer(bits, per_axis=self.per_axis, axis=(-2, -1) if depthwise else -1,
                                     clip_ratio=clip_ratio)

    def _replacement(self, graph: Graph, origins: Mapping[str, str]):
        """``origins``: the depthwise halves of split separable convolutions -> the layer they
        came from, whose settings (bits, clip, input layer, μ-law) they share."""
        names = [e["name"] for e in graph.iter_layers(WEIGHT_LAYERS)]
        origin = {n: origins.get(n, n) for n in names}
        weight_layers = list(dict.fromkeys(origin.values()))
        input_layers = {n for n in names if not {origin[a] for a in graph.ancestors(n) & set(names)} - {origin[n]}}
        mu_origins = set(weight_layers[max(0, len(weight_layers) - self.mu_law_last):]) if self.mu_law_last else set()
        mu_layers = {n for n in names if origin[n] in mu_origins}
        unquantized_activations = []

        layer_bits, layer_clip = dict(self.layer_bits or ()), dict(self.layer_clip or ())
        unknown = sorted((set(layer_bits) | set(layer_clip)) - set(weight_layers))
        if unknown:
            raise ValueError(f"layer_bits/layer_clip name layers that are not weight layers of this model: "
                             f"{', '.join(unknown)}; its weight layers are {', '.join(weight_layers)}")

        def replace(entry: dict):
            kind, name, config = entry["class_name"], entry["name"], dict(entry["config"])
            if kind in WEIGHT_LAYERS:
                bits = self.weight_bits
                if name in input_layers and self.input_weight_bits is not None:
                    bits = self.input_weight_bits
                bits = layer_bits.get(origin[name], bits)
                if bits is None:
                    return None
                for part, arg in QUANTIZED_LAYERS[kind].kernel_quantizer_args.items():
                    config[arg] = qz.serialize(self._weight_quantizer(bits, part, name in mu_layers,
                                                                      layer_clip.get(origin[name], 1.0)))
                return QUANTIZED_LAYERS[kind].__name__, config
            if self.activation_bits is None:
                return None
            if kind == "ReLU":
                if config.get("negative_slope") or config.get("threshold"):
                    unquantized_activations.append(f"{name} (leaky/thresholded ReLU)")
                    return None
                config["activation_quantizer"] = qz.serialize(qz.ActivationQuantizer(
                    self.activation_bits, learn_range=self.learn_activation_ranges))
                return "QuantizedReLU", config
            if kind in ("Activation", "Softmax") and not graph.is_output(name):
                unquantized_activations.append(f"{name} ({config.get('activation', kind)})")
            if kind == "HardSigmoid":
                unquantized_activations.append(f"{name} (hard sigmoid)")
            return None

        return replace, unquantized_activations


def round_inputs_half_even(model) -> list[str]:
    """Make the input quantizers of a RobustQuantizer model round half to even (in place),
    as its exported files' callers do (:class:`~keras_qrobust.layers.TensorQuantizer`);
    models quantized by keras_qrobust before this rule rounded half up and disagree with
    their files at inputs an attack puts between two levels. Returns the layers changed."""
    changed = []
    for layer in model.layers:
        reads_input = any(isinstance(source, keras.layers.InputLayer) for source in inbound_layers(layer))
        if type(layer) is TensorQuantizer and reads_input and layer.rounding != "half_even":
            layer.rounding = "half_even"
            changed.append(layer.name)
    return changed


def _listed(names: list[str], shown: int = 6) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _check_layers(graph: Graph) -> None:
    supported = set(SUPPORTED)
    for entry in graph.layers:
        kind = Graph.kind(entry)
        if kind in QUANTIZED_WEIGHT_LAYERS or kind in ("QuantizedReLU", "OutputQuantizer", "TensorQuantizer"):
            raise UnsupportedModelError(
                f"Layer '{entry['name']}' ({kind}) is already quantized; pass the float model "
                "to RobustQuantizer.quantize."
            )
        if kind == "MuLawDense":
            raise UnsupportedModelError(
                f"Layer '{entry['name']}' (MuLawDense) already maps its weights; quantize the model "
                "without it and pass mu_law_last=N to RobustQuantizer (or call "
                "transforms.apply_mu_law on the quantized model)."
            )
        if kind not in supported:
            raise UnsupportedModelError(
                f"RobustQuantizer cannot quantize layer '{entry['name']}' ({kind}). Supported "
                f"layers: {', '.join(sorted(supported))}. Replace or remove it (a TFOpLambda "
                "comes from a raw TensorFlow op in a functional model: use the Keras layer "
                "instead, e.g. keras.layers.Add for +)."
            )


def _check_samples(samples, model) -> np.ndarray:
    if samples is None:
        raise ValueError(
            "samples are needed to calibrate activation ranges: pass a few hundred to a few "
            "thousand training inputs, e.g. quantize(model, samples=x_train[:1024])"
        )
    if len(model.inputs) != 1:
        raise UnsupportedModelError(
            f"Model '{model.name}' has {len(model.inputs)} inputs; only single-input models are supported")
    array = np.asarray(samples)
    expected = tuple(model.inputs[0].shape[1:])
    if array.ndim != len(expected) + 1 or any(
        e is not None and e != a for e, a in zip(expected, array.shape[1:])
    ):
        raise ValueError(
            f"samples have shape {array.shape}; model '{model.name}' expects (N, "
            f"{', '.join('?' if e is None else str(e) for e in expected)})"
        )
    if array.shape[0] == 0:
        raise ValueError("samples is empty: pass a few hundred to a few thousand training inputs, e.g. "
                         "samples=x_train[:1024]")
    if not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"samples must be numeric, got dtype {array.dtype}: pass the float model inputs "
                        "(e.g. x_train[:1024].astype('float32'))")
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError("samples contain NaN or infinite values: drop or repair those inputs before calibrating "
                         "(np.isfinite(samples).all(axis=...) finds them)")
    return array

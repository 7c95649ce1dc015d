"""tfmot ``QuantizeConfig`` and ``QuantizeScheme`` for wXaY (and weight-only wX) quantization.

>>> annotated = tfmot.quantization.keras.quantize_annotate_model(model)
>>> qat = tfmot.quantization.keras.quantize_apply(annotated, scheme=WXAYScheme(4, 4))
>>> qat.compile(...); qat.fit(...)          # quantization-aware training

Weights use :class:`~keras_qrobust.quantizers.SymmetricQuantizer` (per output channel by
default); ReLU outputs use :class:`~keras_qrobust.quantizers.ActivationQuantizer` whose range
is initialised from the first training batch and then tracked by an EMA (of the global
batch's maximum under a ``tf.distribute`` strategy, see :class:`GlobalBatchActivationQuantizer`).
The layout transform folds BatchNormalization into the layer before it, as RobustQuantizer does.
"""

from __future__ import annotations

from typing import Optional, Sequence

import tensorflow_model_optimization as tfmot

from .. import quantizers as qz
from .._keras import keras, register, tf
from ..transforms import Graph, fold_batchnorm, split_separable
from ..transforms._kinds import KERNELS, PASS_THROUGH

__all__ = ["GlobalBatchActivationQuantizer", "WXAYQuantizeConfig", "WXAYQuantizeRegistry", "WXAYLayoutTransform",
           "WXAYScheme", "WXScheme"]

_tfmot_q = tfmot.quantization.keras
_WEIGHT_ATTRS = {getattr(keras.layers, name): kernels for name, kernels in KERNELS.items()}
_PASS_THROUGH = tuple(getattr(keras.layers, name) for name in (*PASS_THROUGH, "Softmax"))


def _is_relu(activation) -> bool:
    return getattr(activation, "__name__", None) == "relu"


class GlobalBatchActivationQuantizer(qz.ActivationQuantizer):
    """:class:`~keras_qrobust.quantizers.ActivationQuantizer` whose EMA tracks the maximum of
    the global batch when a ``tf.distribute`` strategy splits it over replicas.

    Each replica sees its share of the batch only, and its copy of the mirrored range variable
    (aggregation NONE) takes whatever the replica assigns: with the plain quantizer every
    replica would track the maximum of its own share and the copies would drift apart. Here
    the replicas' maxima are all-gathered first, so every replica assigns the same value, the
    one a single device computes from the whole batch. Outside a strategy it is the plain
    quantizer. The quantizer is not serialized (``WXAYQuantizeConfig`` rebuilds it), so
    saved QAT models are unchanged.
    """

    def _tracked_max(self, x, weights):
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            x = replica.all_gather(tf.reshape(tf.stop_gradient(tf.reduce_max(x)), [1]), axis=0)
        return super()._tracked_max(x, weights)


@register
class WXAYQuantizeConfig(_tfmot_q.QuantizeConfig):
    """Quantize the named kernels to ``weight_bits`` and the ReLU output to ``activation_bits``.

    ``activation_attrs=("activation",)`` quantizes a fused ReLU activation (Dense/Conv with
    ``activation="relu"``); ``quantize_output=True`` quantizes a standalone ReLU layer's output.
    """

    def __init__(
        self,
        weight_bits: Optional[int] = None,
        activation_bits: Optional[int] = None,
        weight_attrs: Sequence[str] = (),
        activation_attrs: Sequence[str] = (),
        quantize_output: bool = False,
        per_axis: bool = True,
        ema_decay: float = 0.999,
    ):
        self.weight_bits = None if weight_bits is None else qz.check_bits(weight_bits, "weight_bits")
        self.activation_bits = (
            None if activation_bits is None else qz.check_bits(activation_bits, "activation_bits")
        )
        if weight_attrs and self.weight_bits is None:
            raise ValueError("weight_attrs given without weight_bits")
        if (activation_attrs or quantize_output) and self.activation_bits is None:
            raise ValueError("activation quantization requested without activation_bits")
        self.weight_attrs = list(weight_attrs)
        self.activation_attrs = list(activation_attrs)
        self.quantize_output = bool(quantize_output)
        self.per_axis = bool(per_axis)
        self.ema_decay = float(ema_decay)

    def _weight_quantizer(self, attr: str):
        axis = (-2, -1) if attr == "depthwise_kernel" else -1
        return qz.SymmetricQuantizer(self.weight_bits, per_axis=self.per_axis, axis=axis)

    def _activation_quantizer(self):
        return GlobalBatchActivationQuantizer(self.activation_bits, ema_decay=self.ema_decay)

    def get_weights_and_quantizers(self, layer):
        return [(getattr(layer, attr), self._weight_quantizer(attr)) for attr in self.weight_attrs]

    def get_activations_and_quantizers(self, layer):
        return [(getattr(layer, attr), self._activation_quantizer()) for attr in self.activation_attrs]

    def set_quantize_weights(self, layer, quantize_weights):
        for attr, weight in zip(self.weight_attrs, quantize_weights, strict=True):
            setattr(layer, attr, weight)

    def set_quantize_activations(self, layer, quantize_activations):
        for attr, activation in zip(self.activation_attrs, quantize_activations, strict=True):
            setattr(layer, attr, activation)

    def get_output_quantizers(self, layer):
        return [self._activation_quantizer()] if self.quantize_output else []

    def get_config(self):
        return {
            "weight_bits": self.weight_bits,
            "activation_bits": self.activation_bits,
            "weight_attrs": self.weight_attrs,
            "activation_attrs": self.activation_attrs,
            "quantize_output": self.quantize_output,
            "per_axis": self.per_axis,
            "ema_decay": self.ema_decay,
        }

    def __eq__(self, other):
        return isinstance(other, WXAYQuantizeConfig) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other


class WXAYQuantizeRegistry(_tfmot_q.QuantizeRegistry):
    """Which :class:`WXAYQuantizeConfig` each supported Keras layer gets."""

    def __init__(self, weight_bits: int, activation_bits: Optional[int], per_axis: bool = True,
                 ema_decay: float = 0.999):
        self.weight_bits = weight_bits
        self.activation_bits = activation_bits
        self.per_axis = per_axis
        self.ema_decay = ema_decay

    def _config(self, **kwargs) -> WXAYQuantizeConfig:
        return WXAYQuantizeConfig(self.weight_bits, self.activation_bits, per_axis=self.per_axis,
                                  ema_decay=self.ema_decay, **kwargs)

    def supports(self, layer) -> bool:
        kind = type(layer)
        return kind in _WEIGHT_ATTRS or kind in _PASS_THROUGH or kind in (
            keras.layers.ReLU, keras.layers.Activation)

    def get_quantize_config(self, layer):
        kind = type(layer)
        quantize_activations = self.activation_bits is not None
        if kind in _WEIGHT_ATTRS:
            fused_relu = quantize_activations and _is_relu(getattr(layer, "activation", None))
            return self._config(weight_attrs=_WEIGHT_ATTRS[kind],
                                activation_attrs=("activation",) if fused_relu else ())
        if kind is keras.layers.ReLU:
            plain = not layer.negative_slope and not layer.threshold
            return self._config(quantize_output=quantize_activations and bool(plain))
        if kind is keras.layers.Activation:
            return self._config(quantize_output=quantize_activations and _is_relu(layer.activation))
        if kind in _PASS_THROUGH:
            return self._config()
        raise ValueError(
            f"WXAYScheme cannot quantize layer '{layer.name}' ({kind.__name__}). It supports "
            f"{', '.join(sorted(k.__name__ for k in (*_WEIGHT_ATTRS, *_PASS_THROUGH)))}, ReLU, "
            "Activation and BatchNormalization right after a weight layer. Leave the layer out "
            "of quantize_annotate_* or give it a QuantizeConfig of your own."
        )


class WXAYLayoutTransform(_tfmot_q.QuantizeLayoutTransform):
    """Fold BatchNormalization into the preceding weight layer and split SeparableConv2D
    into DepthwiseConv2D + 1x1 Conv2D (as TFLite runs it) before wrapping."""

    def apply(self, model, layer_quantize_map):
        kinds = (keras.layers.BatchNormalization, keras.layers.SeparableConv2D)
        if not any(isinstance(l, kinds) for l in model.layers):
            return model, layer_quantize_map
        for layer in model.layers:
            if isinstance(layer, keras.layers.SeparableConv2D) and (
                layer_quantize_map.get(layer.name, {}).get("quantize_config") is not None
            ):
                raise ValueError(
                    f"SeparableConv2D '{layer.name}' has a QuantizeConfig of its own, but WXAYScheme "
                    "splits separable convolutions into DepthwiseConv2D + 1x1 Conv2D. Build the model "
                    "with those two layers and annotate them instead."
                )
        graph = split_separable(fold_batchnorm(Graph.from_model(model)))
        quantize_map = {k: v for k, v in layer_quantize_map.items() if graph.has_layer(k)}
        for entry in graph.layers:  # layers the split created are quantized like their twin
            twin = entry["name"].removesuffix("_depthwise")
            if entry["name"] not in quantize_map and twin in layer_quantize_map:
                quantize_map[entry["name"]] = dict(layer_quantize_map[twin])
        return graph.to_model(), quantize_map


class WXAYScheme(_tfmot_q.QuantizeScheme):
    """tfmot scheme: ``weight_bits`` symmetric per-axis weights, ``activation_bits`` ReLU outputs.

    ``activation_bits=None`` quantizes weights only (see :class:`WXScheme`).
    """

    def __init__(self, weight_bits: int = 8, activation_bits: Optional[int] = 8,
                 per_axis: bool = True, ema_decay: float = 0.999):
        self.weight_bits = qz.check_bits(weight_bits, "weight_bits")
        self.activation_bits = (
            None if activation_bits is None else qz.check_bits(activation_bits, "activation_bits")
        )
        self.per_axis = per_axis
        self.ema_decay = ema_decay

    def get_layout_transformer(self):
        return WXAYLayoutTransform()

    def get_quantize_registry(self):
        return WXAYQuantizeRegistry(self.weight_bits, self.activation_bits, self.per_axis, self.ema_decay)

    def __repr__(self):
        return f"{type(self).__name__}(weight_bits={self.weight_bits}, activation_bits={self.activation_bits})"


class WXScheme(WXAYScheme):
    """Weight-only tfmot scheme: ``weight_bits`` kernels, float activations."""

    def __init__(self, weight_bits: int = 8, per_axis: bool = True):
        super().__init__(weight_bits, None, per_axis=per_axis)


def _register_tfmot_objects() -> None:
    """Make tfmot's wrappers loadable without ``quantize_scope``.

    ``keras.models.load_model`` on a QAT model otherwise needs
    ``with tfmot.quantization.keras.quantize_scope():``.
    """
    objects = keras.utils.get_custom_objects()
    for scope_objects in _tfmot_q.quantize_scope().custom_objects:
        for name, obj in scope_objects.items():
            objects.setdefault(name, obj)


_register_tfmot_objects()

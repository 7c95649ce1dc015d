"""Fake quantizers for weights and activations, as tfmot ``Quantizer`` objects.

Each quantizer maps a float tensor onto a grid of at most ``2**bits`` values and passes
gradients straight through (STE) inside its range, so the same object serves
post-training quantization, quantization-aware training (tfmot ``QuantizeConfig``) and
gradient attacks on the quantized model.

Definitions (docs/methods.md):

* :class:`UniformQuantizer` — asymmetric min/max grid, Zhou et al. 2022 eq. (6):
  ``q = round((x - min)(2^b - 1)/(max - min))``, ``x̂ = min + q (max - min)/(2^b - 1)``.
* :class:`SymmetricQuantizer` — cnn2snn's ``MaxPerAxisQuantizer``: ``s = max|W|`` per
  output channel, ``Δ = s/(2^(b-1) - 1)``, ``x̂ = Δ clip(round(x/Δ), -(2^(b-1) - 1), 2^(b-1) - 1)``;
  ``b = 1`` gives ``sign(x) s``.
* :class:`ActivationQuantizer` — unsigned ``[0, max]`` grid with ``Δ = max/(2^b - 1)``; ``max`` is
  a layer weight set by calibration (or tracked by an EMA during QAT).
* :class:`MuLawQuantizer` — μ-law companding, Song et al. 2020 eq. (3).
"""

from __future__ import annotations

from typing import Any

import tensorflow_model_optimization as tfmot

from .._keras import keras
from .base import BaseQuantizer
from .grid import MAX_BITS, MIN_BITS, check_bits, nudged_range, score_range
from .mu_law import MuLawQuantizer, mu_law, mu_law_inverse
from .uniform import ActivationQuantizer, SymmetricQuantizer, UniformQuantizer

__all__ = [
    "MIN_BITS",
    "MAX_BITS",
    "check_bits",
    "nudged_range",
    "score_range",
    "BaseQuantizer",
    "UniformQuantizer",
    "SymmetricQuantizer",
    "ActivationQuantizer",
    "MuLawQuantizer",
    "mu_law",
    "mu_law_inverse",
    "get",
    "serialize",
]


_QUANTIZERS = {
    cls.__name__: cls
    for cls in (UniformQuantizer, SymmetricQuantizer, ActivationQuantizer, MuLawQuantizer)
}


def serialize(quantizer: BaseQuantizer | None) -> dict | None:
    """Keras-serialize a quantizer (``None`` stays ``None``)."""
    return None if quantizer is None else keras.utils.serialize_keras_object(quantizer)


def get(identifier: Any) -> BaseQuantizer | None:
    """A quantizer from an instance, ``None`` or a serialized config (any Keras format)."""
    if identifier is None or isinstance(identifier, tfmot.quantization.keras.quantizers.Quantizer):
        return identifier
    if isinstance(identifier, dict):
        class_name = identifier.get("class_name", "")
        cls = _QUANTIZERS.get(class_name.split(">")[-1])
        if cls is not None:
            return cls.from_config(identifier.get("config", {}))
        return keras.utils.deserialize_keras_object(identifier, module_objects=_QUANTIZERS)
    raise TypeError(
        f"Cannot interpret {identifier!r} as a quantizer: pass a keras_qrobust quantizer "
        "(e.g. SymmetricQuantizer(4)), its serialized config, or None."
    )



"""Fake quantizers for weights and activations, as tfmot ``Quantizer`` objects.

Each quantizer maps a float tensor onto a grid of at most ``2**bits`` values and passes
gradients straight through (STE) inside its range, so the same object serves
post-training quantization, quantization-aware training (tfmot ``QuantizeConfig``) and
gradient attacks on the quantized model.

Definitions (``../shared/DESIGN.md`` §3):

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

import math
import numbers
from typing import Any, Sequence

import numpy as np

import tensorflow_model_optimization as tfmot

from ._keras import keras, register, tf

__all__ = [
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

MIN_BITS, MAX_BITS = 1, 16


def check_bits(bits: Any, name: str = "bits") -> int:
    """Validate a bit width (an int in [1, 16]) and return it."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"{name} must be an int in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    bits = int(bits)
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{name} must be in [{MIN_BITS}, {MAX_BITS}], got {bits}")
    return bits


def _round_half_away(x: tf.Tensor) -> tf.Tensor:
    # TFLite rounds weights half away from zero (std::round); tf.round rounds half to even.
    return tf.sign(x) * tf.floor(tf.abs(x) + 0.5)


def _straight_through(x: tf.Tensor, quantized: tf.Tensor) -> tf.Tensor:
    """Forward: ``quantized``. Backward: identity (straight-through estimator)."""
    return x + tf.stop_gradient(quantized - x)


def _reduce_axes(rank: int, axis: Sequence[int] | None) -> list[int] | None:
    """Axes to reduce over so that one scale remains per index of ``axis``."""
    if axis is None:
        return None
    keep = {a % rank for a in axis}
    return [a for a in range(rank) if a not in keep]


class BaseQuantizer(tfmot.quantization.keras.quantizers.Quantizer):
    """Common parts: validation, config, equality and a readable ``__str__``."""

    #: short name used by ``__str__``
    kind = "quantizer"

    def build(self, tensor_shape, name, layer):  # weight quantizers hold no state
        return {}

    def __call__(self, inputs, training=None, weights=None, **kwargs):
        inputs = tf.convert_to_tensor(inputs)
        return _straight_through(inputs, self.quantize(inputs, weights or {}))

    def quantize(self, x: tf.Tensor, weights: dict | None = None) -> tf.Tensor:
        """The quantized values of ``x`` (no gradient handling)."""
        raise NotImplementedError

    def get_config(self) -> dict:
        raise NotImplementedError

    def _describe(self) -> list[str]:
        return [str(self.get_config().get("bits"))]

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(self._describe())})"

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(map(str, self.get_config().items())))))


class _AxisMixin:
    """Per-tensor (``per_axis=False``) or per-channel scales along ``axis``."""

    def _init_axis(self, per_axis: bool, axis: int | Sequence[int]) -> None:
        self.per_axis = bool(per_axis)
        self.axis = (int(axis),) if isinstance(axis, int) else tuple(int(a) for a in axis)

    def _reduce(self, x: tf.Tensor, fn) -> tf.Tensor:
        if not self.per_axis:
            return fn(x)
        return fn(x, axis=_reduce_axes(x.shape.rank, self.axis), keepdims=True)

    def _axis_config(self) -> dict:
        return {"per_axis": self.per_axis, "axis": list(self.axis) if len(self.axis) > 1 else self.axis[0]}

    def _axis_describe(self) -> list[str]:
        if not self.per_axis:
            return []
        return ["per_axis"] if self.axis == (-1,) else [f"per_axis={list(self.axis)}"]


@register
class UniformQuantizer(_AxisMixin, BaseQuantizer):
    """Asymmetric uniform quantizer over the tensor's own ``[min, max]`` (Zhou 2022 eq. 6).

    ``q = round((x - min)·(2^b - 1)/(max - min))`` and ``x̂ = min + q·(max - min)/(2^b - 1)``;
    with ``per_axis`` one ``(min, max)`` pair per index of ``axis`` (default: last axis,
    the output channels of Dense and Conv2D kernels).
    """

    kind = "uniform"

    def __init__(self, bits: int, per_axis: bool = False, axis: int | Sequence[int] = -1):
        self.bits = check_bits(bits)
        self._init_axis(per_axis, axis)

    def quantize(self, x, weights=None):
        lo = tf.stop_gradient(self._reduce(x, tf.reduce_min))
        hi = tf.stop_gradient(self._reduce(x, tf.reduce_max))
        levels = float(2**self.bits - 1)
        span = hi - lo
        safe = tf.where(span > 0, span, tf.ones_like(span))
        q = tf.floor((x - lo) * (levels / safe) + 0.5)
        return tf.where(span > 0, lo + q * (safe / levels), x)

    def get_config(self):
        return {"bits": self.bits, **self._axis_config()}

    def _describe(self):
        return [str(self.bits), *self._axis_describe()]


@register
class SymmetricQuantizer(_AxisMixin, BaseQuantizer):
    """Symmetric max quantizer, per output channel by default (cnn2snn ``MaxPerAxisQuantizer``).

    ``s = r·max|x|``, ``Δ = s/(2^(b-1) - 1)``, ``x̂ = Δ·clip(round(x/Δ), -(2^(b-1) - 1), 2^(b-1) - 1)``.
    The grid is symmetric around an exact zero and has ``2^b - 1`` levels; ``b = 1`` is
    ``sign(x)·s`` (two levels). ``clip_ratio`` ``r`` ≤ 1 clips the largest weights to a finer
    grid (Song 2021's clipping ratio; 1 = cnn2snn's max quantizer).
    """

    kind = "symmetric"

    def __init__(self, bits: int, per_axis: bool = True, axis: int | Sequence[int] = -1, clip_ratio: float = 1.0):
        self.bits = check_bits(bits)
        self._init_axis(per_axis, axis)
        if not 0.0 < float(clip_ratio) <= 1.0:
            raise ValueError(f"clip_ratio must be in (0, 1], got {clip_ratio}")
        self.clip_ratio = float(clip_ratio)

    @property
    def max_level(self) -> int:
        """Largest integer code ``2^(b-1) - 1`` (``1`` for binary)."""
        return max(2 ** (self.bits - 1) - 1, 1)

    def scale(self, x: tf.Tensor) -> tf.Tensor:
        """Step ``Δ`` (per channel when ``per_axis``); ``s`` itself for ``b = 1``."""
        step = tf.stop_gradient(self._reduce(tf.abs(x), tf.reduce_max)) / self.max_level
        return step if self.clip_ratio == 1.0 else step * self.clip_ratio

    def quantize(self, x, weights=None):
        step = self.scale(x)
        if self.bits == 1:
            return tf.where(x >= 0, step, -step) * tf.ones_like(x)
        safe = tf.where(step > 0, step, tf.ones_like(step))
        codes = tf.clip_by_value(_round_half_away(x / safe), -self.max_level, self.max_level)
        return tf.where(step > 0, codes * safe, tf.zeros_like(x))

    def get_config(self):
        config = {"bits": self.bits, **self._axis_config()}
        if self.clip_ratio != 1.0:
            config["clip_ratio"] = self.clip_ratio
        return config

    def _describe(self):
        clip = [f"clip={self.clip_ratio:g}"] if self.clip_ratio != 1.0 else []
        return [str(self.bits), *self._axis_describe(), *clip]


@register
class ActivationQuantizer(BaseQuantizer):
    """Unsigned quantizer on ``[0, max]`` for ReLU outputs: ``x̂ = Δ·round(clip(x, 0, max)/Δ)``.

    ``Δ = max/(2^b - 1)``. ``max`` is a non-trainable weight of the layer that owns the
    quantizer: RobustQuantizer sets it by calibration and keeps it frozen
    (``ema_decay=None``); for quantization-aware training with ``ema_decay`` set, the first
    training batch initialises it to the batch maximum and later batches update it as an
    exponential moving average (as tfmot's ``MovingAverageQuantizer``, without its fixed
    6.0 start). The gradient is passed straight through inside ``[0, max]`` and is zero
    outside.
    """

    kind = "unsigned"

    def __init__(self, bits: int, init_max: float = 6.0, ema_decay: float | None = None):
        self.bits = check_bits(bits)
        if not init_max > 0:
            raise ValueError(f"init_max must be > 0, got {init_max}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay}")
        self.init_max = float(init_max)
        self.ema_decay = None if ema_decay is None else float(ema_decay)

    def build(self, tensor_shape, name, layer):
        max_value = layer.add_weight(
            name=f"{name}_max",
            shape=(),
            initializer=keras.initializers.Constant(self.init_max),
            trainable=False,
        )
        initialized = layer.add_weight(
            name=f"{name}_initialized",
            shape=(),
            initializer=keras.initializers.Constant(0.0),
            trainable=False,
        )
        return {"max": max_value, "initialized": initialized}

    def _tracked_max(self, x: tf.Tensor, weights: dict) -> tf.Tensor:
        """Update the range from the batch (training with an EMA) and return it."""
        max_var, init_var = weights["max"], weights["initialized"]
        batch_max = tf.maximum(tf.stop_gradient(tf.reduce_max(x)), 1e-8)
        decay = self.ema_decay
        new_max = tf.where(init_var > 0, decay * max_var + (1.0 - decay) * batch_max, batch_max)
        with tf.control_dependencies([max_var.assign(new_max), init_var.assign(1.0)]):
            return tf.identity(new_max)

    def __call__(self, inputs, training=None, weights=None, **kwargs):
        inputs = tf.convert_to_tensor(inputs)
        max_value = weights["max"]
        if self.ema_decay is not None:
            if training is None:
                training = keras.backend.learning_phase()
            max_value = tf.__internal__.smart_cond.smart_cond(
                training,
                lambda: self._tracked_max(inputs, weights),
                lambda: tf.identity(weights["max"]),
            )
        max_value = tf.convert_to_tensor(max_value, inputs.dtype)

        @tf.custom_gradient
        def quantized(x):
            clipped = tf.clip_by_value(x, 0.0, max_value)

            def straight_through(upstream):  # inside [0, max], boundaries included; zero outside
                return tf.where(tf.equal(clipped, x), upstream, tf.zeros_like(upstream))

            return self.quantize_with_max(clipped, max_value), straight_through

        # the values and gradients of clip followed by quantize_with_max with the identity
        # gradient, without the two element-wise passes of the x + stop_gradient(q - x) form:
        # a sixth less time for an attack's gradient on a quantized model
        return quantized(inputs)

    def quantize(self, x, weights=None):
        return self.quantize_with_max(x, weights["max"])

    def quantize_with_max(self, x: tf.Tensor, max_value) -> tf.Tensor:
        levels = float(2**self.bits - 1)
        max_value = tf.cast(max_value, x.dtype)
        step = tf.maximum(max_value, 1e-12) / levels
        return tf.floor(tf.clip_by_value(x, 0.0, max_value) / step + 0.5) * step

    def get_config(self):
        return {"bits": self.bits, "init_max": self.init_max, "ema_decay": self.ema_decay}

    def _describe(self):
        return [str(self.bits)] + ([f"ema={self.ema_decay}"] if self.ema_decay is not None else [])


def mu_law(x, mu: float = 255.0):
    """μ-law compressor ``F(x) = sgn(x)·ln(1 + μ|x|)/ln(1 + μ)`` on ``[-1, 1]`` (Song 2020 eq. 3a)."""
    return tf.sign(x) * tf.math.log1p(mu * tf.abs(x)) / math.log1p(mu)


def mu_law_inverse(y, mu: float = 255.0):
    """μ-law expander ``F⁻¹(y) = sgn(y)·((1 + μ)^|y| - 1)/μ`` (Song 2020 eq. 3b)."""
    return tf.sign(y) * tf.math.expm1(tf.abs(y) * math.log1p(mu)) / mu


@register
class MuLawQuantizer(BaseQuantizer):
    """μ-law weight quantizer / mapping, per tensor (Song 2020 eq. 3).

    With ``s = max|W|`` and ``Wn = W/s``:

    * ``mode="compand"``: ``W' = s·F⁻¹(Q_b(F(Wn)))`` — a non-uniform quantizer whose levels are
      dense near zero; ``Q_b`` is the symmetric ``b``-bit grid on ``[-1, 1]``. Gradients are
      straight-through.
    * ``mode="map"``: the paper's post-training nonlinear mapping ``W' = s·F(Q_b(Wn))`` (or
      ``s·F(Wn)`` with ``bits=None``). It changes the function the layer computes and keeps
      the true gradient of ``F``.
    """

    kind = "mu_law"
    MODES = ("compand", "map")

    def __init__(self, bits: int | None = None, mu: float = 255.0, mode: str = "compand"):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        if bits is None and mode == "compand":
            raise ValueError("mode='compand' needs bits (the grid the companded values use)")
        if not mu > 0:
            raise ValueError(f"mu must be > 0, got {mu}")
        self.bits = None if bits is None else check_bits(bits)
        self.mu = float(mu)
        self.mode = mode

    def _grid(self, x: tf.Tensor) -> tf.Tensor:
        """Symmetric b-bit grid on [-1, 1] (identity without bits)."""
        if self.bits is None:
            return x
        if self.bits == 1:
            return tf.where(x >= 0, 1.0, -1.0) * tf.ones_like(x)
        levels = float(2 ** (self.bits - 1) - 1)
        return tf.clip_by_value(_round_half_away(x * levels), -levels, levels) / levels

    def _scale(self, x: tf.Tensor) -> tf.Tensor:
        s = tf.stop_gradient(tf.reduce_max(tf.abs(x)))
        return tf.where(s > 0, s, tf.ones_like(s))

    def quantize(self, x, weights=None):
        s = self._scale(x)
        if self.mode == "compand":
            return s * mu_law_inverse(self._grid(mu_law(x / s, self.mu)), self.mu)
        return s * mu_law(self._grid(x / s), self.mu)

    def __call__(self, inputs, training=None, weights=None, **kwargs):
        inputs = tf.convert_to_tensor(inputs)
        if self.mode == "map":
            s = self._scale(inputs)
            grid = _straight_through(inputs / s, self._grid(inputs / s))
            return s * mu_law(grid, self.mu)
        return super().__call__(inputs, training, weights, **kwargs)

    def get_config(self):
        return {"bits": self.bits, "mu": self.mu, "mode": self.mode}

    def _describe(self):
        mu = int(self.mu) if self.mu.is_integer() else self.mu
        return [str(self.bits), f"mu={mu}", self.mode]


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


def nudged_range(low: float, high: float) -> tuple[float, float]:
    """Widen ``[low, high]`` to contain 0 and nudge it so 0 is exactly one of 256 levels.

    TensorFlow's fake quant, the TFLite converter and tf2onnx then agree on the scale
    ``(high - low)/255`` and the integer zero point.
    """
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if high - low < 1e-8:
        high = low + 1e-3
    scale = (high - low) / 255
    zero_point = round(-low / scale)
    return -zero_point * scale, (255 - zero_point) * scale


def score_range(low: float, high: float, lowest_top: float | None) -> tuple[float, float]:
    """The int8 range of class scores ``[low, high]``.

    Only the top scores decide the class, so the range starts below the lowest top score
    seen (``lowest_top``, with a margin of half its distance to ``high``) rather than at the
    lowest score: the 256 levels then resolve near-tied top scores about twice as finely.
    """
    if lowest_top is not None and np.isfinite(lowest_top):
        low = max(low, lowest_top - 0.5 * (high - lowest_top))
    return nudged_range(low, high)

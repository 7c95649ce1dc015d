"""Uniform fake quantizers: asymmetric min/max, symmetric per-channel weights, unsigned activations.

* :class:`UniformQuantizer` — asymmetric min/max grid, Zhou et al. 2022 eq. (6):
  ``q = round((x - min)(2^b - 1)/(max - min))``, ``x̂ = min + q (max - min)/(2^b - 1)``.
* :class:`SymmetricQuantizer` — cnn2snn's ``MaxPerAxisQuantizer``: ``s = max|W|`` per
  output channel, ``Δ = s/(2^(b-1) - 1)``, ``x̂ = Δ clip(round(x/Δ), -(2^(b-1) - 1), 2^(b-1) - 1)``;
  ``b = 1`` gives ``sign(x) s``.
* :class:`ActivationQuantizer` — unsigned ``[0, max]`` grid with ``Δ = max/(2^b - 1)``; ``max`` is
  a layer weight set by calibration (or tracked by an EMA during QAT).
"""

from __future__ import annotations

from typing import Sequence

from .._keras import keras, register, tf
from .base import BaseQuantizer, _AxisMixin, _round_half_away
from .grid import activation_levels, check_bits, weight_levels

__all__ = ["UniformQuantizer", "SymmetricQuantizer", "ActivationQuantizer"]


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
        levels = float(activation_levels(self.bits))
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
        return weight_levels(self.bits)

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

    ``learn_range=True`` makes ``max`` a trainable weight that the loss moves (LSQ, Esser et
    al. 2020, eq. 3, with ``s = max/(2^b - 1)``; above the range it is PACT's gradient, Choi et
    al. 2018, eq. 3): with ``L = 2^b - 1`` and ``v = x/Δ``,

        ∂x̂/∂max = (round(v) - v)/L  for 0 ≤ x < max,   1  for x ≥ max,   0  for x < 0,

    so a range is widened where clipping costs loss and narrowed where the grid is too coarse
    (for adversarial fine-tuning: the range the attacked inputs need). LSQ's gradient scale
    ``g`` is left out: Adam divides each weight's gradient by its own running RMS, which
    cancels any constant factor — and so moves each range by about the learning rate per step,
    whatever its size (a 0.5 range can move by its own size in a few thousand steps at 1e-3).
    ``max`` stays above ``1e-3``.
    """

    kind = "unsigned"

    MIN_LEARNED_MAX = 1e-3

    def __init__(self, bits: int, init_max: float = 6.0, ema_decay: float | None = None, learn_range: bool = False):
        self.bits = check_bits(bits)
        if not init_max > 0:
            raise ValueError(f"init_max must be > 0, got {init_max}")
        if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay}")
        if not isinstance(learn_range, bool):
            raise TypeError(f"learn_range must be a bool, got {learn_range!r}")
        if learn_range and ema_decay is not None:
            raise ValueError("learn_range and ema_decay both set the range: pass one of them")
        self.init_max = float(init_max)
        self.ema_decay = None if ema_decay is None else float(ema_decay)
        self.learn_range = learn_range

    def build(self, tensor_shape, name, layer):
        max_value = layer.add_weight(
            name=f"{name}_max",
            shape=(),
            initializer=keras.initializers.Constant(self.init_max),
            trainable=self.learn_range,
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
        if self.learn_range:
            return self._learned(inputs, tf.maximum(tf.cast(max_value, inputs.dtype), self.MIN_LEARNED_MAX))
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

    def _learned(self, inputs: tf.Tensor, max_value: tf.Tensor) -> tf.Tensor:
        """The quantized ``inputs`` with the gradients of the class docstring (to ``x`` and ``max``)."""
        levels = float(activation_levels(self.bits))

        @tf.custom_gradient
        def quantized(x, top):
            clipped = tf.clip_by_value(x, 0.0, top)
            step = top / levels
            scaled = clipped / step
            rounded = tf.floor(scaled + 0.5)
            inside = tf.equal(clipped, x)

            def gradients(upstream):
                d_top = tf.where(x >= top, tf.ones_like(x), tf.where(x > 0.0, (rounded - scaled) / levels, 0.0))
                return tf.where(inside, upstream, tf.zeros_like(upstream)), tf.reduce_sum(upstream * d_top)

            return rounded * step, gradients

        return quantized(inputs, max_value)

    def quantize(self, x, weights=None):
        return self.quantize_with_max(x, weights["max"])

    def quantize_with_max(self, x: tf.Tensor, max_value) -> tf.Tensor:
        levels = float(activation_levels(self.bits))
        max_value = tf.cast(max_value, x.dtype)
        step = tf.maximum(max_value, 1e-12) / levels
        return tf.floor(tf.clip_by_value(x, 0.0, max_value) / step + 0.5) * step

    def get_config(self):
        config = {"bits": self.bits, "init_max": self.init_max, "ema_decay": self.ema_decay}
        return {**config, "learn_range": True} if self.learn_range else config

    def _describe(self):
        return ([str(self.bits)] + ([f"ema={self.ema_decay}"] if self.ema_decay is not None else [])
                + (["learned range"] if self.learn_range else []))



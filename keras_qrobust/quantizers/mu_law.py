"""μ-law companding (Song et al. 2020 eq. 3): ``F(x) = sign(x) ln(1 + μ|x|)/ln(1 + μ)``."""

from __future__ import annotations

import math

from .._keras import register, tf
from .base import BaseQuantizer, _round_half_away, _straight_through
from .grid import check_bits

__all__ = ["mu_law", "mu_law_inverse", "MuLawQuantizer"]


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



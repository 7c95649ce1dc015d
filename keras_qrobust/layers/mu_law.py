"""The μ-law Dense layer of Song et al. 2020 (eq. 3): companded or mapped kernels."""

from __future__ import annotations

from .. import quantizers as quantizers_mod
from .._keras import keras, register
from .quantized import QuantizedKernelsMixin

__all__ = ["MuLawDense"]


@register
class MuLawDense(QuantizedKernelsMixin, keras.layers.Dense):
    """``keras.layers.Dense`` whose kernel goes through the μ-law (Song et al. 2020, eq. 3).

    ``F(x) = sgn(x)·ln(1 + μ|x|)/ln(1 + μ)``, ``F⁻¹(y) = sgn(y)·((1 + μ)^|y| − 1)/μ`` and, per
    tensor, ``s = max|W|`` (docs/methods.md). The layer computes ``x·W' + b`` with

    * ``mode="compand"`` (needs ``bits``): ``W' = s·F⁻¹(Q_b(F(W/s)))``, a non-uniform
      ``b``-bit quantizer with levels dense near zero; ``Q_b`` is the symmetric grid
      ``round(y·(2^(b−1) − 1))/(2^(b−1) − 1)`` on ``[−1, 1]``; straight-through gradient.
    * ``mode="map"``: ``W' = s·F(W/s)``, the paper's post-training nonlinear mapping (it
      changes the function the layer computes; the gradient is the true one of ``F``). With
      ``bits`` the kernel is quantized first: ``W' = s·F(Q_b(W/s))``, the paper's quantized
      model followed by the mapping.

    The kernel variable keeps ``W``; the transform runs in ``call`` through a
    :class:`~keras_qrobust.quantizers.MuLawQuantizer`.

    Args:
        units: as in ``keras.layers.Dense``.
        **kwargs: every other argument of ``keras.layers.Dense``.
        mu: μ (255 in the paper).
        mode: ``"compand"`` or ``"map"``.
        bits: grid bits; required for ``"compand"``, optional for ``"map"``.
    """

    kernel_quantizer_args = {"kernel": "kernel_quantizer"}

    def __init__(self, units, mu: float = 255.0, mode: str = "compand", bits: int | None = None, **kwargs):
        super().__init__(units, **kwargs)
        self._set_quantizers({"kernel_quantizer": quantizers_mod.MuLawQuantizer(bits, mu=mu, mode=mode)})

    @property
    def mu_law(self) -> quantizers_mod.MuLawQuantizer:
        """The :class:`~keras_qrobust.quantizers.MuLawQuantizer` applied to the kernel."""
        return self._kernel_quantizers["kernel"]

    def get_config(self):
        config = super().get_config()
        del config["kernel_quantizer"]  # rebuilt from mu/mode/bits
        config.update(self.mu_law.get_config())
        return config

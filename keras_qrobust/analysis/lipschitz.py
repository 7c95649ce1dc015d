"""The Lipschitz constant of the weight quantization error (Song et al. 2020).

Song et al. 2020 ("Improving the robustness of weight-quantized neural networks"), eq. (2):
the quantization error of a kernel, ``ΔW = Q_b(W) − W``, is amplified by a layer at most by

    ‖ΔW‖_2 = sup_{‖z‖_2 = 1} ‖ΔW z‖_2 = σ_max(ΔW),

its largest singular value; ``σ_max > 1`` marks a layer that amplifies the error
(docs/methods.md). ``Q_b`` is the weight quantizer :class:`~keras_qrobust.RobustQuantizer`
applies: symmetric, per output channel by default (cnn2snn's ``MaxPerAxisQuantizer``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .. import quantizers as qz
from .._keras import check_model, keras, tf

__all__ = [
    "quantization_lipschitz", "quantization_error", "spectral_norm", "parseval_scale", "SUPPORTED_LAYERS",
]

#: layer kinds that have rows, in the order they are matched (subclasses first)
SUPPORTED_LAYERS = ("DepthwiseConv2D", "SeparableConv2D", "Conv2D", "Dense")


@dataclass(frozen=True)
class _Kernel:
    """One kernel of one weight layer, as seen by :func:`quantization_lipschitz`."""

    layer: str
    kind: str
    attribute: str
    value: np.ndarray
    strides: tuple

    @property
    def depthwise(self) -> bool:
        return self.attribute == "depthwise_kernel"


def _kind(layer) -> str | None:
    """The supported Keras kind of ``layer`` (its quantized twins included), or None."""
    layers = keras.layers
    if isinstance(layer, layers.Conv2DTranspose):  # a Conv2D subclass with (kh, kw, c_out, c_in) kernels
        return None
    for kind in SUPPORTED_LAYERS:
        if isinstance(layer, getattr(layers, kind)):
            return kind
    return None


_ATTRIBUTES = {
    "Dense": ("kernel",),
    "Conv2D": ("kernel",),
    "DepthwiseConv2D": ("depthwise_kernel",),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel"),
}


def _walk(layers, name: str | None = None) -> Iterator[tuple[str, object]]:
    """``(row name, layer)`` through nested models and wrappers (tfmot ``QuantizeWrapper``)."""
    for layer in layers:
        if isinstance(layer, keras.Model):
            yield from _walk(layer.layers)
        elif isinstance(layer, keras.layers.Wrapper):
            yield from _walk([layer.layer], name or layer.name)
        else:
            yield name or layer.name, layer


def _float_kernel(layer, attribute: str) -> np.ndarray:
    """The float kernel the layer computes with: ``W/σ`` for a spectral-normalized
    :class:`~keras_qrobust.layers.LipschitzDense` / ``LipschitzConv2D`` (whose variable keeps
    the raw ``W``), the kernel variable otherwise (quantized layers: before quantization)."""
    effective = getattr(layer, "lipschitz_kernel", None)
    if attribute == "kernel" and callable(effective):
        return effective(training=False).numpy()
    return getattr(layer, attribute).numpy()


def _weight_kernels(model) -> list[_Kernel]:
    """The float kernels of every Dense / Conv2D / DepthwiseConv2D / SeparableConv2D layer
    (and their quantized twins) of ``model``, in layer order."""
    kernels = []
    for name, layer in _walk(check_model(model).layers):
        kind = _kind(layer)
        if kind is None:
            continue
        if not layer.built:
            raise ValueError(f"Layer '{name}' is not built: build the model (keras.Input or model.build) first")
        strides = tuple(getattr(layer, "strides", (1, 1)))
        for attribute in _ATTRIBUTES[kind]:
            value = np.asarray(_float_kernel(layer, attribute), np.float32)
            stride = (1, 1) if attribute == "pointwise_kernel" else strides
            kernels.append(_Kernel(name, kind, attribute, value, stride))
    return kernels


def _quantizer(bits: int, per_axis: bool, depthwise: bool) -> qz.SymmetricQuantizer:
    # the weight quantizer of RobustQuantizer._weight_quantizer: a depthwise kernel
    # (kh, kw, c_in, multiplier) has one output channel per (c_in, multiplier) pair
    return qz.SymmetricQuantizer(bits, per_axis=per_axis, axis=(-2, -1) if depthwise else -1)


def quantization_error(kernel: np.ndarray, bits: int, per_axis: bool = True, depthwise: bool = False) -> np.ndarray:
    """``ΔW = Q_b(W) − W`` with RobustQuantizer's symmetric weight quantizer (float64)."""
    quantized = _quantizer(bits, per_axis, depthwise).quantize(tf.constant(kernel, tf.float32)).numpy()
    return quantized.astype(np.float64) - np.asarray(kernel, np.float64)


def _largest_singular_values(matrices: np.ndarray) -> np.ndarray:
    """``σ_max`` of each matrix of a ``(..., m, n)`` stack, as ``√λ_max`` of its Gram matrix on
    the smaller side (float64): the largest singular value only, an eigenvalue problem of size
    ``min(m, n)`` instead of a full SVD of the kernel (``layer_costs`` of cnn_small at 2/4/8
    bits: 63 s with float32 SVDs, 3.2 s so, on this project's 2-core machine)."""
    a = np.asarray(matrices, np.float64)
    gram = np.swapaxes(a, -1, -2) @ a if a.shape[-2] >= a.shape[-1] else a @ np.swapaxes(a, -1, -2)
    return np.sqrt(np.maximum(np.linalg.eigvalsh(gram)[..., -1], 0.0))


def spectral_norm(delta: np.ndarray, depthwise: bool = False) -> float:
    """``σ_max`` of a kernel seen as the matrix that maps one input patch to one output pixel.

    Dense ``(n_in, n_out)`` as is; Conv2D ``(kh, kw, c_in, c_out)`` reshaped to
    ``(kh·kw·c_in, c_out)``. A depthwise kernel ``(kh, kw, c_in, m)`` maps the patch to the
    ``c_in·m`` outputs through a block-diagonal matrix with one ``(kh·kw, m)`` block per input
    channel, whose ``σ_max`` is the largest ``σ_max`` of its blocks. Exact up to float64
    rounding (``σ_max² = λ_max(MᵀM)``).
    """
    if depthwise:
        kh, kw, channels, multiplier = delta.shape
        blocks = np.moveaxis(delta, 2, 0).reshape(channels, kh * kw, multiplier)
        return float(_largest_singular_values(blocks).max())
    matrix = delta.reshape(-1, delta.shape[-1])
    return float(_largest_singular_values(matrix))


def parseval_scale(kernel_shape: tuple, strides: tuple) -> float:
    """``√(⌈kh/sh⌉·⌈kw/sw⌉)``: how many output positions share one input pixel, so the
    convolution's operator norm is at most this times the patch matrix's ``σ_max``
    (Cisse et al. 2017, Parseval networks; 1 for Dense)."""
    if len(kernel_shape) != 4:
        return 1.0
    (kh, kw), (sh, sw) = kernel_shape[:2], strides
    return math.sqrt(math.ceil(kh / sh) * math.ceil(kw / sw))


def quantization_lipschitz(model, bits: int, per_axis: bool = True) -> list[dict]:
    """Lipschitz constant of each kernel's quantization error (Song et al. 2020, eq. 2).

    For every kernel ``W`` of a Dense, Conv2D, DepthwiseConv2D or SeparableConv2D layer (or
    their :mod:`keras_qrobust.layers` subclasses: the float kernel of a quantized layer, the
    ``W/σ`` a spectral-normalized Lipschitz layer computes with; nested models and tfmot
    wrappers are searched):

        ΔW = Q_b(W) − W,    L = σ_max(ΔW)

    with ``Q_b`` the symmetric ``bits``-bit quantizer RobustQuantizer uses (``Δ = s/(2^(b−1) − 1)``,
    ``s = max|W|`` per output channel, or per tensor with ``per_axis=False``). Convolution
    kernels ``(kh, kw, c_in, c_out)`` are reshaped to ``(kh·kw·c_in, c_out)``; depthwise
    kernels are read block-diagonally (see :func:`spectral_norm`).

    Returns one dict per kernel, in layer order:

    * ``layer`` — layer name; ``kind`` — ``Dense``, ``Conv2D``, ``DepthwiseConv2D`` or
      ``SeparableConv2D``; ``kernel`` — the kernel attribute (``kernel``,
      ``depthwise_kernel``, ``pointwise_kernel``); ``shape``; ``bits``;
    * ``sigma_max`` — ``L = σ_max(ΔW)``;
    * ``sigma_max_scaled`` — ``√(⌈kh/sh⌉·⌈kw/sw⌉)·σ_max`` for convolutions (a bound on the
      whole convolution's gain on ``ΔW``), ``σ_max`` for Dense;
    * ``amplifying`` — ``L > 1``.

    Raises ValueError when ``model`` has none of these layers.
    """
    bits = qz.check_bits(bits)
    kernels = _weight_kernels(model)
    if not kernels:
        raise ValueError(
            f"Model '{model.name}' has no Dense, Conv2D, DepthwiseConv2D or SeparableConv2D layer: "
            "there is no kernel whose quantization error could be measured"
        )
    rows = []
    for k in kernels:
        sigma = spectral_norm(quantization_error(k.value, bits, per_axis, k.depthwise), k.depthwise)
        rows.append({
            "layer": k.layer, "kind": k.kind, "kernel": k.attribute, "shape": tuple(k.value.shape),
            "bits": bits, "sigma_max": sigma,
            "sigma_max_scaled": parseval_scale(k.value.shape, k.strides) * sigma,
            "amplifying": sigma > 1.0,
        })
    return rows

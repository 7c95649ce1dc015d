"""Layer-wise mixed precision by the Lipschitz constant of the quantization error (Song 2021).

Each weight layer ``l`` with kernel ``W_l`` (``p_l`` weights) gets ``b_l`` bits and a clipping
ratio ``r_l``; the cost of a choice is the amplification of its quantization error,

    L_l(b, r) = σ_max(Q_{b,r}(W_l) − W_l)        (Song 2020 eq. 2; docs/methods.md)

minimized over the clipping ratios ``r ∈ {0.30, 0.35, ..., 1.00}`` for every ``b``. Under a
size budget (average bits per weight), the allocation starts at the highest bit width and
repeatedly lowers by one bit the layer whose ``L`` rises least per bit saved,
``(L_l(b − 1) − L_l(b))/p_l``, until the model fits. The result is a
:class:`~keras_qrobust.RobustQuantizer` with ``layer_bits`` and ``layer_clip``, which quantizes,
exports and searches like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .. import quantizers as qz
from .lipschitz import _weight_kernels, spectral_norm

__all__ = ["CLIP_RATIOS", "LayerCost", "Allocation", "layer_costs", "allocate_bits"]

CLIP_RATIOS = tuple(round(0.30 + 0.05 * i, 2) for i in range(15))  # 0.30 ... 1.00


@dataclass(frozen=True)
class LayerCost:
    """σ_max of one layer's quantization error at each bit width (best clipping ratio)."""

    layer: str
    params: int
    sigma: dict  # bits -> σ_max(Q(W) − W) at the best clipping ratio
    clip: dict  # bits -> that clipping ratio


def _sigma(kernel: np.ndarray, bits: int, clip: float, per_axis: bool, depthwise: bool) -> float:
    quantizer = qz.SymmetricQuantizer(bits, per_axis=per_axis, axis=(-2, -1) if depthwise else -1, clip_ratio=clip)
    delta = np.asarray(quantizer.quantize(kernel.astype(np.float32))) - kernel
    return spectral_norm(delta, depthwise=depthwise)


def layer_costs(model, bits_options: Sequence[int] = tuple(range(2, 9)), clip_ratios: Sequence[float] = CLIP_RATIOS,
                per_axis: bool = True) -> list[LayerCost]:
    """σ_max of the quantization error of every weight layer, per bit width (best clip)."""
    bits_options = sorted({qz.check_bits(b) for b in bits_options})
    costs: dict[str, dict] = {}
    for kernel in _weight_kernels(model):
        entry = costs.setdefault(kernel.layer, {"params": 0, "sigma": {}, "clip": {}})
        entry["params"] += int(kernel.value.size)
        for bits in bits_options:
            best = min((_sigma(kernel.value, bits, r, per_axis, kernel.depthwise), r) for r in clip_ratios)
            # a separable layer has two kernels at the same bits: the larger error bounds the layer
            if best[0] >= entry["sigma"].get(bits, -1.0):
                entry["sigma"][bits], entry["clip"][bits] = best
    return [LayerCost(name, v["params"], v["sigma"], v["clip"]) for name, v in costs.items()]


@dataclass(frozen=True)
class Allocation:
    """Per-layer bits and clipping ratios, and how they were chosen."""

    layer_bits: dict
    layer_clip: dict
    average_bits: float
    budget: float
    costs: tuple

    def quantizer(self, **kwargs):
        """A RobustQuantizer with these per-layer bits (``kwargs``: its other settings)."""
        from ..quantization.robust_quantizer import RobustQuantizer

        kwargs.setdefault("weight_bits", max(self.layer_bits.values()))
        return RobustQuantizer(layer_bits=self.layer_bits, layer_clip=self.layer_clip, **kwargs)

    def to_markdown(self) -> str:
        lines = [f"Layer-wise bits (Song 2021): average {self.average_bits:.2f} bits per weight "
                 f"(budget {self.budget:g})", "", "| layer | weights | bits | clip ratio | σ_max(Q(W) − W) |",
                 "|---|---|---|---|---|"]
        for cost in self.costs:
            bits = self.layer_bits[cost.layer]
            lines.append(f"| {cost.layer} | {cost.params} | {bits} | {self.layer_clip[cost.layer]:.2f} | "
                         f"{cost.sigma[bits]:.4f} |")
        return "\n".join(lines) + "\n"


def allocate_bits(model, budget: float, bits_options: Sequence[int] = tuple(range(2, 9)),
                  clip_ratios: Sequence[float] = CLIP_RATIOS, per_axis: bool = True,
                  costs: Optional[Sequence[LayerCost]] = None) -> Allocation:
    """Per-layer bits with at most ``budget`` bits per weight on average (Song 2021).

    Args:
        budget: average weight bits, e.g. 4.0 for the size of a uniform 4-bit model.
        bits_options: the allowed bit widths.
        costs: precomputed :func:`layer_costs` (computed here otherwise).
    """
    bits_options = sorted({qz.check_bits(b) for b in bits_options})
    if not bits_options[0] <= budget:
        raise ValueError(f"budget {budget} is below the smallest bit width {bits_options[0]}")
    costs = list(costs) if costs is not None else layer_costs(model, bits_options, clip_ratios, per_axis)
    if not costs:
        raise ValueError("the model has no Dense/Conv2D/DepthwiseConv2D/SeparableConv2D layer to allocate bits to")
    total = sum(c.params for c in costs)
    bits = {c.layer: bits_options[-1] for c in costs}

    def average() -> float:
        return sum(bits[c.layer] * c.params for c in costs) / total

    while average() > budget + 1e-9:
        candidates = []
        for c in costs:
            index = bits_options.index(bits[c.layer])
            if index == 0:
                continue
            lower = bits_options[index - 1]
            saved = (bits[c.layer] - lower) * c.params
            candidates.append(((c.sigma[lower] - c.sigma[bits[c.layer]]) / saved, c.layer, lower))
        if not candidates:
            break
        _, layer, lower = min(candidates)
        bits[layer] = lower
    clip = {c.layer: float(c.clip[bits[c.layer]]) for c in costs}
    return Allocation(bits, clip, average(), float(budget), tuple(costs))

"""Analyses of quantized models: how much quantization costs in robustness, and which precision to ship.

* :mod:`.lipschitz` — the Lipschitz constant ``σ_max(Q_b(W) − W)`` of each layer's weight
  quantization error (Song et al. 2020, eq. 2);
* :mod:`.geometric` — Gorsline et al. 2021: the geometric lower bound on robustness and the
  critical attack strength;
* :mod:`.layerwise` — per-layer bit allocation from those Lipschitz costs (mixed precision);
* :mod:`.bit_width_search` — Zhou et al. 2022 Algorithm 1, the robustness-driven bit-width
  search over ``wXaY`` candidates.
"""

from .bit_width_search import SearchResult, SettingResult, choose, evaluate_setting, search, wxay_grid
from .geometric import (
    CriticalStrength,
    GeometricFit,
    boundary_distance_cdf,
    critical_attack_strength,
    fit_geometric_bound,
    geometric_lower_bound,
    mean_boundary_distance,
    mean_boundary_distance_approx,
    simplex_edge,
    simplex_height,
)
from .layerwise import CLIP_RATIOS, Allocation, LayerCost, allocate_bits, layer_costs
from .lipschitz import SUPPORTED_LAYERS, parseval_scale, quantization_error, quantization_lipschitz, spectral_norm

__all__ = [
    "quantization_lipschitz", "quantization_error", "spectral_norm", "parseval_scale", "SUPPORTED_LAYERS",
    "critical_attack_strength", "CriticalStrength", "geometric_lower_bound", "boundary_distance_cdf",
    "fit_geometric_bound", "GeometricFit", "mean_boundary_distance", "mean_boundary_distance_approx", "simplex_height",
    "simplex_edge", "CLIP_RATIOS", "LayerCost", "Allocation", "layer_costs", "allocate_bits",
    "wxay_grid", "SettingResult", "SearchResult", "evaluate_setting", "choose", "search",
]

"""Gorsline et al. 2021: the geometric model of quantized decision regions, and the
critical attack strength.

Decision regions are taken as regular ``n``-simplices of edge ``s = √n·2^(−q)`` (``q`` weight
bits, input dimension ``n``; eq. 5-8). A simplex splits into ``n + 1`` simplices of height

    h = n·V/S = s/√(2n(n + 1))                                   (eq. 3, 5, 6)

and for points spread uniformly inside, the distance ``ε`` to the nearest face has density
``f(ε) = n(h − ε)^(n−1)/h^n`` (eq. 12) and distribution ``F(ε) = 1 − (h − ε)^n/h^n`` (eq. 13),
so an ℓ2 attack of strength ``ε`` leaves a relative accuracy ``A_r ≥ 1 − F(ε) = (1 − ε/h)^n``
(eq. 14). The mean distance is ``ε̄ = h/(n + 1) ≈ 1/(2^(q+1/2)·n^(3/2))`` (eq. 4, 8).

The critical attack strength ``ε*`` is the strength at which accuracy no longer depends on
the weight precision: the ``ε`` whose accuracy-vs-bits curve has the smallest variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["simplex_edge", "simplex_height", "mean_boundary_distance", "mean_boundary_distance_approx",
           "boundary_distance_cdf", "geometric_lower_bound", "fit_geometric_bound", "GeometricFit",
           "critical_attack_strength", "CriticalStrength"]


def _check_n_q(n: float, q: float) -> None:
    if not n > 0:
        raise ValueError(f"n (the input dimension) must be > 0, got {n}")
    if not q > 0:
        raise ValueError(f"q (the weight bits) must be > 0, got {q}")


def simplex_edge(n: float, q: float) -> float:
    """``s = √n·2^(−q)`` — Draghici's bound on the longest simplex edge for ``q``-bit weights."""
    _check_n_q(n, q)
    return math.sqrt(n) * 2.0 ** (-q)


def simplex_height(n: float, q: float) -> float:
    """``h = n·V/S = s/√(2n(n + 1))`` of a regular ``n``-simplex of edge ``s`` (eq. 3, 5, 6)."""
    return simplex_edge(n, q) / math.sqrt(2.0 * n * (n + 1.0))


def mean_boundary_distance(n: float, q: float) -> float:
    """``ε̄ = h/(n + 1)`` (eq. 4): mean ℓ2 distance of a uniform point to the nearest face."""
    return simplex_height(n, q) / (n + 1.0)


def mean_boundary_distance_approx(n: float, q: float) -> float:
    """``ε̄ ≈ 1/(2^(q+1/2)·n^(3/2))`` (eq. 8, the large-``n`` form)."""
    _check_n_q(n, q)
    return 1.0 / (2.0 ** (q + 0.5) * n**1.5)


def boundary_distance_cdf(eps, n: float, q: float) -> np.ndarray:
    """``F(ε) = 1 − (1 − ε/h)^n`` for ``0 ≤ ε ≤ h`` (eq. 13); 1 beyond ``h``."""
    return 1.0 - geometric_lower_bound(eps, n, q)


def geometric_lower_bound(eps, n: float, q: float) -> np.ndarray:
    """Lower bound on the relative accuracy ``A_r ≥ (1 − ε/h)^n`` under an ℓ2 attack (eq. 14).

    ``eps``: a strength or an array of them (≥ 0). Computed as ``exp(n·log1p(−ε/h))`` so it
    stays accurate for image-sized ``n``.
    """
    eps = np.asarray(eps, dtype=np.float64)
    if np.any(eps < 0) or not np.all(np.isfinite(eps)):
        raise ValueError("eps must be finite and >= 0")
    h = simplex_height(n, q)
    ratio = np.minimum(eps / h, 1.0)
    with np.errstate(divide="ignore"):
        bound = np.where(ratio < 1.0, np.exp(n * np.log1p(-ratio)), 0.0)
    return bound


@dataclass(frozen=True)
class GeometricFit:
    """The effective dimension ``n`` whose bound (at the given ``q``) best fits a curve."""

    n: float
    q: float
    rmse: float
    below_measured: float  # fraction of points where the bound is ≤ the measured value

    def bound(self, eps) -> np.ndarray:
        return geometric_lower_bound(eps, self.n, self.q)


def fit_geometric_bound(eps: Sequence[float], relative_accuracy: Sequence[float], q: float,
                        n_grid: Sequence[float] | None = None) -> GeometricFit:
    """Fit the effective dimension ``n`` of eq. 14 to a measured relative-accuracy curve.

    Least squares over a log-spaced grid of ``n`` (1 to 10^5 by default). The paper's ``n`` is
    the input dimension; measured curves lie above that worst case, and the fitted ``n`` says
    how much (a smaller ``n`` means a gentler decline).
    """
    eps = np.asarray(eps, np.float64)
    measured = np.asarray(relative_accuracy, np.float64)
    if eps.shape != measured.shape or eps.ndim != 1 or len(eps) < 2:
        raise ValueError("eps and relative_accuracy must be 1-D arrays of the same length (≥ 2)")
    grid = np.logspace(0, 5, 801) if n_grid is None else np.asarray(n_grid, np.float64)
    errors = [float(np.sqrt(np.mean((geometric_lower_bound(eps, n, q) - measured) ** 2))) for n in grid]
    best = int(np.argmin(errors))
    n = float(grid[best])
    below = float(np.mean(geometric_lower_bound(eps, n, q) <= measured + 1e-9))
    return GeometricFit(n=n, q=float(q), rmse=errors[best], below_measured=below)


@dataclass(frozen=True)
class CriticalStrength:
    """``eps``: the critical attack strength; ``variance``: accuracy variance across bits per ε."""

    eps: float
    index: int
    variance: np.ndarray
    eps_grid: np.ndarray


def critical_attack_strength(table: Mapping[int, Sequence[float]] | np.ndarray, eps: Sequence[float],
                             min_mean_accuracy: float = 0.0) -> CriticalStrength:
    """``ε*``: the attack strength whose accuracy-vs-weight-bits curve has the smallest variance.

    Args:
        table: accuracies, ``{bits: [acc at each ε]}`` or an array ``(len(bits), len(eps))``.
        eps: the attack strengths of the columns.
        min_mean_accuracy: only strengths whose mean accuracy over the bit widths is above
            this count — once every model is at 0 the variance is trivially 0 too.
    """
    accuracies = np.asarray(list(table.values()) if isinstance(table, Mapping) else table, np.float64)
    eps = np.asarray(eps, np.float64)
    if accuracies.ndim != 2 or accuracies.shape[1] != len(eps) or accuracies.shape[0] < 2:
        raise ValueError(f"table must hold ≥ 2 bit widths × {len(eps)} strengths, got shape {accuracies.shape}")
    variance = accuracies.var(axis=0)
    allowed = accuracies.mean(axis=0) > min_mean_accuracy
    if not np.any(allowed):
        raise ValueError(f"no strength has a mean accuracy above min_mean_accuracy={min_mean_accuracy}")
    index = int(np.argmin(np.where(allowed, variance, np.inf)))
    return CriticalStrength(eps=float(eps[index]), index=index, variance=variance, eps_grid=eps)

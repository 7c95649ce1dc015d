"""Two models scored on the same inputs: the difference of their accuracies, paired.

When two models (two recipes, two bit widths, a model and its exported file) are scored on
the same inputs, their outcomes are correlated, and two separate 95 % intervals that overlap
say little: the question is whether the inputs only one of them gets right lean to one side.
:func:`paired_difference` answers it with the paired difference of proportions, its 95 %
interval (Newcombe 1998, method 10) and McNemar's exact test (McNemar 1947).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .metrics import wilson_interval

__all__ = ["PairedDifference", "mcnemar_exact_p", "paired_difference"]


@dataclass(frozen=True)
class PairedDifference:
    """Accuracy of A minus accuracy of B on the same ``n`` inputs."""

    n: int
    accuracy_a: float
    accuracy_b: float
    only_a: int  # inputs A gets right and B does not
    only_b: int  # inputs B gets right and A does not
    difference: float  # accuracy_a − accuracy_b = (only_a − only_b) / n
    interval95: tuple[float, float]
    p_value: float  # McNemar's exact two-sided test of "A and B are equally accurate"

    def significant(self, alpha: float = 0.05) -> bool:
        """Whether McNemar's test rejects equal accuracy at level ``alpha``."""
        return self.p_value < alpha

    def to_dict(self) -> dict:
        return {"n": self.n, "accuracy_a": self.accuracy_a, "accuracy_b": self.accuracy_b, "only_a": self.only_a,
                "only_b": self.only_b, "difference": self.difference, "interval95": list(self.interval95),
                "p_value": self.p_value}

    def __str__(self) -> str:
        low, high = self.interval95
        verdict = "a difference" if self.significant() else "inside the noise"
        return (f"{100 * self.difference:+.2f} points (95% CI {100 * low:+.2f} to {100 * high:+.2f}; "
                f"{self.only_a} vs {self.only_b} inputs only one gets right, McNemar p = {self.p_value:.3g}: "
                f"{verdict}), n = {self.n}")


def _outcomes(values, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of per-input outcomes, got shape {array.shape}")
    if array.dtype != bool and not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must hold booleans (or 0/1): True where the model is right on that input")
    return array.astype(bool)


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: ``min(1, 2·P(X ≤ min(only_a, only_b)))``,
    ``X ~ Binomial(only_a + only_b, 1/2)`` — under equal accuracy each discordant input is
    equally likely to favour either model."""
    m = only_a + only_b
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2 ** m)


def paired_difference(a, b) -> PairedDifference:
    """Compare per-input outcomes ``a`` and ``b`` (True where each model is right) of two
    models on the same inputs.

    The interval is Newcombe's (1998) method 10: with Wilson intervals ``[l₁, u₁]`` of
    ``p₁ = acc(A)`` and ``[l₂, u₂]`` of ``p₂ = acc(B)``, ``d = p₁ − p₂`` and ``φ`` the phi
    correlation of the 2×2 table of outcomes,

        L = d − √((p₁ − l₁)² − 2φ(p₁ − l₁)(u₂ − p₂) + (u₂ − p₂)²),
        U = d + √((u₁ − p₁)² − 2φ(u₁ − p₁)(p₂ − l₂) + (p₂ − l₂)²),

    which, unlike the Wald interval, behaves when few inputs are discordant.
    """
    a, b = _outcomes(a, "a"), _outcomes(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must score the same inputs: {a.size} and {b.size} outcomes")
    n = int(a.size)
    both, only_a, only_b = int(np.sum(a & b)), int(np.sum(a & ~b)), int(np.sum(~a & b))
    neither = n - both - only_a - only_b
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    (l1, u1), (l2, u2) = wilson_interval(both + only_a, n), wilson_interval(both + only_b, n)
    denominator = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(denominator) if denominator else 0.0
    d = p1 - p2
    low = d - math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    high = d + math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return PairedDifference(n=n, accuracy_a=p1, accuracy_b=p2, only_a=only_a, only_b=only_b, difference=d,
                            interval95=(max(-1.0, low), min(1.0, high)), p_value=mcnemar_exact_p(only_a, only_b))

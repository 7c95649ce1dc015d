"""Checks that a robustness number is about the model and not about a broken attack.

Two kinds: per input, whether the model gives a usable gradient (:func:`gradient_status`, in
:mod:`.gradient_check`, re-exported here); per model, whether its gradients are masked
(:func:`masking_checks`): the white-box attacks compared with gradient-free, transfer and
BPDA attacks looked up in the registry, so this module sits above :mod:`.registry`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import numpy as np

from ._common import as_attack_model
from .bpda import bpda
from .gradient_check import GRADIENT_NONE, GRADIENT_NONFINITE, GRADIENT_OK, GRADIENT_ZERO, gradient_status
from .registry import check_budget, get_attack

__all__ = ["gradient_status", "GRADIENT_OK", "GRADIENT_ZERO", "GRADIENT_NONFINITE", "GRADIENT_NONE",
           "masking_checks", "MaskingReport", "MaskingCheck", "binomial_margin"]


# ------------------------------------------------------------------------ gradient masking
#: an ε-ball this large holds a constant image around every input, so a working attack leaves
#: (nearly) nothing robust; more than this share left robust is flagged
SANITY_EPS, SANITY_MAX_ACCURACY = 0.5, 0.05


@dataclass(frozen=True)
class MaskingCheck:
    """One comparison of the masking checks."""

    name: str  # e.g. "square vs white-box"
    reference: float  # the white-box worst-case accuracy on the same inputs (or the bound)
    value: float  # the accuracy this check measured
    n: int
    margin: float  # how far below the reference the value must be to be flagged
    flagged: bool
    rule: str


@dataclass(frozen=True)
class MaskingReport:
    """Gradient-masking checks of one model (Athalye et al. 2018; Carlini et al. 2019 §5)."""

    checks: tuple
    white_box: dict  # attack -> accuracy
    eps: float

    @property
    def suspect(self) -> bool:
        return any(check.flagged for check in self.checks)

    @property
    def flagged(self) -> list:
        return [check.name for check in self.checks if check.flagged]

    def to_dict(self) -> dict:
        return {"eps": self.eps, "suspect": self.suspect, "flagged": self.flagged, "white_box": dict(self.white_box),
                "checks": [dataclasses.asdict(check) for check in self.checks]}

    def __str__(self) -> str:
        lines = [f"Gradient-masking checks at ε = {self.eps:g}: " + (
            f"SUSPECT ({', '.join(self.flagged)})" if self.suspect else "none flagged")]
        lines += [f"  {'!' if c.flagged else ' '} {c.name}: {c.value:.2%} vs {c.reference:.2%} (n = {c.n}; {c.rule})"
                  for c in self.checks]
        return "\n".join(lines)


def binomial_margin(p: float, n: int, z: float = 2.0) -> float:
    """``z`` binomial standard errors of an accuracy ``p`` on ``n`` inputs, ``z·√(p(1 − p)/n)``,
    with ``p`` kept at least ``1/n`` away from 0 and 1 (so a 100 % or 0 % reference still
    needs more than one input of difference)."""
    p = min(max(p, 1.0 / n), 1.0 - 1.0 / n)
    return z * float(np.sqrt(p * (1.0 - p) / n))


def masking_checks(model, x, y, *, eps: float, white_box: Sequence[str] = ("pgd", "apgd-ce"),
                   gradient_free: Sequence[str] = ("square",), surrogate=None, original=None,
                   sanity_eps: float = SANITY_EPS, seed: int = 0,
                   options: Optional[Mapping[str, dict]] = None) -> MaskingReport:
    """Is the white-box robustness of ``model`` real, or are its gradients masked?

    Computed, never assumed: the per-input worst case of the ``white_box`` attacks is compared
    with each ``gradient_free`` attack (queries only), with PGD-20 transferred from
    ``surrogate`` (an independently trained model) and with BPDA PGD-20 through ``original``
    (the model without its non-differentiable defense); a comparison is flagged when the other
    attack leaves an accuracy more than 2 binomial standard errors below the white-box one
    (:func:`binomial_margin`, on the same ``n`` inputs). A sanity check also runs PGD-50 at
    ``sanity_eps``: an L∞ ball of 0.5 holds a constant image around every input, so an
    accuracy above 5 % there means the attack, not the model, failed. Inputs in [0, 1], L∞.
    """
    eps = check_budget(eps, allow_zero=False)
    options = dict(options or {})
    x = np.asarray(x, np.float32)
    y = np.asarray(y).reshape(-1)
    n = len(y)

    def correct(found) -> np.ndarray:
        return as_attack_model(model).predict_labels(np.asarray(found, np.float32)) == y

    robust = correct(x)
    white = {}
    for name in white_box:
        survived = correct(get_attack(name, "white-box")(model, x, y, eps=eps, seed=seed, **options.get(name, {})))
        white[name] = float(survived.mean())
        robust &= survived
    reference = float(robust.mean())
    margin = binomial_margin(reference, n)
    rule = f"flagged below the white-box worst case by more than 2 binomial SE ({margin:.2%})"
    others = {}
    for name in gradient_free:
        found = get_attack(name, "gradient-free")(model, x, y, eps=eps, seed=seed, **options.get(name, {}))
        others[f"{name} vs white-box"] = float(correct(found).mean())
    if surrogate is not None:
        found = get_attack("pgd")(surrogate, x, y, eps=eps, seed=seed)
        others["transfer PGD-20 vs white-box"] = float(correct(found).mean())
    if original is not None:
        found = get_attack("pgd")(bpda(model, original), x, y, eps=eps, seed=seed)
        others["BPDA PGD-20 vs white-box"] = float(correct(found).mean())
    checks = [MaskingCheck(name, reference, value, n, margin, value < reference - margin, rule)
              for name, value in others.items()]
    sanity = float(correct(get_attack("pgd")(model, x, y, eps=sanity_eps, seed=seed, steps=50)).mean())
    checks.append(MaskingCheck(f"PGD-50 at ε = {sanity_eps:g}", SANITY_MAX_ACCURACY, sanity, n, 0.0,
                               sanity > SANITY_MAX_ACCURACY,
                               f"flagged above {SANITY_MAX_ACCURACY:.0%}: at ε = {sanity_eps:g} every input can "
                               "reach a constant image, so accuracy must fall to about 0"))
    return MaskingReport(tuple(checks), white, eps)

"""The robustness grid: accuracy of each model under each attack at each ε.

``kq.evaluate(models, (x, y), attacks=["fgsm", "pgd", "uap"], eps=[0, 0.05, 0.1])`` returns a
:class:`~keras_qrobust.report.RobustnessReport` that records how every number was obtained
(attack, steps, ε, samples, seed) and carries the DESIGN.md §4 warnings: accuracy must fall
as ε grows, otherwise the curve is flagged as suspect.
"""

from __future__ import annotations

import time
from typing import Mapping, Optional, Sequence

import numpy as np

from . import attacks as attacks_mod
from . import metrics
from .quantize import parse_setting
from .report import RobustnessReport

__all__ = ["evaluate", "EVALUATE_ATTACKS"]

EVALUATE_ATTACKS = ("fgsm", "pgd", "bim", "mim", "uap", "gaussian", "uniform")


def _attack_description(attack: str, pgd_steps: int) -> str:
    return {"fgsm": "FGSM (one step)", "pgd": f"PGD-{pgd_steps}, L∞, random start, CE loss",
            "bim": "BIM-10", "mim": "MIM-10 (decay 1.0)",
            "uap": "UAP (FGSM inner step) crafted on the evaluation inputs (direct), L∞",
            "gaussian": "Gaussian noise N(0, ε²)", "uniform": "uniform noise U(−ε, ε)"}[attack]


def _attacked(model, x, y, attack: str, eps: float, pgd_steps: int, seed: int) -> np.ndarray:
    a = attacks_mod
    if attack == "fgsm":
        return a.fgsm(model, x, y, eps=eps)
    if attack == "pgd":
        return a.pgd(model, x, y, eps=eps, steps=pgd_steps, seed=seed, verbose=0)
    if attack == "bim":
        return a.bim(model, x, y, eps=eps, verbose=0)
    if attack == "mim":
        return a.mim(model, x, y, eps=eps, verbose=0)
    if attack == "uap":
        return np.clip(x + a.uap(model, x, eps=eps, seed=seed, verbose=0).perturbation, 0.0, 1.0)
    return a.noise(x, eps=eps, kind=attack, seed=seed)


def _weight_bits(name: str, model) -> Optional[int]:
    try:
        bits, _ = parse_setting(name.split()[-1])
        return bits
    except ValueError:
        return None


def evaluate(models, data, attacks: Sequence[str] = ("fgsm", "pgd"), eps: Sequence[float] = (0.0, 0.05, 0.1), *,
             pgd_steps: int = 20, seed: int = 0, bits: Optional[Mapping[str, int]] = None,
             lipschitz_bits: Optional[int] = None, transfer_matrix=None, verbose: int = 1) -> RobustnessReport:
    """Accuracy of every model under every attack at every ε (ε = 0: clean accuracy).

    Args:
        models: a model or ``{name: model}`` (tf_keras models or exported artifacts).
        data: ``(x, y)``, inputs in [0, 1].
        attacks: names from :data:`EVALUATE_ATTACKS`.
        eps: L∞ budgets (noise: its scale), ascending, each in [0, 1].
        bits: weight bits per model name, for the accuracy-vs-bits plot (default: parsed from
            names ending in a wXaY setting, e.g. ``"cnn w4a4"``).
        lipschitz_bits: also record σ_max(Q_b(W) − W) per layer of each tf_keras model.
        transfer_matrix: a :class:`~keras_qrobust.attacks.TransferMatrix` to include.
    """
    models = dict(models) if isinstance(models, Mapping) else {getattr(models, "name", "model"): models}
    if not models:
        raise ValueError("models is empty: pass a model or {name: model}")
    x, y = data
    x, y = np.asarray(x, np.float32), np.asarray(y).reshape(-1)
    if len(x) != len(y) or not len(x):
        raise ValueError(f"data must be (x, y) with as many labels as inputs, got {len(x)} and {len(y)}")
    unknown = [a for a in attacks if a not in EVALUATE_ATTACKS]
    if unknown or not attacks:
        raise ValueError(f"attacks must be names from {EVALUATE_ATTACKS}, got {list(attacks)}")
    eps = [float(e) for e in eps]
    if not eps or any(not 0.0 <= e <= 1.0 for e in eps) or eps != sorted(eps):
        raise ValueError(f"eps must be ascending values in [0, 1], got {eps}")
    start = time.perf_counter()
    accuracy: dict = {}
    total = len(models) * len(attacks) * len(eps)
    progress = None
    if verbose:
        from tqdm.auto import tqdm

        progress = tqdm(total=total, desc="evaluate", unit="cell")
    for name, model in models.items():
        clean = metrics.accuracy(model, x, y)
        accuracy[name] = {}
        for attack in attacks:
            row = []
            for e in eps:
                row.append(clean if e == 0.0 else metrics.accuracy(model, _attacked(model, x, y, attack, e, pgd_steps,
                                                                                        seed), y))
                if progress is not None:
                    progress.update(1)
            accuracy[name][attack] = row
    if progress is not None:
        progress.close()
    bits = dict(bits) if bits is not None else {n: b for n, m in models.items() if (b := _weight_bits(n, m))}
    lipschitz = {}
    if lipschitz_bits is not None:
        from .analysis import quantization_lipschitz

        for name, model in models.items():
            if hasattr(model, "layers"):
                lipschitz[name] = [{k: row[k] for k in ("layer", "kernel", "sigma_max", "sigma_max_scaled")}
                                   for row in quantization_lipschitz(model, lipschitz_bits)]
    provenance = {"attacks": {a: _attack_description(a, pgd_steps) for a in attacks}, "eps": eps,
                  "norm": "inf", "samples": int(len(x)), "seed": seed, "pgd_steps": pgd_steps,
                  "seconds": round(time.perf_counter() - start, 2)}
    transfer = None
    if transfer_matrix is not None:
        transfer = {"labels": list(transfer_matrix.names), "accuracy": np.asarray(transfer_matrix.accuracy).tolist()}
    return RobustnessReport.build(accuracy=accuracy, eps=eps, attacks=list(attacks), provenance=provenance,
                                  bits=bits, lipschitz=lipschitz, lipschitz_bits=lipschitz_bits, transfer=transfer)

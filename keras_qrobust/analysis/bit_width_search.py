"""Robustness-driven bit-width search (Zhou et al. 2022, Algorithm 1).

For every candidate ``(Wb, Ab)``: quantize the model, measure the natural accuracy on
``data`` and the adversarial accuracy under ``attack``; among the settings whose natural
accuracy is above ``natural_floor``, choose the one with the best adversarial accuracy
(ties: fewer bits, then higher natural accuracy). Each setting is evaluated on its own
(:func:`evaluate_setting`) as one task of :func:`keras_qrobust.executor.run_tasks`, in this
process or on Ray (``executor="ray"``), with the same numbers either way.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np

from .. import metrics
from ..attacks.registry import PER_MODEL_KINDS, get_attack
from ..executor import check_executor, fingerprint, function_reference, imported, run_tasks, ship_models, unship
from ..quantizers.grid import parse_setting, setting_name

__all__ = ["wxay_grid", "SettingResult", "SearchResult", "evaluate_setting", "choose", "search"]

Attack = Union[str, Callable]


def wxay_grid(low: int = 2, high: int = 8, *, equal: bool = True) -> list[str]:
    """Candidate settings ``"wXaY"`` for bits in ``[low, high]``, highest first.

    ``equal=True`` (default, as Zhou et al.): ``w8a8, w7a7, ..., w2a2``; ``equal=False``:
    every pair ``(X, Y)``.
    """
    if not (isinstance(low, int) and isinstance(high, int) and 1 <= low <= high <= 16):
        raise ValueError(f"need integers 1 <= low <= high <= 16, got low={low!r}, high={high!r}")
    bits = range(high, low - 1, -1)
    if equal:
        return [setting_name(b, b) for b in bits]
    return [setting_name(w, a) for w in bits for a in bits]


@dataclass(frozen=True)
class SettingResult:
    """One row of the search table."""

    setting: str
    natural: float
    adversarial: float
    seconds: float
    above_floor: bool


@dataclass(frozen=True)
class SearchResult:
    """The chosen setting (None when no candidate is above the floor) and every row."""

    best: Optional[str]
    rows: tuple[SettingResult, ...]
    attack: str
    eps: float
    natural_floor: float

    @property
    def best_bits(self) -> tuple[Optional[int], Optional[int]]:
        return parse_setting(self.best) if self.best else (None, None)

    def to_dict(self) -> dict:
        return {"best": self.best, "attack": self.attack, "eps": self.eps, "natural_floor": self.natural_floor,
                "rows": [dataclasses.asdict(row) for row in self.rows]}

    def to_markdown(self) -> str:
        lines = [f"Algorithm 1 (Zhou 2022): attack {self.attack}, ε = {self.eps}, natural floor "
                 f"{100 * self.natural_floor:.1f}%; chosen: {self.best or 'none above the floor'}", "",
                 "| setting | natural % | adversarial % | above floor | s |", "|---|---|---|---|---|"]
        for row in self.rows:
            mark = " **(chosen)**" if row.setting == self.best else ""
            lines.append(f"| {row.setting}{mark} | {100 * row.natural:.2f} | {100 * row.adversarial:.2f} | "
                         f"{'yes' if row.above_floor else 'no'} | {row.seconds:.1f} |")
        return "\n".join(lines) + "\n"


def _adversarial_accuracy(model, x, y, attack: Attack, eps: float, seed: Optional[int]) -> float:
    if callable(attack):
        return metrics.accuracy(model, attack(model, x, y, eps=eps), y)
    found = get_attack(attack)(model, x, y, eps=eps, seed=seed)
    if hasattr(found, "robust_accuracy"):  # AutoAttack scores itself (unverified inputs are not robust)
        return float(found.robust_accuracy)
    return metrics.accuracy(model, found, y)


def evaluate_setting(quantizer, model, data, samples, attack: Attack, eps: float, natural_floor: float,
                     seed: Optional[int] = 0) -> SettingResult:
    """Quantize ``model`` with ``quantizer`` and score it (one row of Algorithm 1)."""
    x, y = data
    start = time.perf_counter()
    qmodel = quantizer.quantize(model, samples if quantizer.activation_bits is not None else None)
    natural = metrics.accuracy(qmodel, x, y)
    adversarial = _adversarial_accuracy(qmodel, x, y, attack, eps, seed)
    return SettingResult(quantizer.setting, natural, adversarial, time.perf_counter() - start, natural > natural_floor)


def _setting_task(shared: dict, quantizer, attack, eps: float, seed: Optional[int]) -> dict:
    """One candidate of the search (a task of :func:`keras_qrobust.executor.run_tasks`): its row
    as JSON data; ``attack`` is a registry name, a ``(module, qualname)`` reference or (in this
    process) a callable. Whether the row is above the floor is decided by :func:`search`."""
    model = unship(shared["model"])
    if isinstance(attack, tuple):
        attack = imported(attack)
    row = evaluate_setting(quantizer, model, (shared["x"], shared["y"]), shared["samples"], attack, eps, 0.0, seed)
    return {"setting": row.setting, "natural": row.natural, "adversarial": row.adversarial, "seconds": row.seconds}


def _bits_sum(setting: str) -> int:
    return sum(b or 32 for b in parse_setting(setting))


def choose(rows: Sequence[SettingResult]) -> Optional[SettingResult]:
    """Algorithm 1's choice: the best adversarial accuracy among the rows above the floor
    (ties: fewer bits, then higher natural accuracy); None when no row is above the floor."""
    eligible = [row for row in rows if row.above_floor]
    return max(eligible, key=lambda r: (round(r.adversarial, 6), -_bits_sum(r.setting), r.natural), default=None)


def search(quantizer, model, data, candidates: Sequence[str] = None, attack: Attack = "pgd", eps: float = 0.1,
           natural_floor: float = 0.0, samples=None, seed: Optional[int] = 0, verbose: int = 1, *,
           executor: str = "local", address: Optional[str] = None, folder=None) -> SearchResult:
    """Zhou 2022 Algorithm 1 with ``quantizer``'s other settings (calibration, input bits, ...).

    Args:
        data: ``(x, y)`` the settings are scored on (a validation split).
        candidates: ``"wXaY"`` settings (default ``wxay_grid(2, 8)``).
        attack: a per-model attack of the registry (``"pgd"``: 20 steps; ``"autoattack"``:
            the standard version; ``"uap"``: crafted on ``x``, the direct UAP; ...; see
            :func:`keras_qrobust.attacks.attack_names`) or ``attack(model, x, y, eps=...) -> x_adv``.
        natural_floor: minimum natural accuracy (fraction) a chosen setting must exceed.
        samples: calibration inputs (default: the first 1,024 of ``x``).
        executor: ``"local"`` (this process) or ``"ray"``: every candidate is one task of
            :func:`keras_qrobust.executor.run_tasks` (the float model shipped as its saved
            bytes, the quantizer pickled, the same seed), with the same rows either way
            (except ``seconds``); ``address``: the Ray cluster (``None`` starts one on this
            machine, ``"auto"`` joins a running one).
        folder: keep each finished candidate's row there (JSON) so a rerun skips it; a row is
            reused only for the same model weights, data, calibration inputs, quantizer
            settings, attack, ε and seed.

    A callable ``attack`` on Ray, or with ``folder``, must be a function defined at module level
    of a module the workers can import (it is sent by reference, as ``module.qualname``, and
    names the attack in the kept rows' keys); a lambda, a closure or a function of ``__main__``
    raises a ValueError before anything runs. In this process any callable works.
    """
    x, y = data
    x = np.asarray(x, np.float32)
    y = np.asarray(y).reshape(-1)
    if len(x) != len(y) or not len(x):
        raise ValueError(f"data must be (x, y) with as many labels as inputs, got {len(x)} and {len(y)}")
    if not callable(attack):
        try:
            attack = get_attack(attack, *PER_MODEL_KINDS).name
        except ValueError as error:
            raise ValueError(f"{error}, or pass a callable attack(model, x, y, eps=...) -> x_adv") from None
    if not 0.0 <= natural_floor < 1.0:
        raise ValueError(f"natural_floor is a fraction in [0, 1), got {natural_floor}")
    candidates = list(wxay_grid(2, 8) if candidates is None else candidates)
    if not candidates:
        raise ValueError("candidates is empty: pass settings such as kq.wxay_grid(2, 8)")
    for setting in candidates:
        parse_setting(setting)  # fails early with a clear message
    check_executor(executor)
    by_name = callable(attack) and (executor != "local" or folder is not None)  # what a worker or a key needs
    reference = function_reference(attack, "attack") if by_name else None
    sent = reference if executor != "local" and reference else attack
    samples = x[:1024] if samples is None else np.asarray(samples, np.float32)
    quantizers = {}
    for setting in candidates:
        weight_bits, activation_bits = parse_setting(setting)
        quantizers[setting] = dataclasses.replace(quantizer, weight_bits=weight_bits, activation_bits=activation_bits)
    # a kept row is reused only for the same model, data, quantizer settings, attack, ε and seed
    same = fingerprint(model, x, y, samples) if folder is not None else ""
    named = attack if isinstance(attack, str) else ":".join(reference or ("", ""))
    key = {s: f"{s}|{named}|{eps!r}|{seed}|{same}|{fingerprint(type(q).__qualname__, dataclasses.asdict(q))}"
           for s, q in quantizers.items()}
    tasks = {key[setting]: (q, sent, eps, seed) for setting, q in quantizers.items()}
    shared = {"model": ship_models({"model": model}, executor)["model"], "x": x, "y": y, "samples": samples}
    progress = None
    if verbose:
        from tqdm.auto import tqdm

        progress = tqdm(total=len(tasks), desc="bit-width search", unit="setting")
    found = run_tasks(_setting_task, tasks, shared=shared, executor=executor, address=address, folder=folder,
                      on_result=None if progress is None else (lambda _, row: progress.update(1)))
    if progress is not None:
        progress.close()
    rows = [SettingResult(**found[key[setting]], above_floor=found[key[setting]]["natural"] > natural_floor)
            for setting in candidates]
    best = choose(rows)
    name = attack if isinstance(attack, str) else getattr(attack, "__name__", "custom")
    return SearchResult(best.setting if best else None, tuple(rows), name, float(eps), float(natural_floor))

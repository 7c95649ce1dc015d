"""The robustness grid: accuracy of each model under each attack at each ε.

``kq.evaluate(models, (x, y), attacks=["fgsm", "pgd", "autoattack"], eps=[0, 0.05, 0.1])``
returns a :class:`~keras_qrobust.report.RobustnessReport` that records how every number was
obtained (attack and its settings, ε, samples, seed) and carries the docs/limits.md warnings:
accuracy must fall as ε grows, otherwise the curve is flagged as suspect. Attacks are looked
up in the registry (:mod:`keras_qrobust.attacks.registry`).

Evaluation integrity: for every tf_keras model scored by a gradient attack, the inputs whose
logit-margin gradient is zero or non-finite are found first
(:func:`~keras_qrobust.attacks.gradient_check.gradient_status`); under gradient attacks they are
never counted as robust (a stalled attack proves nothing), and the report says how many there
were.
"""

from __future__ import annotations

import time
from typing import Mapping, Optional, Sequence

import numpy as np

from . import metrics
from ._progress import progress_bar
from .attacks.gradient_check import GRADIENT_OK, gradient_status
from .attacks.registry import PER_MODEL_KINDS, attack_names, check_budget, get_attack
from .executor import check_executor, fingerprint, run_tasks, ship_models, unship
from .quantizers.grid import parse_setting
from .report import RobustnessReport

__all__ = ["evaluate", "EVALUATE_ATTACKS"]

#: the attacks evaluate runs (every per-model attack of the registry)
EVALUATE_ATTACKS = attack_names(*PER_MODEL_KINDS)


def _options(attack: str, pgd_steps: int, options: Mapping[str, dict]) -> dict:
    spec = get_attack(attack)
    extra = {"steps": pgd_steps} if spec.name == "pgd" else {}
    return spec.settings(**{**extra, **dict(options.get(spec.name, {}))})


def _correct(model, x, y, spec, eps: float, seed: int, settings: dict, unusable: np.ndarray) -> int:
    """How many inputs stay correct under one attack cell; inputs without a usable gradient never
    count as robust under a gradient attack."""
    found = spec(model, x, y, eps=eps, seed=seed, **settings)
    if hasattr(found, "robust_accuracy"):  # a suite (AutoAttack) scores itself
        return int(np.sum(found.robust))
    correct = metrics.predict_labels(model, found) == y
    if spec.needs_gradient:
        correct &= ~unusable
    return int(correct.sum())


def _cell(shared: dict, name: str, attack: str, eps: float, seed: int, settings: dict, start: int, stop: int) -> int:
    """Correct inputs of one cell on inputs ``start:stop`` (a task of
    :func:`keras_qrobust.executor.run_tasks`)."""
    model = unship(shared["models"][name], shared["trust"])
    rows = slice(start, stop)
    return _correct(model, shared["x"][rows], shared["y"][rows], get_attack(attack), eps, seed, settings,
                    shared["unusable"][name][rows])


def _shards(n: int, shard_size: Optional[int], kind: str) -> list[tuple[int, int]]:
    """The input ranges of a cell's tasks: one per ``shard_size`` inputs for a per-input attack;
    a universal perturbation is crafted on all inputs, so its cell stays whole."""
    if shard_size is None or kind == "universal":
        return [(0, n)]
    return [(start, min(start + shard_size, n)) for start in range(0, n, shard_size)]


def _unusable_gradients(model, x, y) -> np.ndarray:
    """Inputs at which ``model`` gives no usable input gradient (all False for artifacts)."""
    if not hasattr(model, "layers"):
        return np.zeros(len(x), bool)
    return gradient_status(model, x, y) != GRADIENT_OK


def _weight_bits(name: str, model) -> Optional[int]:
    try:
        bits, _ = parse_setting(name.split()[-1])
        return bits
    except ValueError:
        return None


def evaluate(models, data, attacks: Sequence[str] = ("fgsm", "pgd"), eps: Sequence[float] = (0.0, 0.05, 0.1), *,
             pgd_steps: int = 20, seed: int = 0, options: Optional[Mapping[str, dict]] = None,
             bits: Optional[Mapping[str, int]] = None, lipschitz_bits: Optional[int] = None, transfer_matrix=None,
             executor: str = "local", address: Optional[str] = None, folder=None, shard_size: Optional[int] = None,
             trust: bool = False, verbose: int = 1) -> RobustnessReport:
    """Accuracy of every model under every attack at every ε (ε = 0: clean accuracy).

    Args:
        models: a model or ``{name: model}`` (tf_keras models or exported artifacts).
        data: ``(x, y)``, inputs in [0, 1].
        attacks: names from :data:`EVALUATE_ATTACKS` (e.g. ``"autoattack"``, ``"pgd"``,
            ``"square"``, ``"uap"``, ``"gaussian"``).
        eps: L∞ budgets (noise: its scale), ascending, each in [0, 1].
        pgd_steps: PGD's step count (shorthand for ``options={"pgd": {"steps": k}}``).
        options: per-attack settings, e.g. ``{"autoattack": {"version": "fast"}}``.
        bits: weight bits per model name, for the accuracy-vs-bits plot (default: parsed from
            names ending in a wXaY setting, e.g. ``"cnn w4a4"``).
        lipschitz_bits: also record σ_max(Q_b(W) − W) per layer of each tf_keras model.
        transfer_matrix: a :class:`~keras_qrobust.attacks.TransferMatrix` to include.
        executor: ``"local"`` (this process) or ``"ray"``: the attacked cells run as tasks of
            :func:`keras_qrobust.executor.run_tasks` (models shipped as their saved bytes), with
            the same seeds and the same numbers either way; ``address``: the Ray cluster
            (``None`` starts one on this machine, ``"auto"`` joins a running one).
        folder: keep each finished cell there (JSON) so a rerun skips it.
        shard_size: split every per-input cell (white-box, gradient-free, noise, AutoAttack)
            into tasks of this many inputs, so that one long AutoAttack cell spreads over
            workers; the cell's accuracy is the shards' correct inputs over all inputs. Each
            shard runs the attack with the cell's seed on its own inputs, so the numbers depend
            on ``shard_size`` (as on a batch size) and equal between executors for the same
            ``shard_size``. UAP cells stay whole (the perturbation is crafted on all inputs).
        trust: load shipped models without the code check (models with Lambda layers).
    """
    models = dict(models) if isinstance(models, Mapping) else {getattr(models, "name", "model"): models}
    if not models:
        raise ValueError("models is empty: pass a model or {name: model}")
    x, y = data
    x, y = np.asarray(x, np.float32), np.asarray(y).reshape(-1)
    if len(x) != len(y) or not len(x):
        raise ValueError(f"data must be (x, y) with as many labels as inputs, got {len(x)} and {len(y)}")
    if not attacks:
        raise ValueError(f"attacks is empty: give names from {', '.join(EVALUATE_ATTACKS)}")
    try:
        specs = [get_attack(a, *PER_MODEL_KINDS) for a in attacks]
    except ValueError as error:
        raise ValueError(f"attacks: {error}") from None
    names = [spec.name for spec in specs]
    options = dict(options or {})
    settings = {spec.name: _options(spec.name, pgd_steps, options) for spec in specs}
    eps = [check_budget(e) for e in eps]
    if not eps or eps != sorted(eps):
        raise ValueError(f"eps must be ascending values in [0, 1], got {eps}")
    check_executor(executor)
    if shard_size is not None and not (isinstance(shard_size, (int, np.integer)) and shard_size >= 1):
        raise ValueError(f"shard_size must be a positive integer or None, got {shard_size!r}")
    start = time.perf_counter()
    accuracy: dict = {}
    integrity: dict = {}
    total = len(models) * len(specs) * len(eps)
    progress = progress_bar(total=total, desc="evaluate", unit="cell", leave=True, verbose=verbose)
    gradient_attacks = any(spec.needs_gradient for spec in specs)
    clean, unusable = {}, {}
    for name, model in models.items():
        clean[name] = metrics.accuracy(model, x, y)
        unusable[name] = _unusable_gradients(model, x, y) if gradient_attacks and any(e > 0 for e in eps) else (
            np.zeros(len(x), bool))
        if unusable[name].any():
            integrity[name] = {"unusable_gradient": int(unusable[name].sum())}
    # a kept result is reused only for the same model, data and settings
    same = {name: fingerprint(model, x, y) if folder is not None else "" for name, model in models.items()}
    cells = {(name, spec.name, e): _shards(len(x), shard_size, spec.kind)
             for name in models for spec in specs for e in eps if e > 0}
    key = {(cell, rows): f"{cell[0]}|{cell[1]}|{cell[2]!r}|{seed}|{same[cell[0]]}|{fingerprint(settings[cell[1]])}|"
                         f"{rows[0]}:{rows[1]}" for cell, shards in cells.items() for rows in shards}
    tasks = {k: (name, attack, e, seed, settings[attack], *rows) for ((name, attack, e), rows), k in key.items()}
    shared = {"models": ship_models(models, executor), "x": x, "y": y, "unusable": unusable, "trust": trust}
    if progress is not None:
        progress.update(total - len(cells))  # the clean cells
    cell_of = {k: cell for (cell, _), k in key.items()}
    finished = {cell: 0 for cell in cells}

    def count_cell(task_key, result):
        finished[cell_of[task_key]] += 1
        if progress is not None and finished[cell_of[task_key]] == len(cells[cell_of[task_key]]):
            progress.update(1)

    counts = run_tasks(_cell, tasks, shared=shared, executor=executor, address=address, folder=folder,
                       on_result=count_cell)
    correct = {cell: sum(counts[key[cell, rows]] for rows in shards) for cell, shards in cells.items()}
    for name in models:
        accuracy[name] = {spec.name: [clean[name] if e == 0.0 else correct[name, spec.name, e] / len(x) for e in eps]
                          for spec in specs}
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
    provenance = {"attacks": {spec.name: spec.description(**settings[spec.name]) for spec in specs}, "eps": eps,
                  "norm": "inf", "samples": int(len(x)), "seed": seed, "pgd_steps": pgd_steps, "shard_size": shard_size,
                  "settings": settings, "seconds": round(time.perf_counter() - start, 2)}
    if integrity:
        provenance["integrity"] = {
            name: f"{v['unusable_gradient']} of {len(x)} inputs have a zero or non-finite input gradient: they are "
                  "counted as not robust under gradient attacks" for name, v in integrity.items()}
    transfer = None
    if transfer_matrix is not None:
        transfer = {"labels": list(transfer_matrix.names), "accuracy": np.asarray(transfer_matrix.accuracy).tolist()}
    return RobustnessReport.build(accuracy=accuracy, eps=eps, attacks=names, provenance=provenance,
                                  bits=bits, lipschitz=lipschitz, lipschitz_bits=lipschitz_bits, transfer=transfer)

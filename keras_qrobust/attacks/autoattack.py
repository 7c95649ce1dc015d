"""AutoAttack (Croce & Hein 2020, ICML): the standard of robust accuracy, native in TensorFlow.

``autoattack(model, x, y, eps=0.1)`` runs an ensemble of parameter-free attacks in a fixed
order, each only on the inputs that every attack before it failed to break, and scores the
per-input worst case:

* ``standard`` (RobustBench's evaluation): APGD-CE (100 steps), APGD-T (9 target classes ×
  100 steps), FAB-T (9 target classes × 100 steps), Square (5,000 queries, ``p_init`` 0.8,
  schedule not rescaled) — the authors' settings;
* ``fast`` (for quick runs, not a published figure): APGD-CE and APGD-T with 3 targets;
* ``custom``: the attacks named in ``attacks``, with AutoAttack's settings unless
  ``options`` overrides them (e.g. ``attacks=["square"]`` for a deployed artifact, which has
  no gradients).

An input counts as broken only when the returned point is misclassified *and* lies in the
ε-ball and the box (checked here, not trusted). Inputs whose logit-margin gradient is zero
or non-finite (:func:`~keras_qrobust.attacks.gradient_check.gradient_status`) and that survive
every attack are reported as unverified, not robust — unless ``trust_flagged=True``.
Robust accuracy comes with ``n`` and a 95 % Wilson interval.

``search_precision="bfloat16"`` (float models only) runs the attacks on the model's bfloat16
twin (:mod:`~keras_qrobust.attacks.search_twin`), faster on a CPU with bfloat16 units. The
float32 model still judges every returned point, and every input the twin called
broken but the float32 model does not is attacked again by the same attack in float32, so a
verdict is never the twin's. What the twin can cost is search strength; the AutoAttack
benchmark measures it against the float32 search on the same inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from .. import metrics
from ._common import as_attack_model, check_array, check_count, check_eps, check_inputs, check_norm, clip_key
from .gradient_check import GRADIENT_OK, gradient_status
from .search_twin import SEARCH_PRECISIONS, bfloat16_twin

__all__ = ["autoattack", "AutoAttackResult", "AUTOATTACK_VERSIONS", "AUTOATTACK_SETTINGS"]

#: the attacks of each version, in the order they run
AUTOATTACK_VERSIONS = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "fast": ("apgd-ce", "apgd-t"),
}

#: each attack's settings in the ``standard`` version (the authors' ``set_version('standard')``)
AUTOATTACK_SETTINGS = {
    "apgd-ce": dict(steps=100, restarts=1),
    "apgd-dlr": dict(steps=100, restarts=1),
    "apgd-t": dict(target_classes=9, steps=100, restarts=1),
    "fab-t": dict(target_classes=9, steps=100, restarts=1),
    "fab": dict(steps=100, restarts=1),
    "square": dict(queries=5002, p_init=0.8, rescale_schedule=False),  # 5,000 iterations + 2 queries
}
_FAST_SETTINGS = {"apgd-t": dict(target_classes=3, steps=100, restarts=1)}
_GRADIENT_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "fab")
# Square is flagged when it lowers the robust accuracy left by the gradient attacks by more than
# this share of the inputs (the reference code's check_square_sr threshold, 0.2 points).
_SQUARE_FLAG = 0.002


def _run_attack(name: str, model, x, y, *, eps: float, norm: str, clip, seed, batch_size: int, options: dict):
    common = dict(eps=eps, norm=norm, clip=clip, seed=seed, batch_size=batch_size, verbose=0)
    if name in ("apgd-ce", "apgd-dlr"):
        from .apgd import apgd

        return apgd(model, x, y, loss=name.split("-")[1], **common, **options)
    if name == "apgd-t":
        from .apgd import apgd_t

        return apgd_t(model, x, y, **common, **options)
    if name in ("fab-t", "fab"):
        from .fab import fab

        return fab(model, x, y, targeted=name == "fab-t", **common, **options)
    from .square import square

    return square(model, x, y, **common, **options)


def _distance(x_adv: np.ndarray, x: np.ndarray, norm: str) -> np.ndarray:
    delta = (x_adv - x).reshape(len(x), -1).astype(np.float64)
    return np.abs(delta).max(axis=1) if norm == "inf" else np.sqrt((delta ** 2).sum(axis=1))


@dataclass(frozen=True, eq=False)
class AutoAttackResult:
    """The per-input worst case of an AutoAttack run and how it was obtained."""

    x_adv: np.ndarray = field(repr=False)  # the breaking point where broken, else the input
    y: np.ndarray = field(repr=False)
    clean_correct: np.ndarray = field(repr=False)
    robust: np.ndarray = field(repr=False)  # survived every attack (and, unless trusted, has a usable gradient)
    broken_by: np.ndarray = field(repr=False)  # "" robust, "clean" misclassified, an attack name, or "unverified: …"
    gradient: np.ndarray = field(repr=False)  # per-input gradient status ("" when not checked)
    eps: float
    norm: str
    version: str
    attacks: tuple
    seed: Optional[int]
    accuracy_after: dict  # {"clean": acc, attack: robust accuracy after it, ...}
    seconds: dict  # wall seconds per attack
    settings: dict  # each attack's settings
    findings: tuple  # warnings about the evaluation itself
    search_precision: str = "float32"
    reattacked: dict = field(default_factory=dict)  # inputs each attack ran again in float32 (bfloat16 search)

    @property
    def n(self) -> int:
        return int(len(self.y))

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.mean())

    @property
    def robust_accuracy(self) -> float:
        return float(self.robust.mean())

    def interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Wilson interval of the robust accuracy."""
        return metrics.wilson_interval(int(self.robust.sum()), self.n, confidence)

    def clean_interval(self, confidence: float = 0.95) -> tuple[float, float]:
        return metrics.wilson_interval(int(self.clean_correct.sum()), self.n, confidence)

    def broken_counts(self) -> dict:
        """How many inputs each attack broke (first to break them), in run order."""
        return {name: int(np.sum(self.broken_by == name)) for name in self.attacks}

    def to_dict(self) -> dict:
        """JSON-ready summary (no arrays)."""
        low, high = self.interval()
        clean_low, clean_high = self.clean_interval()
        unverified = int(np.sum([str(b).startswith("unverified") for b in self.broken_by]))
        return {
            "n": self.n, "eps": self.eps, "norm": self.norm, "version": self.version, "seed": self.seed,
            "attacks": list(self.attacks), "clean_accuracy": self.clean_accuracy,
            "clean_interval95": [clean_low, clean_high], "robust_accuracy": self.robust_accuracy,
            "robust_interval95": [low, high], "accuracy_after": dict(self.accuracy_after),
            "broken_by": self.broken_counts(), "unverified": unverified,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()}, "settings": self.settings,
            "findings": list(self.findings), "search_precision": self.search_precision,
            "reattacked_in_float32": dict(self.reattacked),
        }

    def __str__(self) -> str:
        low, high = self.interval()
        norm = "L∞" if self.norm == "inf" else "L2"
        searched = "" if self.search_precision == "float32" else f", searched in {self.search_precision}"
        lines = [f"AutoAttack ({self.version}: {', '.join(self.attacks)}), {norm} ε = {self.eps:g}, n = {self.n}"
                 f"{searched}",
                 f"  clean accuracy  {self.clean_accuracy:.2%}",
                 f"  robust accuracy {self.robust_accuracy:.2%} (95% CI {low:.2%}–{high:.2%})"]
        for name in self.attacks:
            if name in self.accuracy_after:
                seconds = self.seconds.get(name, 0.0)
                lines.append(f"    after {name:<8} {self.accuracy_after[name]:.2%}  ({seconds:.1f} s)")
        lines += [f"  ! {finding}" for finding in self.findings]
        return "\n".join(lines)


def _is_deployed(model) -> bool:
    from ..export.runtime import DeployedModel

    return isinstance(model, DeployedModel)


def _labels_of(model, x: np.ndarray, batch_size: int) -> np.ndarray:
    if _is_deployed(model):
        return metrics.predict_labels(model, x, batch_size)
    return as_attack_model(model).predict_labels(x, batch_size)


def _plan(version: str, attacks: Optional[Sequence[str]], options: Optional[Mapping[str, dict]]):
    if attacks is not None:
        version = "custom"
        names = tuple(str(a).lower() for a in attacks)
        unknown = [a for a in names if a not in AUTOATTACK_SETTINGS]
        if unknown or not names:
            raise ValueError(f"attacks must be names from {sorted(AUTOATTACK_SETTINGS)}, got {list(attacks)}")
    elif version in AUTOATTACK_VERSIONS:
        names = AUTOATTACK_VERSIONS[version]
    else:
        raise ValueError(f"version must be one of {sorted(AUTOATTACK_VERSIONS)} (or pass attacks=[...]), "
                         f"got {version!r}")
    settings = {a: dict(AUTOATTACK_SETTINGS[a], **(_FAST_SETTINGS.get(a, {}) if version == "fast" else {}))
                for a in names}
    for name, extra in (options or {}).items():
        if name not in settings:
            raise ValueError(f"options name {name!r}, which is not among the attacks run ({', '.join(names)})")
        settings[name].update(extra)
    return version, names, settings


def _fit_targets(names, settings: dict, num_classes: int, findings: list) -> tuple:
    """Cap the target classes at ``num_classes − 1`` and skip APGD-T / APGD-DLR where their
    loss is undefined (the reference code's check_n_classes), saying so in ``findings``."""
    kept = []
    for name in names:
        if name == "apgd-t" and num_classes < 4 or name == "apgd-dlr" and num_classes < 3:
            findings.append(f"{name} skipped: its DLR loss needs at least {4 if name == 'apgd-t' else 3} classes, "
                            f"the model has {num_classes}")
            continue
        targets = settings[name].get("target_classes")
        if targets is not None and targets > num_classes - 1:
            settings[name]["target_classes"] = num_classes - 1
            findings.append(f"{name}: {num_classes - 1} target classes (the model has {num_classes} classes)")
        kept.append(name)
    return tuple(kept)


def _randomized(attack_model, x: np.ndarray) -> bool:
    """Do two forward passes of the same inputs disagree (a randomized defense)?"""
    first = attack_model.compiled_logits(x).numpy()
    second = attack_model.compiled_logits(x).numpy()
    return not np.allclose(first, second, rtol=1e-5, atol=1e-6)


def autoattack(model, x, y, *, eps: float, norm="inf", version: str = "standard",
               attacks: Optional[Sequence[str]] = None, options: Optional[Mapping[str, dict]] = None,
               seed: Optional[int] = 0, clip: Optional[Sequence[float]] = (0.0, 1.0), batch_size: int = 500,
               trust_flagged: bool = False, search_precision: str = "float32", verbose: int = 1) -> AutoAttackResult:
    """Robust accuracy of ``model`` on ``(x, y)`` under AutoAttack (module docstring).

    Args:
        model: a tf_keras classifier (float, tfmot-QAT or RobustQuantizer; logits or softmax
            output), or, for gradient-free attacks only (``attacks=["square"]``), an exported
            artifact loaded with :func:`keras_qrobust.export.load`.
        x, y: inputs in the box ``clip`` and their true labels.
        eps: the budget; norm: ``"inf"`` or ``"2"``.
        version: ``"standard"`` or ``"fast"``; ignored when ``attacks`` is given.
        options: per-attack setting overrides, e.g. ``{"square": {"queries": 1000}}``.
        seed: every attack's seed (same seed, same result).
        trust_flagged: count inputs with a zero or non-finite gradient that no attack broke
            as robust (by default they are reported as unverified and not counted robust).
        search_precision: ``"float32"``, or ``"bfloat16"`` to search on the float model's
            bfloat16 twin, every verdict the float32 model's (module docstring).
    """
    eps, norm = check_eps(eps), check_norm(norm)
    batch_size = check_count(batch_size, "batch_size")
    if seed is not None:
        check_count(seed, "seed", 0)
    version, names, settings = _plan(version, attacks, options)
    deployed = _is_deployed(model)
    if search_precision not in SEARCH_PRECISIONS:
        raise ValueError(f"search_precision must be one of {SEARCH_PRECISIONS}, got {search_precision!r}")
    if deployed and search_precision != "float32":
        raise ValueError(f"{model.path.name} is a deployed artifact: it is attacked as it runs; "
                         "search_precision='bfloat16' is for Keras float models")
    gradient_attacks = [a for a in names if a in _GRADIENT_ATTACKS]
    if deployed and gradient_attacks:
        raise ValueError(f"{model.path.name} is a deployed artifact: AutoAttack's gradient attacks "
                         f"({', '.join(gradient_attacks)}) need its Keras twin; run autoattack on the Keras model "
                         "and autoattack(artifact, x, y, eps=..., attacks=['square']) on the file")
    x = check_array(x, clip)
    y = metrics.check_labels(y, len(x))
    findings: list[str] = []
    if deployed:
        num_classes = None
    else:
        attack_model = as_attack_model(model)
        x, y = check_inputs(attack_model, x, y, clip, require_labels=True)
        num_classes = attack_model.num_classes
        names = _fit_targets(names, settings, num_classes, findings)
        if _randomized(attack_model, x[:batch_size]):
            findings.append("the model's outputs differ between two passes over the same inputs (a randomized "
                            "defense?): these attacks assume a deterministic model")

    start = time.perf_counter()
    predicted = _labels_of(model, x, batch_size)
    clean_correct = predicted == y
    robust = clean_correct.copy()
    broken_by = np.where(clean_correct, "", "clean").astype(object)
    x_adv = x.copy()
    gradient = np.full(len(x), "", dtype=object)
    if gradient_attacks and clean_correct.any():
        gradient[clean_correct] = gradient_status(model, x[clean_correct], y[clean_correct], batch_size=batch_size)
    accuracy_after = {"clean": float(clean_correct.mean())}
    seconds = {"clean": time.perf_counter() - start}
    search_model = model if search_precision == "float32" else bfloat16_twin(attack_model.model)
    reattacked: dict[str, int] = {}

    def attacked(name: str, attacker, rows: np.ndarray):
        """``name`` run by ``attacker`` on ``rows``: the points, which lie in the ε-ball and
        the box, and which of those the float32 model misclassifies."""
        found = np.asarray(_run_attack(name, attacker, x[rows], y[rows], eps=eps, norm=norm, clip=clip_key(clip),
                                       seed=seed, batch_size=batch_size, options=settings[name]), np.float32)
        inside = _distance(found, x[rows], norm) <= eps * (1 + 1e-5) + 1e-6
        if clip is not None:
            inside &= (found.reshape(len(rows), -1).min(1) >= clip[0] - 1e-6) & (
                found.reshape(len(rows), -1).max(1) <= clip[1] + 1e-6)
        return found, inside, inside & (_labels_of(model, found, batch_size) != y[rows])

    for name in names:
        todo = np.flatnonzero(robust)
        if len(todo) == 0:
            break
        start = time.perf_counter()
        found, inside, broken = attacked(name, search_model, todo)
        if search_model is not model:  # the twin's wrong verdicts: attacked again in float32
            misjudged = np.flatnonzero(inside & ~broken & (_labels_of(search_model, found, batch_size) != y[todo]))
            if len(misjudged):
                found[misjudged], inside[misjudged], broken[misjudged] = attacked(name, model, todo[misjudged])
            reattacked[name] = int(len(misjudged))
        if not inside.all():
            findings.append(f"{name} returned {int((~inside).sum())} points outside the ε-ball or the box; "
                            "they were not counted")
        rows = todo[broken]
        x_adv[rows], robust[rows], broken_by[rows] = found[broken], False, name
        seconds[name] = time.perf_counter() - start
        accuracy_after[name] = float(robust.mean())
        if verbose:
            print(f"autoattack {name}: robust {accuracy_after[name]:.2%} ({int(robust.sum())}/{len(x)}), "
                  f"{seconds[name]:.1f} s", flush=True)

    flagged = robust & (gradient != "") & (gradient != GRADIENT_OK)
    if flagged.any():
        kinds = ", ".join(f"{int(np.sum(gradient[flagged] == k))} {k}" for k in sorted(set(gradient[flagged])))
        findings.append(f"{int(flagged.sum())} inputs no attack broke have no usable gradient ({kinds}): "
                        + ("counted robust (trust_flagged=True)" if trust_flagged else
                           "reported as unverified, not robust; attack them gradient-free or by transfer/BPDA"))
        if not trust_flagged:
            robust = robust & ~flagged
            broken_by[flagged] = ["unverified: " + str(g) for g in gradient[flagged]]
    if "square" in accuracy_after and any(a in accuracy_after for a in gradient_attacks):
        before = min(v for k, v in accuracy_after.items() if k not in ("clean", "square"))
        drop = before - accuracy_after["square"]
        if drop > _SQUARE_FLAG:
            findings.append(f"Square (gradient-free) broke {int(round(drop * len(x)))} inputs the gradient attacks "
                            f"did not ({drop:.2%} of n, above the {_SQUARE_FLAG:.1%} threshold): the gradients may be "
                            "masked; add an adaptive attack (BPDA, transfer) before trusting this number")
    return AutoAttackResult(
        x_adv=x_adv, y=y, clean_correct=clean_correct, robust=robust, broken_by=broken_by, gradient=gradient,
        eps=eps, norm=norm, version=version, attacks=tuple(names), seed=seed, accuracy_after=accuracy_after,
        seconds=seconds, settings={k: settings[k] for k in names}, findings=tuple(findings),
        search_precision=search_precision, reattacked=reattacked)

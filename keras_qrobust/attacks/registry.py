"""Every attack, registered once: its name, kind, norms, default settings and description.

``evaluate``, ``search``, ``guard``, the CLI and the benchmarks look attacks up here instead
of keeping their own lists of names. Each entry's ``run`` has one signature,

    run(model, x, y, *, eps, norm="inf", seed=0, **options) -> adversarial inputs
                                                               (or an AutoAttackResult)

with ``options`` limited to the names in ``defaults``. :func:`check_budget` is the one ε
validation.

Kinds: ``white-box`` (gradients of the model scored), ``gradient-free`` (queries only; also
runs on a deployed artifact), ``noise`` (random, no model), ``universal`` (one perturbation
crafted on the inputs, Moosavi-Dezfooli 2017), ``suite`` (AutoAttack), and, not per model,
``ensemble`` (one perturbation across several models) and ``transfer`` (crafted on a
surrogate).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from ._common import check_norm

__all__ = ["AttackSpec", "register_attack", "get_attack", "attack_names", "check_budget", "KINDS",
           "PER_MODEL_KINDS"]

KINDS = ("white-box", "gradient-free", "noise", "universal", "suite", "ensemble", "transfer")
PER_MODEL_KINDS = ("white-box", "gradient-free", "noise", "universal", "suite")


@dataclass(frozen=True)
class AttackSpec:
    """One registered attack."""

    name: str
    run: Callable = field(repr=False)
    kind: str
    norms: tuple
    defaults: dict
    describe: Callable = field(repr=False)  # describe(**settings) -> one line saying how it attacks
    aliases: tuple = ()

    @property
    def needs_gradient(self) -> bool:
        return self.kind in ("white-box", "universal", "suite")

    def settings(self, **overrides) -> dict:
        """The defaults with ``overrides``; an unknown option is a ValueError naming the known ones."""
        unknown = sorted(set(overrides) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise ValueError(f"attack {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                             f"its options: {known}")
        return {**self.defaults, **overrides}

    def description(self, **overrides) -> str:
        return self.describe(**self.settings(**overrides))

    def __call__(self, model, x, y, *, eps: float, norm="inf", seed: Optional[int] = 0, **options):
        norm = check_norm(norm)
        if norm not in self.norms:
            allowed = " or ".join(_norm_name(n) for n in self.norms)
            raise ValueError(f"attack {self.name!r} works in {allowed}, not {_norm_name(norm)}")
        return self.run(model, x, y, eps=eps, norm=norm, seed=seed, **self.settings(**options))


_REGISTRY: dict[str, AttackSpec] = {}


def _norm_name(norm: str) -> str:
    return "L∞" if norm == "inf" else "L2"


def register_attack(name: str, *, kind: str, norms: Sequence[str] = ("inf",), defaults: Optional[dict] = None,
                    describe: Callable[..., str], aliases: Sequence[str] = ()):
    """Decorator: register ``run`` under ``name`` (and ``aliases``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")

    def decorate(run: Callable) -> Callable:
        spec = AttackSpec(name, run, kind, tuple(check_norm(n) for n in norms), dict(defaults or {}), describe,
                          tuple(aliases))
        for key in (name, *aliases):
            if key in _REGISTRY:
                raise ValueError(f"attack name {key!r} is registered twice")
            _REGISTRY[key] = spec
        return run

    return decorate


def attack_names(*kinds: str, norm: Optional[str] = None) -> tuple:
    """Registered names (no aliases), in registration order, of the given kinds (all when none)."""
    norm = None if norm is None else check_norm(norm)
    seen = []
    for key, spec in _REGISTRY.items():
        if key == spec.name and (not kinds or spec.kind in kinds) and (norm is None or norm in spec.norms):
            seen.append(key)
    return tuple(seen)


def get_attack(name: str, *kinds: str) -> AttackSpec:
    """The attack registered as ``name`` (case-insensitive, ``_`` and ``-`` alike), optionally
    required to be of one of ``kinds``; an unknown name is a ValueError listing the known ones."""
    key = str(name).strip().lower()
    spec = _REGISTRY.get(key) or _REGISTRY.get(key.replace("_", "-")) or _REGISTRY.get(key.replace("-", "_"))
    if spec is None or (kinds and spec.kind not in kinds):
        known = ", ".join(attack_names(*kinds))
        raise ValueError(f"unknown attack {name!r}; choose one of {known}")
    return spec


def check_budget(eps, norm="inf", *, clip: Optional[Sequence[float]] = (0.0, 1.0), allow_zero: bool = True,
                 name: str = "eps") -> float:
    """The one validation of an attack budget: a finite number, ``> 0`` unless ``allow_zero``,
    and for L∞ no larger than the width of the box ``clip`` (a larger ball is the whole box)."""
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {eps!r}") from None
    low = 0.0 if allow_zero else None
    if not math.isfinite(value) or value < 0 or (low is None and value == 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {eps!r}")
    if check_norm(norm) == "inf" and clip is not None and value > float(clip[1]) - float(clip[0]):
        raise ValueError(f"{name} = {value:g} is larger than the input range [{clip[0]:g}, {clip[1]:g}]: give an L∞ "
                         f"budget in [0, {float(clip[1]) - float(clip[0]):g}], e.g. 0.1 for images in [0, 1]")
    return value


# ------------------------------------------------------------------------- the attacks
@register_attack("fgsm", kind="white-box", norms=("inf", "2"), describe=lambda: "FGSM (one step)")
def _fgsm(model, x, y, *, eps, norm, seed):
    from .gradient import fgsm

    return fgsm(model, x, y, eps=eps, norm=norm)


@register_attack("pgd", kind="white-box", norms=("inf", "2"), defaults=dict(steps=20, restarts=1, loss="ce"),
                 describe=lambda steps, restarts, loss: (
                     f"PGD-{steps}, random start, α = 2.5ε/{steps}, {loss.upper()} loss"
                     + (f", best of {restarts} restarts" if restarts > 1 else "")))
def _pgd(model, x, y, *, eps, norm, seed, steps, restarts, loss):
    from .gradient import pgd

    return pgd(model, x, y, eps=eps, norm=norm, steps=steps, restarts=restarts, loss=loss, seed=seed, verbose=0)


@register_attack("bim", kind="white-box", norms=("inf", "2"), defaults=dict(steps=10),
                 describe=lambda steps: f"BIM-{steps} (no random start, α = 1.25ε/{steps})")
def _bim(model, x, y, *, eps, norm, seed, steps):
    from .gradient import bim

    return bim(model, x, y, eps=eps, norm=norm, steps=steps, verbose=0)


@register_attack("mim", kind="white-box", norms=("inf", "2"), defaults=dict(steps=10, decay=1.0),
                 describe=lambda steps, decay: f"MIM-{steps} (decay {decay:g})")
def _mim(model, x, y, *, eps, norm, seed, steps, decay):
    from .gradient import mim

    return mim(model, x, y, eps=eps, norm=norm, steps=steps, decay=decay, verbose=0)


@register_attack("apgd-ce", kind="white-box", norms=("inf", "2"), defaults=dict(steps=100, restarts=1),
                 describe=lambda steps, restarts: f"APGD-CE ({steps} steps, {restarts} restart(s); Croce & Hein 2020)")
def _apgd_ce(model, x, y, *, eps, norm, seed, steps, restarts):
    from .apgd import apgd

    return apgd(model, x, y, eps=eps, norm=norm, loss="ce", steps=steps, restarts=restarts, seed=seed, verbose=0)


@register_attack("apgd-dlr", kind="white-box", norms=("inf", "2"), defaults=dict(steps=100, restarts=1),
                 describe=lambda steps, restarts: f"APGD-DLR ({steps} steps, {restarts} restart(s))")
def _apgd_dlr(model, x, y, *, eps, norm, seed, steps, restarts):
    from .apgd import apgd

    return apgd(model, x, y, eps=eps, norm=norm, loss="dlr", steps=steps, restarts=restarts, seed=seed, verbose=0)


@register_attack("apgd-t", kind="white-box", norms=("inf", "2"), defaults=dict(target_classes=9, steps=100),
                 describe=lambda target_classes, steps: f"APGD-T ({target_classes} targets × {steps} steps)")
def _apgd_t(model, x, y, *, eps, norm, seed, target_classes, steps):
    from .apgd import apgd_t

    return apgd_t(model, x, y, eps=eps, norm=norm, target_classes=target_classes, steps=steps, seed=seed, verbose=0)


@register_attack("fab-t", kind="white-box", norms=("inf", "2"), defaults=dict(target_classes=9, steps=100),
                 describe=lambda target_classes, steps: f"FAB-T ({target_classes} targets × {steps} steps; "
                                                        "Croce & Hein 2020b)")
def _fab_t(model, x, y, *, eps, norm, seed, target_classes, steps):
    from .fab import fab

    return fab(model, x, y, eps=eps, norm=norm, targeted=True, target_classes=target_classes, steps=steps,
               seed=seed, verbose=0)


@register_attack("fab", kind="white-box", norms=("inf", "2"), defaults=dict(steps=100, restarts=1),
                 describe=lambda steps, restarts: f"FAB, untargeted ({steps} steps, {restarts} restart(s))")
def _fab(model, x, y, *, eps, norm, seed, steps, restarts):
    from .fab import fab

    return fab(model, x, y, eps=eps, norm=norm, targeted=False, steps=steps, restarts=restarts, seed=seed,
               verbose=0)


@register_attack("cw_l2", kind="white-box", norms=("2",), defaults=dict(max_iterations=1000, binary_search_steps=5),
                 describe=lambda max_iterations, binary_search_steps: (
                     f"CW-L2 ({binary_search_steps} binary-search steps × {max_iterations} iterations), success "
                     "counted within ‖δ‖₂ ≤ ε"))
def _cw_l2(model, x, y, *, eps, norm, seed, max_iterations, binary_search_steps):
    from .cw import cw_l2

    x = np.asarray(x, np.float32)
    found = cw_l2(model, x, y, max_iterations=max_iterations, binary_search_steps=binary_search_steps, verbose=0)
    inside = np.linalg.norm((found - x).reshape(len(x), -1), axis=1) <= eps
    return np.where(inside.reshape((-1,) + (1,) * (x.ndim - 1)), found, x)


@register_attack("deepfool", kind="white-box", norms=("inf", "2"), defaults=dict(steps=50, overshoot=0.02),
                 describe=lambda steps, overshoot: f"DeepFool ({steps} steps, overshoot {overshoot:g}) within ε")
def _deepfool(model, x, y, *, eps, norm, seed, steps, overshoot):
    from .deepfool import deepfool

    return deepfool(model, x, y, eps=eps, norm=norm, steps=steps, overshoot=overshoot, verbose=0)


@register_attack("spsa", kind="gradient-free", defaults=dict(steps=100, samples=64, delta=0.03, learning_rate=0.05),
                 describe=lambda steps, samples, delta, learning_rate: (
                     f"SPSA ({steps} steps × {2 * samples} queries, δ = {delta:g}, Adam {learning_rate:g}; "
                     "Uesato 2018)"))
def _spsa(model, x, y, *, eps, norm, seed, steps, samples, delta, learning_rate):
    from .blackbox import spsa

    return spsa(model, x, y, eps=eps, steps=steps, samples=samples, delta=delta, learning_rate=learning_rate,
                seed=seed, verbose=0)


@register_attack("square", kind="gradient-free", norms=("inf", "2"),
                 defaults=dict(queries=5002, p_init=0.8, rescale_schedule=False),
                 describe=lambda queries, p_init, rescale_schedule: (
                     f"Square ({queries - 2} iterations, p_init {p_init:g}"
                     f"{', schedule rescaled' if rescale_schedule else ''}; Andriushchenko 2020)"))
def _square(model, x, y, *, eps, norm, seed, queries, p_init, rescale_schedule):
    from .square import square

    return square(model, x, y, eps=eps, norm=norm, queries=queries, p_init=p_init,
                  rescale_schedule=rescale_schedule, seed=seed, verbose=0)


@register_attack("gaussian", kind="noise", describe=lambda: "Gaussian noise N(0, ε²)")
def _gaussian(model, x, y, *, eps, norm, seed):
    from .noise import noise

    return noise(x, eps=eps, kind="gaussian", seed=seed)


@register_attack("uniform", kind="noise", describe=lambda: "uniform noise U(−ε, ε)")
def _uniform(model, x, y, *, eps, norm, seed):
    from .noise import noise

    return noise(x, eps=eps, kind="uniform", seed=seed)


@register_attack("uap", kind="universal", defaults=dict(max_passes=10),
                 describe=lambda max_passes: (f"UAP (FGSM inner step, up to {max_passes} passes) crafted on the "
                                              "evaluation inputs (direct)"))
def _uap(model, x, y, *, eps, norm, seed, max_passes):
    from .uap import uap

    v = uap(model, x, eps=eps, norm=norm, max_passes=max_passes, seed=seed, verbose=0).perturbation
    return np.clip(np.asarray(x, np.float32) + v, 0.0, 1.0)


@register_attack("autoattack", kind="suite", norms=("inf", "2"), defaults=dict(version="standard"),
                 describe=lambda version: (
                     "AutoAttack standard (APGD-CE, APGD-T 9 targets, FAB-T 9 targets, Square 5,000 queries)"
                     if version == "standard" else "AutoAttack fast (APGD-CE, APGD-T 3 targets)"))
def _autoattack(model, x, y, *, eps, norm, seed, version):
    from .autoattack import autoattack

    return autoattack(model, x, y, eps=eps, norm=norm, version=version, seed=seed, verbose=0)


@register_attack("transfer", kind="transfer", norms=("inf", "2"), defaults=dict(source=None, attack="pgd", steps=20),
                 describe=lambda source, attack, steps: (
                     f"{attack.upper()}{f'-{steps}' if attack in ('pgd', 'bim', 'mim') else ''} crafted on a "
                     "surrogate model (black-box transfer), scored on the model"))
def _transfer(model, x, y, *, eps, norm, seed, source, attack, steps):
    if source is None:
        raise ValueError("the transfer attack needs source=<surrogate model> to craft the examples on")
    crafting = get_attack(attack, "white-box")
    options = {"steps": steps} if "steps" in crafting.defaults else {}
    return crafting(source, x, y, eps=eps, norm=norm, seed=seed, **options)


@register_attack("ensemble_uap", kind="ensemble", defaults=dict(max_passes=10, sampling="step"),
                 describe=lambda max_passes, sampling: (
                     f"ensemble UAP (Zhou 2022 Algorithm 2, a model drawn per {sampling}, up to {max_passes} passes)"))
def _ensemble_uap(models, x, y, *, eps, norm, seed, max_passes, sampling):
    from .uap import ensemble_uap

    return ensemble_uap(list(models), x, eps=eps, norm=norm, max_passes=max_passes, sampling=sampling, seed=seed,
                        verbose=0)

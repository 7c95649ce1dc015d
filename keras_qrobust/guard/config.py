"""The arguments of one guard run, checked and resolved (``--quick`` presets filled in).

A :class:`GuardConfig` is what the checkpoint records and compares: rerunning into a folder
whose state holds a different config is an error, the same config resumes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import PurePath
from typing import Optional

from ..inputs import InputError, check_count
from ..quantizers.grid import parse_setting

__all__ = ["GuardConfig", "GuardInputError", "check_seed", "TARGETS", "TRAIN_ATTACKS", "DEFAULT_CANDIDATES", "QUICK",
           "FULL", "parse_candidates"]

#: --target -> file extension of the exported artifact
TARGETS = {"tflite-int8": ".tflite", "onnx": ".onnx", "akida": ".fbz"}
TRAIN_ATTACKS = ("pgd", "fgsm_rs")
DEFAULT_CANDIDATES = ("w8a8", "w6a6", "w4a4")

#: knob -> value with --quick (sized so the default job finishes in minutes on 2 CPU cores)
QUICK = {"epochs": 3, "train_samples": 10000, "test_samples": 500, "train_attack": "fgsm_rs", "pgd_steps": 10,
         "surrogate_epochs": 2, "uap_samples": 500, "autoattack": "fast", "autoattack_samples": 200,
         "square_queries": 500}
#: knob -> value without --quick (None: the whole split)
FULL = {"epochs": 10, "train_samples": None, "test_samples": None, "train_attack": "pgd", "pgd_steps": 20,
        "surrogate_epochs": 5, "uap_samples": 2000, "autoattack": "standard", "autoattack_samples": 1000,
        "square_queries": 5002}
#: knobs that are names, not counts
_NAMED_KNOBS = {"train_attack": TRAIN_ATTACKS, "autoattack": ("standard", "fast")}


#: the least top-1 agreement of the exported file with the attacked Keras model for a run to
#: pass (below it, the robustness measured on the Keras model says nothing about the file)
AGREEMENT_FLOOR = 0.995


#: bad usage or bad input (exit code 2): one class with the checks of keras_qrobust.inputs
GuardInputError = InputError


def _akida_weight_bits() -> tuple[int, ...]:
    from ..export.akida_grids import CARRIED_WEIGHT_BITS  # the export package is heavy: only for --target akida

    return CARRIED_WEIGHT_BITS


def parse_candidates(text: str, target: str) -> tuple[str, ...]:
    """``"w8a8,w4a4"`` -> ``("w8a8", "w4a4")``, each a wXaY setting the target can take."""
    settings = [s.strip().lower() for s in text.split(",") if s.strip()]
    if not settings:
        raise GuardInputError("--candidates is empty; pass bit widths such as --candidates w8a8,w6a6,w4a4")
    for setting in settings:
        try:
            weight_bits, activation_bits = parse_setting(setting)
        except ValueError as error:
            raise GuardInputError(f"--candidates: {error}") from None
        if weight_bits is None or activation_bits is None:
            raise GuardInputError(f"--candidates: {setting!r} quantizes only weights or only activations; guard "
                                  "exports full-integer models, so give both, e.g. w4a4")
        if not (1 <= weight_bits <= 8 and 1 <= activation_bits <= 8):
            raise GuardInputError(f"--candidates: {setting!r} is outside the 1-8 bits the exported int8 model "
                                  "holds; use settings from w8a8 down to w1a1")
        if target == "akida" and weight_bits not in _akida_weight_bits():
            raise GuardInputError(f"--candidates: {setting!r} has {weight_bits}-bit weights, not a sub-grid of Akida "
                                  "2's 4- or 8-bit weights; use e.g. --candidates w8a8,w4a4,w2a2 with --target akida")
    if len(set(settings)) != len(settings):
        raise GuardInputError(f"--candidates lists a setting twice ({text!r}); list each once")
    return tuple(settings)


def check_seed(seed: int) -> int:
    """``--seed`` as numpy's generators take it: an integer in [0, 2**32)."""
    if not 0 <= seed < 2**32:
        raise GuardInputError(f"--seed {seed} is out of range: give an integer in [0, 2**32), e.g. --seed 0")
    return seed


@dataclass(frozen=True)
class GuardConfig:
    """Everything that determines a guard run's results (not the output folder)."""

    model: Optional[str]
    dataset: str
    eps: float
    target: str
    candidates: tuple
    floor: Optional[float]
    seed: int
    no_train: bool
    quick: bool
    epochs: int
    train_samples: Optional[int]
    test_samples: Optional[int]
    train_attack: str
    pgd_steps: int
    surrogate_epochs: int
    uap_samples: int
    autoattack: str = "standard"  # AutoAttack version of the robust-accuracy column
    autoattack_samples: int = 1000  # test inputs it runs on (the first ones)
    square_queries: int = 5002  # Square on the exported artifact (and its Keras twin), per input
    robust_ratio: float = 0.5  # PGD accuracy / clean accuracy at or above which a model counts as robust

    @classmethod
    def from_args(cls, args) -> "GuardConfig":
        """Check the parsed ``guard`` arguments and fill in the preset of ``--quick``."""
        if not (math.isfinite(args.eps) and 0.0 < args.eps <= 1.0):
            raise GuardInputError(f"--eps {args.eps:g} is out of range: inputs are images in [0, 1], so give an L∞ "
                                  "budget in (0, 1], e.g. --eps 0.1")
        if args.target not in TARGETS:
            raise GuardInputError(f"unknown --target {args.target!r}; choose one of {', '.join(TARGETS)}")
        if args.floor is not None and not (0.0 <= args.floor < 1.0):
            raise GuardInputError(f"--floor {args.floor:g} is out of range: give the clean-accuracy floor as a "
                                  "fraction in [0, 1), e.g. --floor 0.8")
        check_seed(args.seed)
        if args.no_train and not args.model:
            raise GuardInputError("--no-train needs --model: without a model guard trains cnn_small, so pass the "
                                  "saved model to keep (or drop --no-train)")
        if args.train_attack is not None and args.train_attack not in TRAIN_ATTACKS:
            raise GuardInputError(f"unknown --train-attack {args.train_attack!r}; choose one of "
                                  f"{', '.join(TRAIN_ATTACKS)}")
        preset = QUICK if args.quick else FULL
        knobs = {}
        for name in preset:
            given = getattr(args, name, None)
            knobs[name] = preset[name] if given is None else given
            if name in _NAMED_KNOBS:
                if knobs[name] not in _NAMED_KNOBS[name]:
                    raise GuardInputError(f"unknown --{name.replace('_', '-')} {knobs[name]!r}; choose one of "
                                          f"{', '.join(_NAMED_KNOBS[name])}")
            else:
                check_count(knobs[name], f"--{name.replace('_', '-')}")
        return cls(model=args.model, dataset=args.dataset, eps=float(args.eps), target=args.target,
                   candidates=parse_candidates(args.candidates, args.target), floor=args.floor, seed=int(args.seed),
                   no_train=bool(args.no_train), quick=bool(args.quick), **knobs)

    def to_dict(self) -> dict:
        """The config as the state file records it: files by name only (no machine paths; their
        contents are compared through the inputs' SHA-256)."""
        data = dataclasses.asdict(self)
        data["candidates"] = list(self.candidates)
        data["model"], data["dataset"] = self.shown(self.model), self.shown(self.dataset)
        return data

    @staticmethod
    def shown(argument: Optional[str]) -> Optional[str]:
        """A file argument as outputs show it: the file name (a dataset name such as
        ``cifar10/3.0.2`` stays as is)."""
        import os

        is_file = argument is not None and (os.path.exists(argument) or argument.lower().endswith(
            (".npz", ".keras", ".h5", ".hdf5")))
        if not is_file:
            return argument
        return PurePath(argument.replace("\\", "/")).name

    def command_line(self) -> str:
        """The guard command line that reproduces this config (without --out; files by name)."""
        parts = ["keras-qrobust guard"]
        if self.quick:
            parts.append("--quick")
        if self.model:
            parts.append(f"--model {self.shown(self.model)}")
        parts += [f"--dataset {self.shown(self.dataset)}", f"--eps {self.eps:g}", f"--target {self.target}",
                  f"--candidates {','.join(self.candidates)}", f"--seed {self.seed}"]
        if self.floor is not None:
            parts.append(f"--floor {self.floor:g}")
        if self.no_train:
            parts.append("--no-train")
        preset = QUICK if self.quick else FULL
        for name, default in preset.items():
            value = getattr(self, name)
            if value != default:
                parts.append(f"--{name.replace('_', '-')} {value}")
        return " ".join(parts)

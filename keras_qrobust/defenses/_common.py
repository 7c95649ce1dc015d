"""Checks and helpers shared by feedback learning and the callbacks."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ..metrics import check_labels
from ..attacks._common import AttackModel, as_attack_model, check_array, check_count
from .adversarial_model import classifier_of

__all__ = ["Clip", "attack_model_of", "check_data", "seed_or_entropy"]

Clip = Optional[Sequence[float]]


def attack_model_of(model, output: str = "auto") -> AttackModel:
    """The :class:`~keras_qrobust.attacks.AttackModel` of the classifier ``model`` stands for
    (an AttackModel is returned as is)."""
    return model if isinstance(model, AttackModel) else as_attack_model(classifier_of(model), output)


def check_data(data, name: str = "data", clip: Clip = (0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """``data = (x, y)`` as float32 inputs in ``clip`` and one int64 label per input
    (the checks that need no model)."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name} must be a tuple (x, y) of numpy arrays, got {type(data).__name__}")
    try:
        x = check_array(data[0], clip)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{name}: {error}") from None
    try:
        y = check_labels(data[1], len(x))
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    if y.min() < 0:
        raise ValueError(f"{name}: y holds a negative label ({int(y.min())}): pass class indices 0..C-1")
    return x, y


def seed_or_entropy(seed: Optional[int]) -> int:
    """``seed`` checked (an int >= 0), or fresh entropy when it is None."""
    if seed is None:
        return int(np.random.SeedSequence().entropy)
    return check_count(seed, "seed", minimum=0)

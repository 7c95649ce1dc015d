"""Checks and helpers shared by feedback learning and the callbacks."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

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
    y = np.asarray(data[1])
    if y.ndim == 2 and y.shape[1] > 1:
        raise ValueError(f"{name}: y must be integer class labels, not one-hot: use y.argmax(-1)")
    y = y.reshape(-1)
    if len(y) != len(x):
        raise ValueError(f"{name}: x has {len(x)} inputs but y has {len(y)} labels")
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.mod(y, 1) == 0) or y.min() < 0:
        raise ValueError(f"{name}: y must hold integer class labels >= 0")
    return x, y.astype(np.int64)


def seed_or_entropy(seed: Optional[int]) -> int:
    """``seed`` checked (an int >= 0), or fresh entropy when it is None."""
    if seed is None:
        return int(np.random.SeedSequence().entropy)
    return check_count(seed, "seed", minimum=0)

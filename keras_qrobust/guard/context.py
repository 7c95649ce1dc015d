"""What every guard stage gets: the config, the data, the checkpoint and a way to talk."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .config import GuardConfig
from .inputs import Data
from .state import RunState

__all__ = ["Context", "say", "save_model", "load_model"]


def say(message: str) -> None:
    """Tell the user what a stage does (stderr, so stdout stays for results)."""
    print(f"guard: {message}", file=sys.stderr, flush=True)


def save_model(model, folder: Path, relative: str) -> str:
    """Save ``model`` atomically at ``folder/relative``; returns ``relative`` (for the state)."""
    from .._io import atomic_path

    with atomic_path(folder / relative, overwrite=True) as temporary:
        model.save(temporary)
    return relative


def load_model(path: Path):
    from .._keras import keras

    return keras.models.load_model(str(path), compile=False)


@dataclass
class Context:
    """The run's inputs; stages read earlier stages' artifacts through ``state``."""

    config: GuardConfig
    data: Data
    state: RunState
    model: Optional[Any] = None  # the loaded --model (None: guard builds cnn_small)

    @property
    def folder(self) -> Path:
        return self.state.folder

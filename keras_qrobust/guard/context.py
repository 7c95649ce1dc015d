"""What every guard stage gets: the config, the data, the checkpoint and a way to talk."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .config import GuardConfig
from ..inputs import Data
from .state import RunState

__all__ = ["Context", "say", "save_model"]


def say(message: str) -> None:
    """Tell the user what a stage does (stderr, so stdout stays for results)."""
    print(f"guard: {message}", file=sys.stderr, flush=True)


def save_model(model, folder: Path, relative: str) -> str:
    """Save ``model`` atomically at ``folder/relative``; returns ``relative`` (for the state)."""
    from .._io import atomic_path

    with atomic_path(folder / relative, overwrite=True) as temporary:
        model.save(temporary)
    return relative


@dataclass
class Context:
    """The run's inputs; stages read earlier stages' artifacts through ``state``."""

    config: GuardConfig
    data: Data
    state: RunState
    model: Optional[Any] = None  # the loaded --model (None: guard builds cnn_small)
    trust_model: bool = False  # --trust-model: the run's saved models may hold the user's Lambda layers
    executor: str = "local"  # where the per-model attack cells run (keras_qrobust.executor); no result depends on it
    address: Optional[str] = None  # the Ray cluster (None: one started on this machine)

    def load_artifact(self, stage: str, name: str):
        """Load a model an earlier stage saved in the folder, inspected like the user's file (the
        folder may be shared) unless the run trusts the user's model."""
        from ..model_files import load_model

        return load_model(self.state.artifact(stage, name), trust=self.trust_model)

    @property
    def folder(self) -> Path:
        return self.state.folder

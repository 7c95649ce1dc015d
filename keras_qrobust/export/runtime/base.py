"""The interface every loaded artifact shares: :class:`DeployedModel` and its ``predict``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DeployedModel"]


@dataclass(eq=False)  # compared (and hashed) by identity: attacks cache compiled loops per model
class DeployedModel:
    """An exported model loaded in its runtime. ``predict`` returns float scores."""

    path: Path
    format: str
    input_shape: tuple = field(default=())  # one example's shape, e.g. (28, 28, 1)

    def predict(self, x, batch_size: int = 256, verbose: int = 0) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if x.shape[1:] != tuple(self.input_shape):
            raise ValueError(
                f"{self.path.name} takes inputs of shape (n, {', '.join(map(str, self.input_shape))}); "
                f"got {x.shape}"
            )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        outputs = [self._run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(outputs) if outputs else np.zeros((0,), np.float32)

    def __call__(self, x) -> np.ndarray:
        return self.predict(x)

    @property
    def name(self) -> str:
        return self.path.name

    def _run(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"

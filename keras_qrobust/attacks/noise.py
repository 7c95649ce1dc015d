"""Random-noise baselines: what accuracy loss does *non*-adversarial noise of the same size cause?

``uniform``: ``x' = clip(x + u)``, ``u ~ U[-ε, ε]`` per pixel (a uniform sample of the L∞
ball of radius ε); ``gaussian``: ``x' = clip(x + n)``, ``n ~ N(0, ε²)`` per pixel. A gradient attack
that hurts no more than this noise is not finding adversarial directions.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from ._common import as_attack_model, check_array, check_eps, check_inputs

__all__ = ["noise", "NOISE_KINDS"]

NOISE_KINDS = ("uniform", "gaussian")


def noise(x, *, eps: float, kind: str = "uniform", clip: Optional[Sequence[float]] = (0.0, 1.0),
          seed: Optional[int] = None, model=None) -> np.ndarray:
    """``x`` plus random noise of size ``eps``, clipped to the box.

    ``kind="uniform"``: each pixel moves by ``U[-eps, eps]``; ``kind="gaussian"``: by
    ``N(0, eps²)`` (standard deviation ``eps``). The same ``seed`` gives the same noise.
    ``model`` is only used to check that ``x`` is shaped like its input, so ``noise`` can be
    called like the other attacks.
    """
    eps = check_eps(eps)
    if kind not in NOISE_KINDS:
        raise ValueError(f"kind must be one of {NOISE_KINDS}, got {kind!r}")
    if model is not None:
        x, _ = check_inputs(as_attack_model(model), x, None, clip)
    else:
        x = check_array(x, clip)
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        delta = rng.uniform(-eps, eps, size=x.shape)
    else:
        delta = rng.normal(0.0, eps, size=x.shape)
    out = x + delta.astype(np.float32)
    if clip is not None:
        out = np.clip(out, clip[0], clip[1])
    return out.astype(np.float32, copy=False)

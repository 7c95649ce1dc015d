"""Predictions and accuracy of classifiers (logits or probabilities out)."""

from __future__ import annotations

import numpy as np

from ._keras import check_model

__all__ = ["predict_labels", "accuracy", "wilson_interval"]


def predict_labels(model, x, batch_size: int = 512) -> np.ndarray:
    """Predicted class per input; a single-output model is read as a binary logit (> 0).

    ``model``: a tf_keras model or an exported artifact loaded with ``export.load``.
    """
    from .export.runtime import DeployedModel

    if not isinstance(model, DeployedModel):  # exported artifacts predict like Keras models
        model = check_model(model)
    outputs = model.predict(np.asarray(x, np.float32), batch_size=batch_size, verbose=0)
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return (outputs[:, 0] > 0).astype(np.int64)
    return outputs.argmax(axis=-1).astype(np.int64)


def accuracy(model, x, y, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in [0, 1]."""
    y = np.asarray(y).reshape(-1)
    if len(y) != len(x):
        raise ValueError(f"x has {len(x)} inputs but y has {len(y)} labels")
    return float(np.mean(predict_labels(model, x, batch_size) == y))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) for a binomial proportion ``successes / n``:

        (p̂ + z²/2n ± z·√(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n),

    ``z`` the two-sided normal quantile of ``confidence``. Unlike the normal approximation it
    stays inside [0, 1] and is not degenerate at 0 % or 100 %.
    """
    from statistics import NormalDist

    successes, n = int(successes), int(n)
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n >= 1, got {successes} of {n}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))

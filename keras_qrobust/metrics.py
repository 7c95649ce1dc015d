"""Predictions and accuracy of classifiers (logits or probabilities out)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ._keras import check_model

__all__ = ["predict_labels", "accuracy", "wilson_interval"]


def predict_labels(model, x, batch_size: int = 512) -> np.ndarray:
    """Predicted class per input; a single-output model is read as a binary logit (> 0).

    ``model``: a tf_keras model or an exported artifact loaded with ``export.load``.
    """
    return _labels_of(_scores(model, x, batch_size))


def accuracy(model, x, y, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)`` in [0, 1].

    ``y``: one integer class label per input, each in ``[0, classes)`` where ``classes`` is
    the model's output width (2 for a single binary output). Anything else — one-hot rows,
    fractional or non-finite labels, a label the model cannot output — is refused, since it
    would silently count as a wrong prediction.
    """
    labels = check_labels(y, len(x))  # before predicting; the class range once the output width is known
    scores = _scores(model, x, batch_size)
    check_labels(labels, len(labels), 2 if scores.shape[-1] == 1 else scores.shape[-1])
    return float(np.mean(_labels_of(scores) == labels))


def check_labels(y, n: int, classes: Optional[int] = None, model: Optional[str] = None) -> np.ndarray:
    """``y`` as one int64 class label per input (``n`` inputs), each in ``[0, classes)`` when
    ``classes`` is given, or a one-line ``ValueError`` naming the problem and the fix.

    The one label validation: attacks (``attacks._common.check_inputs``) use it too, with
    ``model`` (a model name) said in the out-of-range message.
    """
    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[1] > 1:
        raise ValueError("y must be integer class labels, not one-hot rows: pass y.argmax(-1)")
    labels = labels.reshape(-1)
    if len(labels) != n:
        raise ValueError(f"x has {n} inputs but y has {len(labels)} labels")
    if n == 0:
        raise ValueError("x and y are empty: pass at least one input")
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.bool_)):
        if not np.issubdtype(labels.dtype, np.number):
            raise ValueError(f"y must hold integer class labels, got dtype {labels.dtype}")
        if not np.all(np.isfinite(labels)):
            raise ValueError("y holds NaN or infinite labels: drop those inputs or fix the labels")
        if not np.all(np.mod(labels, 1) == 0):
            raise ValueError("y holds fractional labels: pass integer class indices (e.g. y.argmax(-1) for one-hot)")
    labels = labels.astype(np.int64)
    if classes is not None and (labels.min() < 0 or labels.max() >= classes):
        owner = f"model '{model}'" if model else f"a model with {classes} classes"
        raise ValueError(f"labels must be in [0, {classes}) for {owner}, got values in [{labels.min()}, "
                         f"{labels.max()}]: pass the labels of the data the model was trained for")
    return labels


def _scores(model, x, batch_size: int) -> np.ndarray:
    from .export.runtime import DeployedModel

    if not isinstance(model, DeployedModel):  # exported artifacts predict like Keras models
        model = check_model(model)
    x = np.asarray(x, np.float32)
    if x.size and not np.all(np.isfinite(x)):
        raise ValueError("x holds NaN or infinite values: clean the inputs before scoring them")
    return np.asarray(model.predict(x, batch_size=batch_size, verbose=0))


def _labels_of(outputs: np.ndarray) -> np.ndarray:
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return (outputs[:, 0] > 0).astype(np.int64)
    return outputs.argmax(axis=-1).astype(np.int64)


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

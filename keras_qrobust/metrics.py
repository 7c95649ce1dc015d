"""Predictions and accuracy of classifiers (logits or probabilities out)."""

from __future__ import annotations

import numpy as np

from ._keras import check_model

__all__ = ["predict_labels", "accuracy"]


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

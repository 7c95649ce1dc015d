"""Standard (non-adversarial) training of classifiers: the baseline the defenses are compared
with, and the compile step an :class:`~keras_qrobust.defenses.AdversarialModel` shares."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .._keras import check_model, keras, tf
from .adversarial_model import classifier_of

__all__ = ["compile_classifier", "train_classifier", "set_seed"]


def set_seed(seed: int, deterministic_ops: bool = False) -> None:
    """Seed Python, NumPy and TensorFlow. Call it before building a model: weights are
    drawn when a layer is built. ``deterministic_ops`` also makes TensorFlow kernels
    deterministic (same results run to run on a CPU, somewhat slower)."""
    keras.utils.set_random_seed(seed)
    if deterministic_ops:
        tf.config.experimental.enable_op_determinism()


def compile_classifier(model, learning_rate: float = 1e-3, ema_momentum: Optional[float] = None):
    """Compile with Adam and cross-entropy on logits (binary for a single output).

    ``ema_momentum``: keep an exponential moving average of the weights,
    ``w̄ ← m·w̄ + (1 − m)·w`` after every step (Polyak averaging; for adversarial training
    Gowal et al. 2020 §4.4), which ``fit`` writes into the model when it ends.
    """
    model = check_model(model)
    if classifier_of(model).output_shape[-1] == 1:
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        metrics = [keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")]
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        metrics = ["accuracy"]
    if ema_momentum is not None and not 0.0 < float(ema_momentum) < 1.0:
        raise ValueError(f"ema_momentum must be in (0, 1) (e.g. 0.999), got {ema_momentum!r}")
    optimizer = keras.optimizers.Adam(learning_rate) if ema_momentum is None else keras.optimizers.Adam(
        learning_rate, use_ema=True, ema_momentum=float(ema_momentum))
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return model


def train_classifier(model, x, y, epochs: int = 3, batch_size: int = 128, seed: Optional[int] = 0,
                     validation_split: float = 0.0, learning_rate: float = 1e-3, verbose: int = 0,
                     callbacks=None, ema_momentum: Optional[float] = None):
    """Compile (if needed) and fit ``model`` on ``(x, y)``; returns the Keras History.

    ``seed`` fixes the shuffling and dropout of this fit; the initial weights were fixed
    (or not) when the model was built — see :func:`set_seed`. ``ema_momentum``: train with
    weight averaging (see :func:`compile_classifier`; used when this call compiles).
    """
    if seed is not None:
        keras.utils.set_random_seed(seed)
    if model.optimizer is None:
        compile_classifier(model, learning_rate, ema_momentum)
    return model.fit(
        np.asarray(x, np.float32), np.asarray(y), epochs=epochs, batch_size=batch_size,
        validation_split=validation_split, verbose=verbose, shuffle=True, callbacks=callbacks,
    )

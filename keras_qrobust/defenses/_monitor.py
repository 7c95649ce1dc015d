"""The base of the callbacks that measure at the end of epochs and log into ``logs``
(how the values reach History, CSVLogger and TensorBoard: :mod:`keras_qrobust.defenses.callbacks`)."""

from __future__ import annotations

import math

from .._keras import keras
from ..attacks._common import check_count

__all__ = ["EpochMonitor"]


class EpochMonitor(keras.callbacks.Callback):
    """Measure at the end of epochs ``every``, ``2·every``, ... (1-based) and write the
    values into ``logs``; the other epochs get NaN for the same keys.

    Subclasses set ``self._keys`` in ``on_train_begin`` and implement ``_measure(epoch)``.
    ``measurements`` keeps ``(epoch, values)`` of every measured epoch.
    """

    def __init__(self, every: int = 1):
        super().__init__()
        self.every = check_count(every, "every")
        self._keys: list = []
        self.measurements: list = []

    def _due(self, epoch: int) -> bool:
        return (epoch + 1) % self.every == 0

    def _measure(self, epoch: int) -> dict:
        raise NotImplementedError

    def on_train_begin(self, logs=None):
        self.measurements = []

    def on_epoch_end(self, epoch, logs=None):
        values = {}
        if self._due(epoch):
            values = self._measure(epoch)
            self.measurements.append((epoch, values))
        if logs is not None:
            for key in self._keys:
                logs[key] = values.get(key, math.nan)

"""Deprecated: moved to :mod:`keras_qrobust.defenses.callbacks`; kept for one release."""

import warnings

from .defenses.callbacks import FeedbackLearning, LipschitzMonitor, UAPMonitor

warnings.warn("keras_qrobust.callbacks is deprecated; import from keras_qrobust.defenses.callbacks",
              DeprecationWarning, stacklevel=2)

__all__ = ["FeedbackLearning", "UAPMonitor", "LipschitzMonitor"]

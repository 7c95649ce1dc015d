"""Deprecated: moved to :mod:`keras_qrobust.defenses.standard`; kept for one release."""

import warnings

from ..defenses.standard import compile_classifier, set_seed, train_classifier

warnings.warn("keras_qrobust.training.standard is deprecated; import from keras_qrobust.defenses.standard",
              DeprecationWarning, stacklevel=2)

__all__ = ["compile_classifier", "train_classifier", "set_seed"]

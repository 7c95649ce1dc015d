"""Deprecated: moved to :mod:`keras_qrobust.defenses.regularizers`; kept for one release."""

import warnings

from .defenses.regularizers import DEFAULT_BETA, OrthogonalityRegularizer, check_beta, kernel_matrix

warnings.warn("keras_qrobust.regularizers is deprecated; import from keras_qrobust.defenses.regularizers",
              DeprecationWarning, stacklevel=2)

__all__ = ["OrthogonalityRegularizer", "kernel_matrix", "DEFAULT_BETA", "check_beta"]

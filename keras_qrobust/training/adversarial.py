"""Deprecated: moved to :mod:`keras_qrobust.defenses.adversarial_model`; kept for one release."""

import warnings

from ..defenses.adversarial_model import ATTACKS, AdversarialModel

warnings.warn("keras_qrobust.training.adversarial is deprecated; import from keras_qrobust.defenses.adversarial_model",
              DeprecationWarning, stacklevel=2)

__all__ = ["AdversarialModel", "ATTACKS"]

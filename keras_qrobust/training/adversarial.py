"""Deprecated: moved to :mod:`keras_qrobust.defenses.adversarial_model` (this path works for one release)."""

from .._deprecated import alias
from ..defenses import adversarial_model as _new

alias(__spec__.name, _new)

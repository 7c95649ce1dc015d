"""Deprecated: moved to :mod:`keras_qrobust.quantization.calibration` (this path works for one release)."""

from ._deprecated import alias
from .quantization import calibration as _new

alias(__spec__.name, _new)

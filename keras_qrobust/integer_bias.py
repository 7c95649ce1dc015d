"""Deprecated: moved to :mod:`keras_qrobust.quantization.integer_bias` (this path works for one release)."""

from ._deprecated import alias
from .quantization import integer_bias as _new

alias(__spec__.name, _new)

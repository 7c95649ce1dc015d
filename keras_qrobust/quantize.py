"""Deprecated: moved to :mod:`keras_qrobust.quantization.robust_quantizer` (this path works for one release)."""

from ._deprecated import alias
from .quantization import robust_quantizer as _new

alias(__spec__.name, _new)

"""Deprecated: moved to :mod:`keras_qrobust.quantization.tfmot_scheme` (this path works for one release)."""

from ._deprecated import alias
from .quantization import tfmot_scheme as _new

alias(__spec__.name, _new)

"""Deprecated: moved to :mod:`keras_qrobust.analysis.bit_width_search` (this path works for one release)."""

from ._deprecated import alias
from .analysis import bit_width_search as _new

alias(__spec__.name, _new)

"""Deprecated: moved to :mod:`keras_qrobust.analysis.layerwise` (this path works for one release)."""

from ._deprecated import alias
from .analysis import layerwise as _new

alias(__spec__.name, _new)

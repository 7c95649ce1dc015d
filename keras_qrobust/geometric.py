"""Deprecated: moved to :mod:`keras_qrobust.analysis.geometric` (this path works for one release)."""

from ._deprecated import alias
from .analysis import geometric as _new

alias(__spec__.name, _new)

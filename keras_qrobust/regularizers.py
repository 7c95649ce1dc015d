"""Deprecated: moved to :mod:`keras_qrobust.layers.regularizers` (this path works for one release)."""

from ._deprecated import alias
from .layers import regularizers as _new

alias(__spec__.name, _new)

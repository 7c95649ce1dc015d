"""Deprecated: moved to :mod:`keras_qrobust.defenses.standard` (this path works for one release)."""

from .._deprecated import alias
from ..defenses import standard as _new

alias(__spec__.name, _new)

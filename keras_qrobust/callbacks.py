"""Deprecated: moved to :mod:`keras_qrobust.defenses.callbacks` (this path works for one release)."""

from ._deprecated import alias
from .defenses import callbacks as _new

alias(__spec__.name, _new)

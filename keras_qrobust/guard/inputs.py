"""Deprecated: moved to :mod:`keras_qrobust.inputs` (this path works for one release)."""

from .._deprecated import alias
from .. import inputs as _new

alias(__spec__.name, _new)

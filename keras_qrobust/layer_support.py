"""Deprecated: moved to :mod:`keras_qrobust.quantization.layer_support` (this path works for one release)."""

from ._deprecated import alias
from .quantization import layer_support as _new

alias(__spec__.name, _new)

if __name__ == "__main__":  # python -m keras_qrobust.layer_support, the old command
    raise SystemExit(_new.main())

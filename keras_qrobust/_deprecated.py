"""Old import paths kept for one release: each shim module replaces itself by the module that
now holds its code, after a ``DeprecationWarning`` naming the new path."""

from __future__ import annotations

import sys
import warnings
from types import ModuleType

__all__ = ["MOVED", "alias", "moved_module"]

#: old module (under keras_qrobust) -> the module it moved to
MOVED = {
    "quantize": "quantization.robust_quantizer",
    "calibration": "quantization.calibration",
    "configs": "quantization.tfmot_scheme",
    "integer_bias": "quantization.integer_bias",
    "layer_support": "quantization.layer_support",
    "geometric": "analysis.geometric",
    "layerwise": "analysis.layerwise",
    "search": "analysis.bit_width_search",
}


def _warn(old: str, new: str, stacklevel: int) -> None:
    warnings.warn(f"keras_qrobust.{old} is deprecated and will be removed in the next release; "
                  f"import from keras_qrobust.{new}", DeprecationWarning, stacklevel=stacklevel)


def alias(shim_name: str, module: ModuleType) -> None:
    """Called by a shim module: warn, then make ``import keras_qrobust.<old>`` return ``module``
    itself (so private names and monkeypatching reach the real module)."""
    old = shim_name.rsplit(".", 1)[-1]
    _warn(old, module.__name__.removeprefix("keras_qrobust."), stacklevel=4)
    sys.modules[shim_name] = module


def moved_module(old: str) -> ModuleType | None:
    """For the package's ``__getattr__``: the moved module ``keras_qrobust.<old>`` stands for."""
    new = MOVED.get(old)
    if new is None:
        return None
    _warn(old, new, stacklevel=4)
    import importlib

    return importlib.import_module(f"keras_qrobust.{new}")

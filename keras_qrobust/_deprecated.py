"""Old import paths kept for one release: each shim module replaces itself by the module that
now holds its code, after a ``DeprecationWarning`` naming the new path."""

from __future__ import annotations

import sys
import warnings
from types import ModuleType

__all__ = ["MOVED", "alias", "moved_module", "warn_moved"]

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
    "regularizers": "layers.regularizers",
    "callbacks": "defenses.callbacks",
    "training": "defenses",  # a package of shims (adversarial, feedback, standard), each warning on its own
    "training.adversarial": "defenses.adversarial_model",
    "training.feedback": "defenses.feedback",
    "training.standard": "defenses.standard",
    "guard.inputs": "inputs",
}


def warn_moved(old: str, new: str, stacklevel: int = 3) -> None:
    warnings.warn(f"keras_qrobust.{old} is deprecated and will be removed in the next release; "
                  f"import from keras_qrobust.{new}", DeprecationWarning, stacklevel=stacklevel)


def alias(shim_name: str, module: ModuleType) -> None:
    """Called by a shim module: warn, then make ``import keras_qrobust.<old>`` return ``module``
    itself (so private names and monkeypatching reach the real module)."""
    old = shim_name.removeprefix("keras_qrobust.")
    warn_moved(old, module.__name__.removeprefix("keras_qrobust."), stacklevel=4)
    sys.modules[shim_name] = module


def moved_module(old: str) -> ModuleType | None:
    """For the package's ``__getattr__``: the moved module ``keras_qrobust.<old>`` stands for."""
    if old not in MOVED or "." in old:
        return None
    import importlib

    sys.modules.pop(f"keras_qrobust.{old}", None)  # imported again, so its shim warns again
    return importlib.import_module(f"keras_qrobust.{old}")

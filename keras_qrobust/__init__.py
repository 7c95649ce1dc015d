"""keras_qrobust: quantize Keras models for edge devices, attack them, make them robust, prove it.

This module only re-exports the public API.
"""

from ._keras import keras, tf  # noqa: F401  (first: sets TF_USE_LEGACY_KERAS before TensorFlow loads)

from . import (  # noqa: E402
    analysis,
    attacks,
    bench,
    datasets,
    defenses,
    export,
    layers,
    metrics,
    model_files,
    paired,
    quantization,
    quantizers,
    report,
    transforms,
    zoo,
)
from ._deprecated import moved_module  # noqa: E402
from .analysis import quantization_lipschitz, wxay_grid  # noqa: E402
from .quantization import (  # noqa: E402
    RobustQuantizer,
    WXAYQuantizeConfig,
    WXAYScheme,
    WXScheme,
    calibrate_tfmot,
    parse_setting,
    setting_name,
)
from .evaluate import evaluate  # noqa: E402
from .model_files import load_model  # noqa: E402
from .transforms import apply_mu_law  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = [
    "keras",
    "tf",
    "analysis",
    "attacks",
    "bench",
    "calibrate_tfmot",
    "datasets",
    "defenses",
    "export",
    "layers",
    "metrics",
    "model_files",
    "paired",
    "quantization",
    "quantizers",
    "report",
    "transforms",
    "zoo",
    "RobustQuantizer",
    "apply_mu_law",
    "quantization_lipschitz",
    "WXAYQuantizeConfig",
    "WXAYScheme",
    "WXScheme",
    "parse_setting",
    "setting_name",
    "wxay_grid",
    "evaluate",
    "load_model",
    "__version__",
]


def __getattr__(name: str):
    # kq.calibration, kq.training, kq.search, ...: modules that moved, with a DeprecationWarning
    module = moved_module(name)
    if module is None:
        raise AttributeError(f"module 'keras_qrobust' has no attribute {name!r}")
    return module

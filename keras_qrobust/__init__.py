"""keras_qrobust: quantize Keras models for edge devices, attack them, make them robust, prove it.

This module only re-exports the public API.
"""

from ._keras import keras, tf  # noqa: F401  (first: sets TF_USE_LEGACY_KERAS before TensorFlow loads)

from . import (  # noqa: E402
    analysis,
    attacks,
    callbacks,
    calibration,
    configs,
    datasets,
    export,
    integer_bias,
    layers,
    layerwise,
    metrics,
    model_files,
    quantizers,
    regularizers,
    report,
    search,
    training,
    transforms,
    zoo,
)
from .analysis import quantization_lipschitz  # noqa: E402
from .calibration import calibrate_tfmot  # noqa: E402
from .configs import WXAYQuantizeConfig, WXAYScheme, WXScheme  # noqa: E402
from .quantize import RobustQuantizer, parse_setting, setting_name  # noqa: E402
from .search import wxay_grid  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .model_files import load_model  # noqa: E402
from .transforms import apply_mu_law  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = [
    "keras",
    "tf",
    "analysis",
    "attacks",
    "callbacks",
    "calibration",
    "calibrate_tfmot",
    "configs",
    "datasets",
    "export",
    "integer_bias",
    "layers",
    "layerwise",
    "metrics",
    "model_files",
    "quantizers",
    "regularizers",
    "report",
    "search",
    "training",
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

"""Quantizing a model: the CNN2SNN-style post-training flow and the tfmot scheme for QAT.

* :mod:`.robust_quantizer` — :class:`RobustQuantizer`, wXaY post-training quantization
  (fold BatchNorm, per-axis weights, calibrated activations, input-layer bits, μ-law);
* :mod:`.calibration` — the ranges of activations and tensors from calibration samples;
* :mod:`.integer_bias` — the int32 bias grid of int8 deployment, applied in the Keras model;
* :mod:`.grid_kernels` — kernels stored as their grid values (same function, compressible file);
* :mod:`.tfmot_scheme` — the same quantizers as a tfmot ``QuantizeConfig``/``Scheme`` for QAT;
* :mod:`.layer_support` — which layers are accepted and what each becomes (the docs' table).

The quantizers themselves and their integer grids are one level down, in
:mod:`keras_qrobust.quantizers`; the fake-quant layers in :mod:`keras_qrobust.layers`.
"""

from ..quantizers.grid import parse_setting, setting_name
from .calibration import CALIBRATIONS, calibrate, calibrate_tfmot, observed_ranges
from .grid_kernels import grid_valued_kernels
from .robust_quantizer import RobustQuantizer, round_inputs_half_even
from .tfmot_scheme import WXAYQuantizeConfig, WXAYScheme, WXScheme

__all__ = [
    "RobustQuantizer",
    "round_inputs_half_even",
    "parse_setting",
    "setting_name",
    "CALIBRATIONS",
    "calibrate",
    "calibrate_tfmot",
    "observed_ranges",
    "grid_valued_kernels",
    "WXAYQuantizeConfig",
    "WXAYScheme",
    "WXScheme",
]

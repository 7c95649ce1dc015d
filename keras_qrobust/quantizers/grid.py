"""The integer grids every quantizer, calibration step and exporter shares: bit widths,
level counts, steps ``Δ``, the int8 code multipliers of sub-8-bit weights, the 8-bit ranges
of int8 tensors and the ``wXaY`` setting names. This is the only place they are computed.

* activations on ``b`` bits: ``2^b - 1`` levels above zero, ``Δa = max/(2^b - 1)``;
* symmetric weights on ``b`` bits: codes in ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (``±1`` for
  ``b = 1``), ``Δw = s/(2^(b-1) - 1)`` with ``s = max|W|``;
* a ``b``-bit weight code ``k`` is stored in int8 as ``k·m`` with
  ``m = ⌊127/(2^(b-1) - 1)⌋`` (so the int8 kernel computes the same products, scaled by ``m``);
* an int8 tensor's range is nudged so 0 is exactly one of its 256 levels.
"""

from __future__ import annotations

import numbers
import re
from typing import Any, Optional

import numpy as np

__all__ = [
    "MIN_BITS",
    "MAX_BITS",
    "check_bits",
    "activation_levels",
    "activation_step",
    "weight_levels",
    "int8_code_multiplier",
    "nudged_range",
    "score_range",
    "setting_name",
    "parse_setting",
]

MIN_BITS, MAX_BITS = 1, 16


def check_bits(bits: Any, name: str = "bits") -> int:
    """Validate a bit width (an int in [1, 16]) and return it."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"{name} must be an int in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    bits = int(bits)
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{name} must be in [{MIN_BITS}, {MAX_BITS}], got {bits}")
    return bits



def activation_levels(bits: int) -> int:
    """Levels above zero of an unsigned ``bits``-bit activation grid: ``2^b - 1``."""
    return 2**bits - 1


def activation_step(max_value: float, bits: int) -> float:
    """Step ``Δa = max/(2^b - 1)`` of the unsigned activation grid on ``[0, max]``."""
    return float(max_value) / activation_levels(bits)


def weight_levels(bits: int) -> int:
    """Largest code of a symmetric ``bits``-bit weight grid: ``2^(b-1) - 1`` (1 for binary)."""
    return max(2 ** (bits - 1) - 1, 1)


def int8_code_multiplier(bits: int) -> int:
    """``m = ⌊127/(2^(b-1) - 1)⌋``: a ``bits``-bit weight code ``k`` is stored in int8 as ``k·m``
    (1 for ``b ≥ 8``: wider codes are not multiplied)."""
    if bits > 8:
        return 1
    return 127 // weight_levels(bits)


def nudged_range(low: float, high: float) -> tuple[float, float]:
    """Widen ``[low, high]`` to contain 0 and nudge it so 0 is exactly one of 256 levels.

    TensorFlow's fake quant, the TFLite converter and tf2onnx then agree on the scale
    ``(high - low)/255`` and the integer zero point.
    """
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    if high - low < 1e-8:
        high = low + 1e-3
    scale = (high - low) / 255
    zero_point = round(-low / scale)
    return -zero_point * scale, (255 - zero_point) * scale


def score_range(low: float, high: float, lowest_top: float | None) -> tuple[float, float]:
    """The int8 range of class scores ``[low, high]``.

    Only the top scores decide the class, so the range starts below the lowest top score
    seen (``lowest_top``, with a margin of half its distance to ``high``) rather than at the
    lowest score: the 256 levels then resolve near-tied top scores about twice as finely.
    """
    if lowest_top is not None and np.isfinite(lowest_top):
        low = max(low, lowest_top - 0.5 * (high - lowest_top))
    return nudged_range(low, high)


_SETTING = re.compile(r"^(?:w(\d+))?(?:a(\d+))?$")


def setting_name(weight_bits: Optional[int], activation_bits: Optional[int]) -> str:
    """``w4a4``, ``w3`` (weight-only) or ``a8`` (activation-only); ``fp32`` for neither."""
    name = (f"w{weight_bits}" if weight_bits else "") + (f"a{activation_bits}" if activation_bits else "")
    return name or "fp32"


def parse_setting(setting: str) -> tuple[Optional[int], Optional[int]]:
    """``"w4a4" -> (4, 4)``, ``"w3" -> (3, None)``, ``"a8" -> (None, 8)``."""
    match = _SETTING.match(setting.strip().lower())
    if not setting.strip() or match is None:
        raise ValueError(
            f"Cannot parse quantization setting {setting!r}: write it as wXaY (e.g. 'w4a4'), "
            "wX for weight-only (e.g. 'w3') or aY for activation-only."
        )
    weight, activation = (int(g) if g else None for g in match.groups())
    return weight, activation

"""The integer arithmetic of an int8 TFLite file, as the converter and XNNPACK compute it.

Quantization parameters (the TFLite converter, ``fakeQuantAttrsToType``): an 8-bit fake
quant on ``[lo, hi]`` (float32 values) becomes the grid

    s = (hi − lo)/(q_max − q_min)   in double, stored as float32,
    z = round(q_min − lo/s)          (clamped to [q_min, q_max]),

with ``[q_min, q_max] = [−128, 127]``, or ``[−127, 127]`` and ``z = 0`` for a narrow-range
(weight) fake quant. A bias is stored as int32 codes ``round(b/(s_in·s_w))`` with the scales
in double.

Requantization (XNNPACK, the default delegate of LiteRT; ``src/qs8-gemm``, ``qs8-dwconv``,
``qs8-vmul`` with fp32 requantization, ``qs8-vadd``):

* convolution, depthwise convolution, fully connected — integer sums ``acc = Σ (x − z_x)·k + b``
  (int32, wrapping around),
  then ``y = round_half_even(float32(acc) · M) + z_y`` with the float32 multiplier
  ``M = float32(float32(s_x·s_w)/s_y)``, clamped to ``[−128, 127]``;
* multiplication — ``acc = (a − z_a)(b − z_b)``, ``M = float32(float32(s_a·s_b)/s_y)``, as above;
* addition — fixed point: ``m_a = rint(float32(s_a/s_y)·2^shift)`` and likewise ``m_b``, with
  ``shift = 20 − e`` for ``e`` the binary exponent of the larger ratio, and
  ``y = ⌊((a − z_a)·m_a + (b − z_b)·m_b + 2^(shift−1)) / 2^shift⌋ + z_y``.

ONNX Runtime (CPU execution provider, x86-64 with AVX2; the QDQ file's codes stored as uint8,
``Z = z + 128``, by :mod:`~keras_qrobust.export.onnx_unsigned`) fuses the same groups into
``QLinearConv`` (the convolution formula above), ``QLinearMul`` and ``QLinearAdd``, whose MLAS
kernels requantize in float32 on the uint8 codes ``A = a + 128``:

* multiplication (``qlmul.cpp``, SSE2) — ``y = round_half_even(float32(float32(acc·M) + Z_y))``;
* addition (``qladd_avx2.cpp``) — ``r_a = float32(s_a/s_y)``, ``r_b = float32(s_b/s_y)``,
  ``F = float32(Z_y − fma(r_a, Z_a, float32(r_b·Z_b)))``, then two fused
  multiply-adds ``t = fma(B, r_b, F)``, ``y = round_half_even(fma(A, r_a, t))``, saturated to
  [0, 255].

These are what make a Keras twin exact: a float model that sums float products and rounds
the float result parts from them near half a level (see :mod:`keras_qrobust.export.layer_diff`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._keras import tf

__all__ = ["Int8Grid", "fake_quant_grid", "kernel_scales", "bias_codes", "fp32_multiplier", "add_multipliers",
           "onnxruntime_add_constants", "UINT8_OFFSET", "sums_fit_float32", "wrap_int32", "INT8_MIN", "INT8_MAX",
           "INT32_MIN", "INT32_MAX"]

INT8_MIN, INT8_MAX = -128, 127
#: uint8 code = int8 code + UINT8_OFFSET (the ONNX files' storage)
UINT8_OFFSET = 128
_FLOAT32_EXACT = 2 ** 24


@dataclass(frozen=True)
class Int8Grid:
    """The int8 grid of one tensor: ``value = (code − zero_point)·scale``.

    Attributes:
        scale: the float32 scale stored in the file (what the kernels compute with).
        scale_double: the converter's double scale (what it quantizes biases with).
        zero_point: the integer zero point.
    """

    scale: np.float32
    scale_double: float
    zero_point: int


def _round_half_away(value: float) -> int:
    return int(math.floor(value + 0.5)) if value >= 0 else -int(math.floor(-value + 0.5))


def fake_quant_grid(low: float, high: float, *, narrow_range: bool = False) -> Int8Grid:
    """The grid the TFLite converter gives an 8-bit fake quant on ``[low, high]`` (float32)."""
    q_min = INT8_MIN + 1 if narrow_range else INT8_MIN
    low, high = float(np.float32(low)), float(np.float32(high))
    scale = (high - low) / (INT8_MAX - q_min)
    if scale <= 0:
        raise ValueError(f"an int8 grid needs high > low, got [{low}, {high}]")
    zero_point = 0 if narrow_range else min(INT8_MAX, max(q_min, _round_half_away(q_min - low / scale)))
    return Int8Grid(np.float32(scale), scale, zero_point)


def kernel_scales(step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (float32, double) scales of a kernel fake-quantized on ``[−127Δ, 127Δ]``.

    ``step`` is ``Δ`` per output channel; the fake quant's limits are float32 products.
    """
    limit = (np.asarray(step, np.float32) * np.float32(INT8_MAX)).astype(np.float32).astype(np.float64)
    double = 2 * limit / (INT8_MAX - (INT8_MIN + 1))
    return double.astype(np.float32), double


INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1


def bias_codes(bias: np.ndarray, input_grid: Int8Grid, weight_scale_double: np.ndarray) -> np.ndarray:
    """int32 bias codes ``round(b/(s_in·s_w))``, clamped to int32 as the converter stores them
    (float64 integers)."""
    codes = np.rint(np.asarray(bias, np.float64) / (input_grid.scale_double * weight_scale_double))
    return np.clip(codes, INT32_MIN, INT32_MAX)


def wrap_int32(values):
    """Integers (float64 tensor) reduced to int32 the way an int32 accumulator wraps around."""
    return tf.math.floormod(values - INT32_MIN, 2.0 ** 32) + INT32_MIN


def fp32_multiplier(product_scale: np.ndarray, output: Int8Grid) -> np.ndarray:
    """``float32(product/s_y)`` for a float32 ``product`` scale (``s_x·s_w`` or ``s_a·s_b``)."""
    return (np.asarray(product_scale, np.float32) / output.scale).astype(np.float32)


def add_multipliers(a: Int8Grid, b: Int8Grid, output: Int8Grid) -> tuple[int, int, int]:
    """XNNPACK's fixed-point ``(m_a, m_b, shift)`` for ``a + b`` requantized to ``output``."""
    ratios = [np.float32(grid.scale / output.scale) for grid in (a, b)]
    largest = max(abs(r) for r in ratios)
    exponent = int((np.array(largest, np.float32).view(np.uint32) >> 23) & 0xFF) - 127
    shift = 20 - exponent
    if not 12 <= shift <= 30:
        raise ValueError(f"an int8 ADD cannot rescale by {float(largest):g} (inputs' scales far from the output's)")
    # multiplying by 2^shift is exact in float32; rint rounds half to even as lrintf does
    multipliers = [int(np.rint(np.float64(r) * 2.0 ** shift)) for r in ratios]
    return multipliers[0], multipliers[1], shift


def onnxruntime_add_constants(a: Int8Grid, b: Int8Grid, output: Int8Grid) -> tuple[float, float, float]:
    """ONNX Runtime's float32 ``(r_a, r_b, F)`` for ``a + b`` on uint8 codes (module doc).

    ``F``'s ``r_a·Z_a + r_b·Z_b`` is C++ float arithmetic in MLAS, which the compiler of the
    onnxruntime wheel contracts into ``fma(r_a, Z_a, float32(r_b·Z_b))``: with the uncontracted
    sum a few outputs of one addition of keras.applications MobileNetV2 w4a4 move by a step and
    ``tests/test_export_exactness.py`` fails on that model. The file check of
    :func:`~keras_qrobust.export.integer_twin.integer_twin` reports a build that differs.
    """
    f32 = np.float32
    r_a, r_b = f32(a.scale / output.scale), f32(b.scale / output.scale)
    z_a, z_b, z_y = (f32(grid.zero_point + UINT8_OFFSET) for grid in (a, b, output))
    inner = f32(np.float64(r_a) * np.float64(z_a) + np.float64(f32(r_b * z_b)))  # one rounding: an fma
    fixed = f32(z_y - inner)
    return float(r_a), float(r_b), float(fixed)


def sums_fit_float32(codes_bound: float, kernel_codes: np.ndarray, bias: np.ndarray | None,
                     reduce_axes: tuple[int, ...]) -> bool:
    """True when every partial integer sum of a layer stays below 2^24 (exact in float32)."""
    weight_sum = np.sum(np.abs(kernel_codes), axis=reduce_axes)
    bound = codes_bound * weight_sum + (0 if bias is None else np.abs(bias))
    return bool(np.max(bound) < _FLOAT32_EXACT)

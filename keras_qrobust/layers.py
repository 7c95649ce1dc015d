"""Keras layers with fake-quantized kernels and activations, and the defense layers.

Each quantized layer is a mixin over the Keras layer it replaces, so it keeps that layer's
arguments, weights and behaviour; only the kernels it reads in ``call`` (and, for
:class:`QuantizedReLU`, its output) go through a :mod:`keras_qrobust.quantizers` quantizer.
The defense layers — :class:`LipschitzDense`, :class:`LipschitzConv2D` (orthogonality
penalty, optional spectral normalization) and :class:`MuLawDense` (μ-law weights) — are
drop-in subclasses of Dense / Conv2D. All layers are registered, so
``keras.models.load_model`` needs no ``custom_objects``.
"""

from __future__ import annotations

import contextlib
import math

from . import quantizers as quantizers_mod
from ._keras import keras, register, tf
from .defenses.regularizers import DEFAULT_BETA, OrthogonalityRegularizer, check_beta, kernel_matrix

__all__ = [
    "QuantizedDense",
    "QuantizedConv2D",
    "QuantizedDepthwiseConv2D",
    "QuantizedSeparableConv2D",
    "QuantizedReLU",
    "TensorQuantizer",
    "HardSigmoid",
    "QUANTIZED_LAYERS",
    "LipschitzDense",
    "LipschitzConv2D",
    "MuLawDense",
]


class QuantizedKernelsMixin:
    """Fake-quantize the kernel attributes named in ``kernel_quantizer_args`` on every call.

    ``kernel_quantizer_args`` maps each kernel attribute of the Keras layer (``kernel``,
    ``depthwise_kernel``, ...) to the constructor argument holding its quantizer. During
    ``call`` the attribute is swapped for its quantized value and the Keras layer's own
    ``call`` runs unchanged — the way tfmot's ``QuantizeConfig.set_quantize_weights`` works.
    """

    kernel_quantizer_args: dict[str, str] = {}

    def _set_quantizers(self, quantizers: dict) -> None:
        self._kernel_quantizers = {
            attr: quantizers_mod.get(quantizers.get(arg))
            for attr, arg in self.kernel_quantizer_args.items()
        }

    def build(self, input_shape):
        super().build(input_shape)
        self._quantizer_weights = {
            attr: (q.build(getattr(self, attr).shape, attr, self) if q is not None else {})
            for attr, q in self._kernel_quantizers.items()
        }

    def quantized_kernels(self, training=False) -> dict:
        """Kernel attribute -> the tensor ``call`` uses (quantized where a quantizer is set)."""
        out = {}
        for attr, quantizer in self._kernel_quantizers.items():
            kernel = getattr(self, attr)
            if quantizer is not None:
                kernel = quantizer(kernel, training, self._quantizer_weights[attr])
            out[attr] = kernel
        return out

    @contextlib.contextmanager
    def _kernels_replaced(self, replacement: dict):
        originals = {attr: getattr(self, attr) for attr in replacement}
        try:
            for attr, value in replacement.items():
                # object.__setattr__ skips Keras attribute tracking: the variable stays the
                # tracked weight, the tensor is only what this call reads.
                object.__setattr__(self, attr, value)
            yield
        finally:
            for attr, value in originals.items():
                object.__setattr__(self, attr, value)

    def call(self, inputs, training=None):
        with self._kernels_replaced(self.quantized_kernels(training)):
            return super().call(inputs)

    @property
    def quantizers(self) -> dict:
        """Constructor argument -> quantizer (``None`` where the kernel stays float)."""
        return {
            arg: self._kernel_quantizers[attr] for attr, arg in self.kernel_quantizer_args.items()
        }

    def get_config(self):
        config = super().get_config()
        for arg, quantizer in self.quantizers.items():
            config[arg] = quantizers_mod.serialize(quantizer)
        return config


@register
class QuantizedDense(QuantizedKernelsMixin, keras.layers.Dense):
    """``keras.layers.Dense`` whose kernel is fake-quantized by ``kernel_quantizer``."""

    kernel_quantizer_args = {"kernel": "kernel_quantizer"}

    def __init__(self, units, kernel_quantizer=None, **kwargs):
        super().__init__(units, **kwargs)
        self._set_quantizers({"kernel_quantizer": kernel_quantizer})


@register
class QuantizedConv2D(QuantizedKernelsMixin, keras.layers.Conv2D):
    """``keras.layers.Conv2D`` whose kernel is fake-quantized by ``kernel_quantizer``."""

    kernel_quantizer_args = {"kernel": "kernel_quantizer"}

    def __init__(self, filters, kernel_size, kernel_quantizer=None, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        self._set_quantizers({"kernel_quantizer": kernel_quantizer})


@register
class QuantizedDepthwiseConv2D(QuantizedKernelsMixin, keras.layers.DepthwiseConv2D):
    """``keras.layers.DepthwiseConv2D`` with a fake-quantized ``depthwise_kernel``.

    Per-axis scales must be taken per output channel, i.e. over the last two kernel axes
    ``(in_channels, depth_multiplier)``: use ``axis=(-2, -1)`` in the quantizer.
    """

    kernel_quantizer_args = {"depthwise_kernel": "depthwise_quantizer"}

    def __init__(self, kernel_size, depthwise_quantizer=None, **kwargs):
        super().__init__(kernel_size, **kwargs)
        self._set_quantizers({"depthwise_quantizer": depthwise_quantizer})


@register
class QuantizedSeparableConv2D(QuantizedKernelsMixin, keras.layers.SeparableConv2D):
    """``keras.layers.SeparableConv2D`` with fake-quantized depthwise and pointwise kernels."""

    kernel_quantizer_args = {
        "depthwise_kernel": "depthwise_quantizer",
        "pointwise_kernel": "pointwise_quantizer",
    }

    def __init__(
        self, filters, kernel_size, depthwise_quantizer=None, pointwise_quantizer=None, **kwargs
    ):
        super().__init__(filters, kernel_size, **kwargs)
        self._set_quantizers(
            {"depthwise_quantizer": depthwise_quantizer, "pointwise_quantizer": pointwise_quantizer}
        )


@register
class QuantizedReLU(keras.layers.ReLU):
    """``keras.layers.ReLU`` followed by an unsigned activation quantizer.

    ``y = Q(relu(x))`` with ``Q`` an :class:`~keras_qrobust.quantizers.ActivationQuantizer`
    whose range ``[0, max]`` is this layer's non-trainable weight ``activation_max`` (set by
    calibration). Leaky or thresholded ReLUs are not unsigned and are rejected.
    """

    def __init__(self, activation_quantizer=None, max_value=None, **kwargs):
        if kwargs.get("negative_slope", 0.0) or kwargs.get("threshold", 0.0):
            raise ValueError(
                "QuantizedReLU quantizes a plain ReLU (negative_slope=0, threshold=0); "
                f"got negative_slope={kwargs.get('negative_slope')}, threshold={kwargs.get('threshold')}"
            )
        super().__init__(max_value=max_value, **kwargs)
        quantizer = quantizers_mod.get(activation_quantizer)
        if quantizer is None:
            raise ValueError("QuantizedReLU needs an activation_quantizer, e.g. ActivationQuantizer(4)")
        self.activation_quantizer = quantizer

    def build(self, input_shape):
        super().build(input_shape)
        self._quantizer_weights = self.activation_quantizer.build(input_shape, "activation", self)

    @property
    def activation_max(self) -> tf.Variable:
        """The calibrated upper end of the quantization range."""
        return self._quantizer_weights["max"]

    def set_range(self, max_value: float) -> None:
        """Set the calibrated range ``[0, max_value]`` and freeze it as initialised."""
        if not max_value > 0:
            raise ValueError(f"activation range must be > 0, got {max_value}")
        self._quantizer_weights["max"].assign(float(max_value))
        self._quantizer_weights["initialized"].assign(1.0)

    def call(self, inputs, training=None):
        return self.activation_quantizer(super().call(inputs), training, self._quantizer_weights)

    def get_config(self):
        config = super().get_config()
        config["activation_quantizer"] = quantizers_mod.serialize(self.activation_quantizer)
        return config


@register
class TensorQuantizer(keras.layers.Layer):
    """8-bit fake quantization of a tensor on a calibrated range ``[min, max]``.

    ``y = s·(clip(round(x/s) + z, -128, 127) - z)`` with ``s = (max - min)/255`` and the
    zero point ``z`` chosen so that 0 is exact (``fake_quant_with_min_max_vars``). It marks a
    point where the int8 model stores a tensor no QuantizedReLU quantizes — the model input,
    a weight layer's linear output, a sum, an average, a concatenation, a non-ReLU
    activation — so the Keras model rounds where the integer graph rounds, on the same
    grid. Gradients pass straight through (also outside the range): attacks see the slope of
    the float tensor.

    ``rounding``: ``"half_up"`` — TensorFlow's fake quant, ``⌊(x - min)/s + 1/2⌋``;
    ``"half_even"`` — ``z + round_half_even(x/s)`` with the division in float32, as
    onnxruntime's QuantizeLinear and :func:`keras_qrobust.export.runtime.load`'s files quantize
    a model input. The model input needs it: an attack's steps land exactly between two input
    levels (an image on 255 levels of [0, 1] plus ε = 0.1 is 25.5 levels away), where the two
    rules differ.
    """

    ROUNDINGS = ("half_up", "half_even")

    def __init__(self, rounding: str = "half_up", **kwargs):
        super().__init__(**kwargs)
        if rounding not in self.ROUNDINGS:
            raise ValueError(f"rounding must be one of {self.ROUNDINGS}, got {rounding!r}")
        self.rounding = rounding

    def get_config(self) -> dict:
        return {**super().get_config(), "rounding": self.rounding}

    def build(self, input_shape):
        self.min = self.add_weight(name="min", shape=(), initializer="zeros", trainable=False)
        self.max = self.add_weight(name="max", shape=(), initializer="ones", trainable=False)
        super().build(input_shape)

    @property
    def step(self) -> float:
        return float(self.max.numpy() - self.min.numpy()) / 255.0

    def set_range(self, low: float, high: float) -> None:
        low, high = quantizers_mod.nudged_range(low, high)
        self.min.assign(low)
        self.max.assign(high)

    def call(self, inputs):
        if self.rounding == "half_even":
            scale = (self.max - self.min) / 255.0
            zero = tf.round(-self.min / scale)
            codes = tf.clip_by_value(tf.round(inputs / scale) + zero, 0.0, 255.0)  # tf.round: half to even
            quantized = (codes - zero) * scale
        else:
            quantized = tf.quantization.fake_quant_with_min_max_vars(inputs, self.min, self.max, num_bits=8)
        return inputs + tf.stop_gradient(quantized - inputs)


@register
class HardSigmoid(keras.layers.Layer):
    """``h-sigmoid(x) = ReLU6(x + 3)/6 = clip(x/6 + b, 0, 1)``, ``b = 1/2`` (Howard et al.
    2019, MobileNetV3, Sec. 5.2).

    ``x·h-sigmoid(x)`` (a ``Multiply``) is h-swish. Keras' MobileNetV3 writes it with raw
    TensorFlow ops (``x + 3``, ``ReLU(6)``, ``* 1/6``), which
    :func:`~keras_qrobust.transforms.fold_hard_sigmoid` folds into this layer.

    The int8 graph computes it as a 1x1 depthwise convolution (weight 1/6, bias ``b``)
    whose output grid ``[0, w]`` clips it: one requantization, with ``b`` on the int32 grid
    ``Δx/(6·127)`` of its input step ``Δx``. Calibration rounds the non-trainable ``bias``
    onto that grid (:func:`~keras_qrobust.integer_bias.round_bias`) and chooses ``w ≤
    INT8_TOP`` so that no value of the int8 input grid lands near a tie
    (:func:`~keras_qrobust.calibration.hard_sigmoid_top`).
    """

    INT8_TOP = 1.0 - 1.0 / (1000.0 * math.sqrt(2.0))
    SLOPE = 1.0 / 6.0

    def build(self, input_shape):
        self.bias = self.add_weight(name="bias", shape=(), initializer=keras.initializers.Constant(0.5),
                                    trainable=False)
        super().build(input_shape)

    def call(self, inputs):
        return tf.clip_by_value(inputs * self.SLOPE + self.bias, 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape


@register
class OutputQuantizer(TensorQuantizer):
    """The :class:`TensorQuantizer` of a model's class scores.

    What a full-integer int8 model returns: its last layer writes int8 scores. Its range
    starts at the lowest top score seen in calibration
    (:func:`~keras_qrobust.quantizers.score_range`), so every argmax stays unclipped.
    """


#: Keras weight-layer class name -> its quantized twin
QUANTIZED_LAYERS = {
    "Dense": QuantizedDense,
    "Conv2D": QuantizedConv2D,
    "DepthwiseConv2D": QuantizedDepthwiseConv2D,
    "SeparableConv2D": QuantizedSeparableConv2D,
}


# ----------------------------------------------------------------------------- defenses
#
# Drop-in defended layers: the Lipschitz-regularized Dense/Conv2D of Defensive Quantization
# (Lin et al. 2019) and the μ-law Dense of Song et al. 2020 (definitions: DESIGN §3).

_SIGMA_EPS = 1e-12


def _power_step(w: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """One power iteration on ``WᵀW`` for the ``(fan_in, outputs)`` matrix ``w``.

    ``v = Wu/‖Wu‖``, ``u' = Wᵀv/‖Wᵀv‖`` (Miyato et al. 2018, Algorithm 1, with ``W`` transposed).
    """
    v = tf.math.l2_normalize(tf.linalg.matvec(w, u))
    return tf.math.l2_normalize(tf.linalg.matvec(w, v, transpose_a=True))


def _sigma(w: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """``σ(u) = ‖W û‖`` with ``û = u/‖u‖`` held constant: ``≤ σ_max(W)``, equal at the top singular vector.

    Its gradient in ``W`` is ``v ûᵀ`` with ``v = Wû/‖Wû‖``, the spectral-norm gradient of Miyato et al.
    """
    wu = tf.linalg.matvec(w, tf.stop_gradient(tf.math.l2_normalize(u)))
    # The epsilon keeps the gradient finite for an all-zero kernel.
    return tf.sqrt(tf.reduce_sum(tf.square(wu)) + _SIGMA_EPS**2)


def _as_training_flag(training):
    """``training``, or Keras' learning phase when the caller left it unset."""
    return keras.backend.learning_phase() if training is None else training


class LipschitzKernelMixin:
    """Orthogonality regularization and optional spectral normalization of ``kernel``.

    With ``W`` the kernel as a ``(fan_in, outputs)`` matrix (Conv2D: ``(kh·kw·c_in, c_out)``):

    * ``beta > 0`` adds ``(β/2)·‖WᵀW − I‖²_F`` to the layer's losses (``WWᵀ`` when
      ``outputs > fan_in``), the Lipschitz regularizer of Defensive Quantization (Lin et al.
      2019; DESIGN §3), through :class:`~keras_qrobust.regularizers.OrthogonalityRegularizer`.
      It regularizes the stored kernel and never changes the layer's output. Any
      ``kernel_regularizer`` passed as well is applied in addition.
    * ``spectral_norm=True`` makes the layer compute with ``W/σ`` instead of ``W``, with
      ``σ = ‖W û‖`` the power-iteration estimate of ``σ_max(W)`` (Miyato et al. 2018).
      ``u`` (shape ``(outputs,)``) is a persistent non-trainable weight ``spectral_u``;
      every call with ``training=True`` first runs **one** power iteration
      ``u ← Wᵀv/‖Wᵀv‖, v = Wu/‖Wu‖`` and stores ``u``; inference calls reuse the stored
      ``u`` without updating it. ``σ ≤ σ_max(W)`` always, with equality once ``u`` has
      converged to the top right singular vector (after enough training steps or
      :meth:`power_iterate`). The kernel variable keeps the raw ``W`` (unlike
      ``keras.layers.SpectralNormalization``, which overwrites it). For Conv2D this bounds the
      reshaped matrix; the convolution operator's norm is at most
      ``√(⌈kh/sh⌉·⌈kw/sw⌉)·σ_max`` (DESIGN §3).
    """

    def _init_lipschitz(self, beta: float, spectral_norm: bool) -> None:
        if not isinstance(spectral_norm, bool):
            raise TypeError(f"spectral_norm must be True or False, got {spectral_norm!r}")
        self.beta = check_beta(beta)
        self.spectral_norm = spectral_norm
        self.orthogonality = OrthogonalityRegularizer(self.beta)

    def build(self, input_shape):
        super().build(input_shape)
        if self.beta > 0:
            self.add_loss(self._orthogonality_loss)
        if self.spectral_norm:
            self.spectral_u = self.add_weight(
                name="spectral_u",
                shape=(self.kernel.shape[-1],),
                initializer=keras.initializers.RandomNormal(stddev=1.0),
                trainable=False,
            )

    def _orthogonality_loss(self) -> tf.Tensor:
        return self.orthogonality(self.kernel)

    def power_iterate(self, steps: int = 1) -> tf.Tensor:
        """Run ``steps`` power iterations on the current kernel, store ``u``, return ``σ``."""
        if not self.spectral_norm:
            raise ValueError(f"Layer '{self.name}' has spectral_norm=False: there is no power iteration to run")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {steps!r}")
        w = kernel_matrix(self.kernel)
        u = tf.convert_to_tensor(self.spectral_u)
        for _ in range(steps):
            u = _power_step(w, u)
        self.spectral_u.assign(u)
        return _sigma(w, u)

    def spectral_sigma(self) -> tf.Tensor:
        """The current estimate ``σ = ‖W û‖`` of ``σ_max(W)`` (no update)."""
        return _sigma(kernel_matrix(self.kernel), self.spectral_u)

    def _updated_u(self, w: tf.Tensor) -> tf.Tensor:
        u = _power_step(w, self.spectral_u)
        with tf.control_dependencies([self.spectral_u.assign(u)]):
            return tf.identity(u)

    def lipschitz_kernel(self, training=False) -> tf.Tensor:
        """The kernel ``call`` uses: ``W/σ`` with spectral normalization, else ``W``."""
        if not self.spectral_norm:
            return self.kernel
        w = kernel_matrix(self.kernel)
        u = tf.__internal__.smart_cond.smart_cond(
            _as_training_flag(training),
            lambda: self._updated_u(w),
            lambda: tf.identity(self.spectral_u),
        )
        return self.kernel / _sigma(w, u)

    def call(self, inputs, training=None):
        if not self.spectral_norm:
            return super().call(inputs)
        kernel = self.lipschitz_kernel(training)
        original = self.kernel
        # As in QuantizedKernelsMixin: the variable stays the tracked weight, call reads W/σ.
        object.__setattr__(self, "kernel", kernel)
        try:
            return super().call(inputs)
        finally:
            object.__setattr__(self, "kernel", original)

    def get_config(self):
        config = super().get_config()
        config["beta"] = self.beta
        config["spectral_norm"] = self.spectral_norm
        return config


@register
class LipschitzDense(LipschitzKernelMixin, keras.layers.Dense):
    """``keras.layers.Dense`` with the Defensive Quantization orthogonality loss (and optional spectral norm).

    Adds ``(β/2)·‖WᵀW − I‖²_F`` to the model loss (``WWᵀ`` when ``units > n_in``); with
    ``spectral_norm=True`` computes ``x·W/σ_max(W) + b``, ``σ_max`` estimated by one power
    iteration per training call on a persistent non-trainable ``u``. See
    :class:`LipschitzKernelMixin` for the exact definitions.

    Args:
        units: as in ``keras.layers.Dense``.
        **kwargs: every other argument of ``keras.layers.Dense``.
        beta: strength β of the orthogonality loss (Lin et al. 2019 use 3e-4); 0 disables it.
        spectral_norm: divide the kernel by its estimated largest singular value.
    """

    def __init__(self, units, beta: float = DEFAULT_BETA, spectral_norm: bool = False, **kwargs):
        super().__init__(units, **kwargs)
        self._init_lipschitz(beta, spectral_norm)


@register
class LipschitzConv2D(LipschitzKernelMixin, keras.layers.Conv2D):
    """``keras.layers.Conv2D`` with the Defensive Quantization orthogonality loss (and optional spectral norm).

    The kernel ``(kh, kw, c_in, c_out)`` is regularized as the ``(kh·kw·c_in, c_out)`` matrix:
    ``(β/2)·‖WᵀW − I‖²_F``, or ``(β/2)·‖WWᵀ − I‖²_F`` when ``c_out > kh·kw·c_in``. With
    ``spectral_norm=True`` the convolution uses ``W/σ_max`` of that matrix. See
    :class:`LipschitzKernelMixin`.

    Args:
        filters: as in ``keras.layers.Conv2D``.
        kernel_size: as in ``keras.layers.Conv2D``.
        **kwargs: every other argument of ``keras.layers.Conv2D``.
        beta: strength β of the orthogonality loss; 0 disables it.
        spectral_norm: divide the kernel by its estimated largest singular value.
    """

    def __init__(
        self, filters, kernel_size, beta: float = DEFAULT_BETA, spectral_norm: bool = False, **kwargs
    ):
        super().__init__(filters, kernel_size, **kwargs)
        self._init_lipschitz(beta, spectral_norm)


@register
class MuLawDense(QuantizedKernelsMixin, keras.layers.Dense):
    """``keras.layers.Dense`` whose kernel goes through the μ-law (Song et al. 2020, eq. 3).

    ``F(x) = sgn(x)·ln(1 + μ|x|)/ln(1 + μ)``, ``F⁻¹(y) = sgn(y)·((1 + μ)^|y| − 1)/μ`` and, per
    tensor, ``s = max|W|`` (DESIGN §3). The layer computes ``x·W' + b`` with

    * ``mode="compand"`` (needs ``bits``): ``W' = s·F⁻¹(Q_b(F(W/s)))``, a non-uniform
      ``b``-bit quantizer with levels dense near zero; ``Q_b`` is the symmetric grid
      ``round(y·(2^(b−1) − 1))/(2^(b−1) − 1)`` on ``[−1, 1]``; straight-through gradient.
    * ``mode="map"``: ``W' = s·F(W/s)``, the paper's post-training nonlinear mapping (it
      changes the function the layer computes; the gradient is the true one of ``F``). With
      ``bits`` the kernel is quantized first: ``W' = s·F(Q_b(W/s))``, the paper's quantized
      model followed by the mapping.

    The kernel variable keeps ``W``; the transform runs in ``call`` through a
    :class:`~keras_qrobust.quantizers.MuLawQuantizer`.

    Args:
        units: as in ``keras.layers.Dense``.
        **kwargs: every other argument of ``keras.layers.Dense``.
        mu: μ (255 in the paper).
        mode: ``"compand"`` or ``"map"``.
        bits: grid bits; required for ``"compand"``, optional for ``"map"``.
    """

    kernel_quantizer_args = {"kernel": "kernel_quantizer"}

    def __init__(self, units, mu: float = 255.0, mode: str = "compand", bits: int | None = None, **kwargs):
        super().__init__(units, **kwargs)
        self._set_quantizers({"kernel_quantizer": quantizers_mod.MuLawQuantizer(bits, mu=mu, mode=mode)})

    @property
    def mu_law(self) -> quantizers_mod.MuLawQuantizer:
        """The :class:`~keras_qrobust.quantizers.MuLawQuantizer` applied to the kernel."""
        return self._kernel_quantizers["kernel"]

    def get_config(self):
        config = super().get_config()
        del config["kernel_quantizer"]  # rebuilt from mu/mode/bits
        config.update(self.mu_law.get_config())
        return config

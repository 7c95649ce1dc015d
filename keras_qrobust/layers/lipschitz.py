"""Lipschitz-regularized Dense/Conv2D (Defensive Quantization, Lin et al. 2019; docs/methods.md).

The orthogonality penalty ``β‖WᵀW − I‖²`` and optional spectral normalization
(Miyato et al. 2018) keep each layer's Lipschitz constant near 1, so quantization error is
not amplified from layer to layer.
"""

from __future__ import annotations

from .._keras import keras, register, tf
from .regularizers import DEFAULT_BETA, OrthogonalityRegularizer, check_beta, kernel_matrix

__all__ = ["LipschitzKernelMixin", "LipschitzDense", "LipschitzConv2D"]


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
      2019; docs/methods.md), through :class:`~keras_qrobust.layers.regularizers.OrthogonalityRegularizer`.
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
      ``√(⌈kh/sh⌉·⌈kw/sw⌉)·σ_max`` (docs/methods.md).
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

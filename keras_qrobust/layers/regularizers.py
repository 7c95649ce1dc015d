"""Weight regularizers for robust quantization.

:class:`OrthogonalityRegularizer` is the Lipschitz regularizer of Defensive Quantization
(Lin et al. 2019, as defined in docs/methods.md): it keeps every kernel close to an
orthogonal matrix, so each layer's Lipschitz constant stays near 1 and the error that
quantization (or an adversarial perturbation) adds to a layer's input is not amplified.

It is named ``OrthogonalityRegularizer`` rather than ``OrthogonalRegularizer`` because
``keras.regularizers.OrthogonalRegularizer`` already exists (a different, normalized
row-correlation penalty) and deserializing by plain class name must not confuse the two.
"""

from __future__ import annotations

import math
import numbers

from .._keras import keras, register, tf

__all__ = ["OrthogonalityRegularizer", "kernel_matrix", "DEFAULT_BETA"]

#: Defensive Quantization's default regularization strength β
DEFAULT_BETA = 3e-4


def check_beta(beta) -> float:
    """Validate a regularization strength (a finite real number >= 0) and return it as float."""
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise TypeError(f"beta must be a real number >= 0, got {beta!r}")
    beta = float(beta)
    if not (math.isfinite(beta) and beta >= 0.0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    return beta


def kernel_matrix(kernel) -> tf.Tensor:
    """A kernel as the matrix it multiplies with: ``(fan_in, outputs)``.

    Dense ``(n_in, n_out)`` stays as is; Conv2D ``(kh, kw, c_in, c_out)`` becomes
    ``(kh·kw·c_in, c_out)`` (docs/methods.md), i.e. the matrix acting on each input patch.
    """
    kernel = tf.convert_to_tensor(kernel)
    if kernel.shape.rank is None or kernel.shape.rank < 2:
        raise ValueError(f"a kernel needs rank >= 2 (..., outputs), got shape {kernel.shape}")
    return tf.reshape(kernel, (-1, kernel.shape[-1]))


@register
class OrthogonalityRegularizer(keras.regularizers.Regularizer):
    """Orthogonality penalty ``(β/2)·‖WᵀW − I‖²_F`` (Lin et al. 2019; docs/methods.md).

    ``W`` is the kernel as a ``(fan_in, outputs)`` matrix (:func:`kernel_matrix`). When the
    layer has more outputs than ``fan_in`` the columns cannot all be orthonormal, so the
    Gram matrix of the rows is used instead: ``(β/2)·‖WWᵀ − I‖²_F``. The penalty is zero
    exactly when the smaller Gram matrix is the identity, i.e. when every singular value of
    ``W`` is 1 and ``W`` is an isometry (Lipschitz constant 1 in the 2-norm).

    Its gradient is ``2β·W(WᵀW − I)`` (resp. ``2β·(WWᵀ − I)W``). Works as
    ``kernel_regularizer=`` of any layer whose kernel's last axis is the output axis
    (Dense, Conv1D/2D/3D); ``LipschitzDense`` and ``LipschitzConv2D`` add it by themselves.

    Args:
        beta: regularization strength β (Lin et al. use 3e-4).
    """

    def __init__(self, beta: float = DEFAULT_BETA):
        self.beta = check_beta(beta)

    def __call__(self, kernel):
        if self.beta == 0.0:
            return tf.zeros((), dtype=tf.convert_to_tensor(kernel).dtype)
        w = kernel_matrix(kernel)
        fan_in, outputs = w.shape
        gram = tf.matmul(w, w, transpose_b=True) if outputs > fan_in else tf.matmul(w, w, transpose_a=True)
        deviation = gram - tf.eye(min(fan_in, outputs), dtype=w.dtype)
        return (self.beta / 2.0) * tf.reduce_sum(tf.square(deviation))

    def get_config(self) -> dict:
        return {"beta": self.beta}

    def __repr__(self) -> str:
        return f"OrthogonalityRegularizer(beta={self.beta!r})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.beta == other.beta

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.beta))

"""Store a quantized model's kernels as their grid values: the same function, a file that compresses.

A fake-quantized layer keeps float "shadow" kernels ``W`` and computes with ``Q(W)``; after
training, only ``Q(W)`` matters to what the model computes (and to the straight-through input
gradients attacks use), but ``W`` is what its file stores — float32 noise that does not
compress. :func:`grid_valued_kernels` replaces each symmetric-quantized kernel by ``Q(W)``,
except, in each channel, the entries of largest magnitude, which keep their value, and with
every value clipped to that magnitude (the top level ``L·Δ`` can round one ulp above it): the
scale ``s = r·max|W|`` is then unchanged, so ``Δ`` is bit for bit the same and
``Q(Q(W)) = Q(W)`` (a code ``k`` times ``Δ`` divided by ``Δ`` rounds back to ``k``), and a
second call changes nothing.

A layer computes with the straight-through form ``W + (Q(W) − W)``, which float32 evaluates to
exactly ``Q(W)`` whenever ``W`` and ``Q(W)`` are within a factor of two of each other
(Sterbenz's lemma) — every entry of an unclipped grid but the ones rounded to zero, which are
exact too. With a clipping ratio ``r < 1`` a clipped entry can be more than twice its grid
value and was computed within a float32 rounding of ``Q(W)``; after this it is ``Q(W)``
exactly, so outputs can move by float32 rounding. A ``b``-bit kernel then holds at most
``2^b`` distinct values per channel, which a zip-deflated ``.keras`` file stores compactly.
Fine-tuning further starts from ``Q(W)``, not from ``W``.
"""

from __future__ import annotations

import numpy as np

from .._keras import tf
from ..layers import QuantizedKernelsMixin
from ..quantizers import SymmetricQuantizer

__all__ = ["grid_valued_kernels"]


def _grid_valued(quantizer: SymmetricQuantizer, kernel: np.ndarray) -> np.ndarray:
    quantized = quantizer.quantize(tf.constant(kernel)).numpy()
    magnitude = tf.abs(tf.constant(kernel))
    top = quantizer.channel_max(magnitude).numpy()
    # the top level L·Δ can round one ulp above max|W|: clipped back to max|W|, it still has
    # code L, and the channel's maximum — so its scale — stays what it was
    return np.where(magnitude.numpy() == top, kernel, np.clip(quantized, -top, top)).astype(kernel.dtype)


def grid_valued_kernels(model) -> list[str]:
    """Replace, in place, every symmetric-quantized kernel of ``model`` by its grid values
    (module docstring); returns ``"layer.kernel"`` for each kernel replaced. Kernels with
    another quantizer (μ-law) or none are left as they are."""
    replaced = []
    for layer in model.layers:
        if not isinstance(layer, QuantizedKernelsMixin):
            continue
        for attr, quantizer in layer.kernel_quantizers.items():
            if isinstance(quantizer, SymmetricQuantizer):
                variable = getattr(layer, attr)
                variable.assign(_grid_valued(quantizer, variable.numpy()))
                replaced.append(f"{layer.name}.{attr}")
    return replaced

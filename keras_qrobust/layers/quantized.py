"""Weight layers with fake-quantized kernels: mixins over the Keras layers they replace.

Each keeps its Keras layer's arguments, weights and behaviour; only the kernels it reads in
``call`` go through a :mod:`keras_qrobust.quantizers` quantizer (as tfmot's
``QuantizeConfig.set_quantize_weights`` does).
"""

from __future__ import annotations

import contextlib

from .. import quantizers as quantizers_mod
from .._keras import keras, register

__all__ = [
    "QuantizedKernelsMixin",
    "QuantizedDense",
    "QuantizedConv2D",
    "QuantizedDepthwiseConv2D",
    "QuantizedSeparableConv2D",
    "QUANTIZED_LAYERS",
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

    @property
    def kernel_quantizers(self) -> dict:
        """Kernel attribute (``kernel``, ``depthwise_kernel``, ...) -> its quantizer (``None``: float).

        The public view of each weight grid, for exporters and analyses."""
        return dict(self._kernel_quantizers)

    def kernel_quantizer(self, attr: str = "kernel"):
        """The quantizer of kernel attribute ``attr`` (``None`` when it stays float or does not exist)."""
        return self._kernel_quantizers.get(attr)

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



#: Keras weight-layer class name -> its quantized twin
QUANTIZED_LAYERS = {
    "Dense": QuantizedDense,
    "Conv2D": QuantizedConv2D,
    "DepthwiseConv2D": QuantizedDepthwiseConv2D,
    "SeparableConv2D": QuantizedSeparableConv2D,
}


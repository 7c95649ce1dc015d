"""Keras layers with fake-quantized kernels and activations, and the defense layers.

Each quantized layer is a mixin over the Keras layer it replaces, so it keeps that layer's
arguments, weights and behaviour; only the kernels it reads in ``call`` (and, for
:class:`QuantizedReLU`, its output) go through a :mod:`keras_qrobust.quantizers` quantizer.
The defense layers — :class:`LipschitzDense`, :class:`LipschitzConv2D` (orthogonality
penalty, optional spectral normalization) and :class:`MuLawDense` (μ-law weights) — are
drop-in subclasses of Dense / Conv2D. All layers are registered, so
``keras.models.load_model`` needs no ``custom_objects``.
"""


from .activations import HardSigmoid, OutputQuantizer, QuantizedReLU, TensorQuantizer
from .lipschitz import LipschitzConv2D, LipschitzDense, LipschitzKernelMixin
from .mu_law import MuLawDense
from .quantized import (
    QUANTIZED_LAYERS,
    QuantizedConv2D,
    QuantizedDense,
    QuantizedDepthwiseConv2D,
    QuantizedKernelsMixin,
    QuantizedSeparableConv2D,
)

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
    "OutputQuantizer",
    "QuantizedKernelsMixin",
    "LipschitzKernelMixin",
]


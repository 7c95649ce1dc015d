"""Export quantized models to edge formats and run the exported artifacts.

``tflite`` (full-integer int8), ``onnx`` (QDQ int8, optional INT4 weights), ``akida``
(``.fbz``, with the ``akida`` extra), ``load`` to run any of them with a Keras-like
``predict``, ``profile`` for their size, #params, #MACs, memory and latency, ``layer_diff``
for where a TFLite file and its Keras twin part, ``integer_twin`` for a Keras model that
computes the TFLite file's integer arithmetic (bit for bit) with fake-quant gradients, and
``akida_twin`` for the quantizeml model a ``.fbz`` computes, on the model's own inputs.
"""

from . import int8_arithmetic, layer_diff, layers, lowering, runtime  # noqa: F401
from .akida import (AkidaModel, akida, akida_bits, check_akida_compatible, is_akida_quantized,  # noqa: F401
                    quantize_for_akida)
from .akida_twin import AkidaTwin, akida_twin  # noqa: F401
from .integer_twin import IntegerTwin, integer_twin  # noqa: F401
from .lowering import Lowered, lower  # noqa: F401
from .onnx import onnx  # noqa: F401
from .profile import ProfileTable, count_macs, count_params, peak_memory, profile  # noqa: F401
from .runtime import load  # noqa: F401
from .tflite import tflite  # noqa: F401

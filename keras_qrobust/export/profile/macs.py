"""#MACs: multiply-accumulates of one forward pass on one input example, layer by layer."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..._keras import keras, tf
from ._common import _check_graph_model, _nodes_in_order, _shape

__all__ = ["count_macs"]


# weight layers with elementwise or lookup arithmetic only: 0 MACs
_ZERO_MAC_WEIGHT_LAYERS = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.PReLU,
    keras.layers.ReLU,
    keras.layers.Embedding,
)


def _known(shape: Sequence, what: str) -> list[int]:
    if any(d is None for d in shape):
        raise ValueError(
            f"count_macs: {what} has unknown dimensions {tuple(shape)}; give the model a fixed input shape"
        )
    return [int(d) for d in shape]


def _layer_macs(layer, input_shape: tuple, output_shape: tuple) -> int:
    """MACs of one call of ``layer`` on one example (shapes include the batch axis)."""
    while isinstance(layer, keras.layers.Wrapper):  # tfmot QuantizeWrapper & co.
        layer = layer.layer
    if not layer.weights:
        return 0
    name = f"layer '{layer.name}' ({type(layer).__name__})"
    sep = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
    depthwise = tuple(c for c in (getattr(keras.layers, "DepthwiseConv1D", None), keras.layers.DepthwiseConv2D) if c)
    transpose = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)
    conv = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
    if isinstance(layer, sep):
        out = _known(output_shape[1:], name)
        *kernel, c_in, multiplier = layer.depthwise_kernel.shape.as_list()
        spatial = int(np.prod(out[:-1], dtype=np.int64))
        return spatial * int(np.prod(kernel)) * c_in * multiplier + spatial * c_in * multiplier * out[-1]
    if isinstance(layer, depthwise):
        out = _known(output_shape[1:], name)
        kernel = layer.depthwise_kernel.shape.as_list()[:-2]
        return int(np.prod(out, dtype=np.int64)) * int(np.prod(kernel))
    if isinstance(layer, transpose):  # every input element meets kh·kw·c_out weights
        inputs = _known(input_shape[1:], name)
        kernel = layer.kernel.shape.as_list()  # (*k, c_out, c_in)
        return int(np.prod(inputs, dtype=np.int64)) * int(np.prod(kernel[:-1]))
    if isinstance(layer, conv):  # out elements × kh·kw·c_in/groups
        out = _known(output_shape[1:], name)
        return int(np.prod(out, dtype=np.int64)) * int(np.prod(layer.kernel.shape.as_list()[:-1]))
    if isinstance(layer, keras.layers.Dense):  # out elements × in features
        out = _known(output_shape[1:], name)
        return int(np.prod(out, dtype=np.int64)) * int(layer.kernel.shape[0])
    if isinstance(layer, _ZERO_MAC_WEIGHT_LAYERS) or not layer.trainable_weights:
        return 0
    raise ValueError(
        f"count_macs does not know how to count the MACs of {name}; supported are Dense, Conv1D/2D/3D "
        "(and transposed), DepthwiseConv2D, SeparableConv1D/2D and their keras_qrobust Quantized* twins"
    )


def count_macs(keras_model) -> int:
    """Multiply-accumulates of one forward pass on one input example.

    Dense: in·out (times the leading axes of a Dense applied to sequences); Conv2D:
    out_h·out_w·kh·kw·(c_in/groups)·c_out; DepthwiseConv2D: out_h·out_w·kh·kw·c_in·multiplier;
    SeparableConv2D: that depthwise count plus the pointwise out_h·out_w·(c_in·multiplier)·c_out.
    Quantized*/Lipschitz/tfmot-wrapped twins count as the layer they wrap; pooling, activation,
    reshape, normalization (folded at export) and biases count 0. A layer shared by several
    calls counts once per call; a nested model counts as its own layers.
    """
    model = _check_graph_model(keras_model, "count_macs")
    total = 0
    for node in _nodes_in_order(model):
        layer = node.layer
        if node.is_input:
            continue
        if isinstance(layer, keras.Model):
            total += count_macs(layer)
            continue
        inputs = tf.nest.flatten(node.keras_inputs)
        outputs = tf.nest.flatten(node.outputs)
        if not inputs or not outputs:
            continue
        total += _layer_macs(layer, _shape(inputs[0]), _shape(outputs[0]))
    return int(total)

"""export.onnx_gemm_tiles: filters padded to blocks of 32 where onnxruntime 1.23's AMX kernel errs.

On a CPU with AMX-INT8 and onnxruntime 1.23, a convolution with 17–31 filters past a multiple
of 32 computes wrong sums (microsoft/onnxruntime#26324); elsewhere the padded file must
compute the same values as the unpadded one. The file is compared with the TFLite file
(LiteRT is not affected) bit for bit.
"""

import importlib

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import keras_qrobust as kq
from keras_qrobust import export
from keras_qrobust.export.onnx_gemm_tiles import pad_gemm_tails

keras = kq.keras
layers = keras.layers


def _model(filters: int):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inputs)  # 14×14: rows past 32
    x = layers.Conv2D(filters, 1, activation="relu")(x)
    x = layers.Conv2D(filters, 1)(x)  # linear: its quantizer follows the convolution directly
    return keras.Model(inputs, layers.Dense(10)(layers.GlobalAveragePooling2D()(x)))


def _filter_counts(path) -> list[int]:
    graph = onnx.load(str(path)).graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    # a filter's per-channel scale (its codes may be decoded from INT4 by a chain of ops)
    return [numpy_helper.to_array(initializers[producers[node.input[1]].input[1]]).size
            for node in graph.node if node.op_type == "Conv"]


@pytest.mark.parametrize("filters,stored", [(16, 16), (24, 32), (48, 48), (49, 64)])
def test_filters_past_half_a_block_are_padded_and_sliced_off(filters, stored, fashion_slice, tmp_path):
    (x_train, _), (x_test, _) = fashion_slice
    qmodel = kq.RobustQuantizer.from_setting("w8a8").quantize(_model(filters), x_train[:256])
    path = export.onnx(qmodel, tmp_path / "m.onnx")
    assert _filter_counts(path)[1:3] == [stored, stored]
    assert sum(node.op_type == "Slice" for node in onnx.load(str(path)).graph.node) == (2 if stored > filters else 0)
    x = x_test[:200]
    np.testing.assert_array_equal(export.load(path).predict(x),
                                  export.load(export.tflite(qmodel, tmp_path / "m.tflite")).predict(x))


def test_padding_twice_changes_nothing(fashion_slice):
    (x_train, _), _ = fashion_slice
    qmodel = kq.RobustQuantizer.from_setting("w4a4").quantize(_model(24), x_train[:256])
    proto, _ = importlib.import_module("keras_qrobust.export.onnx").convert_onnx(qmodel)  # padded once
    before = proto.SerializeToString()
    assert pad_gemm_tails(proto) == [] and proto.SerializeToString() == before


def test_a_dense_layer_of_24_units_is_exact(fashion_slice, tmp_path):
    """A Dense layer is a 1×1 convolution followed by a reshape in the file, which the rewrite
    does not follow; its 24 units must still compute the TFLite file's values."""
    (x_train, _), (x_test, _) = fashion_slice
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu")(inputs)
    x = layers.Dense(24)(layers.Dense(24, activation="relu")(layers.Flatten()(x)))
    qmodel = kq.RobustQuantizer.from_setting("w8a8").quantize(keras.Model(inputs, layers.Dense(10)(x)), x_train[:256])
    x = x_test[:300]
    np.testing.assert_array_equal(export.load(export.onnx(qmodel, tmp_path / "m.onnx")).predict(x),
                                  export.load(export.tflite(qmodel, tmp_path / "m.tflite")).predict(x))

"""export.onnx_reshapes: Reshapes that keep their input's shape are dropped, exactly.

A squeeze-excite block's 1×1 convolutions on the pooled 1×1 map become FULLY_CONNECTED +
RESHAPE in TFLite and Conv + Reshape in ONNX; the Reshape kept onnxruntime's NHWC integer
convolutions from passing their Transposes through it. The file must still compute what the
file with the Reshapes computes, bit for bit.
"""

import importlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import keras_qrobust as kq
from keras_qrobust import export
from keras_qrobust.export.onnx_reshapes import drop_identity_reshapes

keras = kq.keras
layers = keras.layers


def _squeeze_excite_model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu")(inputs)
    pooled = layers.GlobalAveragePooling2D(keepdims=True)(x)
    gate = layers.Conv2D(8, 1, activation="relu")(pooled)
    gate = layers.Conv2D(16, 1, activation="hard_sigmoid")(gate)
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(layers.Multiply()([x, gate]))
    return keras.Model(inputs, layers.Dense(10)(layers.GlobalAveragePooling2D()(x)))


def _optimized_ops(path) -> list[str]:
    return [node.op_type for node in export.load(path).optimized_graph().node]


@pytest.mark.parametrize("setting", ["w8a8", "w4a4"])
def test_squeeze_excite_runs_without_transposes_and_computes_the_same(setting, fashion_slice, tmp_path, monkeypatch):
    (x_train, _), (x_test, _) = fashion_slice
    qmodel = kq.RobustQuantizer.from_setting(setting).quantize(_squeeze_excite_model(), x_train[:256])
    path = export.onnx(qmodel, tmp_path / "m.onnx")
    ops = _optimized_ops(path)
    # left: the input's NHWC -> NCHW, and NCHW -> NHWC before the logits' flatten
    assert "QLinearConv" in ops and ops.count("Transpose") == 2 and ops.count("Reshape") == 2, ops
    # without the rewrite, each of the gate's two Reshapes costs a Transpose before and after it
    monkeypatch.setattr(importlib.import_module("keras_qrobust.export.onnx"), "drop_identity_reshapes", lambda p: 0)
    kept = export.onnx(qmodel, tmp_path / "kept.onnx")
    kept_ops = _optimized_ops(kept)
    assert kept_ops.count("Transpose") > 2 and kept_ops.count("Reshape") > 2, kept_ops
    x = x_test[:300]
    np.testing.assert_array_equal(export.load(path).predict(x), export.load(kept).predict(x))


def _reshape_graph(target, source_shape=("N", 4, 1, 1), output_is_reshape=False, allow_zero=0):
    shape = helper.make_tensor("shape", TensorProto.INT64, [len(target)], target)
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["y" if output_is_reshape else "s"], allowzero=allow_zero)]
    if not output_is_reshape:
        nodes.append(helper.make_node("Relu", ["s"], ["y"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(source_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [f"d{i}" for i in range(len(target))])
    graph = helper.make_graph(nodes, "g", [x], [y], [shape])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)


@pytest.mark.parametrize("target,source_shape,dropped", [
    ([-1, 4, 1, 1], ("N", 4, 1, 1), 1),   # the squeeze-excite case
    ([0, 4, 1, 1], ("N", 4, 1, 1), 1),    # 0 copies the batch
    ([2, 4, 1, 1], (2, 4, 1, 1), 1),      # all static
    ([-1, 4], ("N", 4, 1, 1), 0),         # a real reshape: the rank changes
    ([-1, 1, 4, 1], ("N", 4, 1, 1), 0),   # same size, other layout
    ([-1, 4, 1, 1], ("N", "C", 1, 1), 0),  # a dimension not known
    ([2, 4, 1, 1], ("N", 4, 1, 1), 0),    # pins an unknown batch: not an identity
])
def test_only_reshapes_that_keep_the_shape_are_dropped(target, source_shape, dropped):
    proto = _reshape_graph(target, source_shape)
    assert drop_identity_reshapes(proto) == dropped
    assert sum(node.op_type == "Reshape" for node in proto.graph.node) == 1 - dropped
    onnx.checker.check_model(proto)
    if dropped:
        assert proto.graph.node[-1].input[0] == "r" and not proto.graph.initializer
        x = np.random.default_rng(0).normal(size=(2, 4, 1, 1)).astype(np.float32)
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(session.run(None, {"x": x})[0], np.maximum(x, 0))


def test_allowzero_zero_is_not_a_copy_and_graph_outputs_are_kept():
    assert drop_identity_reshapes(_reshape_graph([0, 4, 1, 1], allow_zero=1)) == 0
    assert drop_identity_reshapes(_reshape_graph([-1, 4, 1, 1], output_is_reshape=True)) == 0

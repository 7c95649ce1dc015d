"""export.onnx_clip_codes: a sub-8-bit activation's upper clip runs on its uint8 codes, exactly.

At fewer than 8 activation bits the int8 graph clamps each activation at its top level with a
MINIMUM; tf2onnx writes DequantizeLinear → Min → QuantizeLinear, which onnxruntime ran in
float over the whole feature map. The rewritten file must compute what the file without the
rewrite computes, bit for bit.
"""

import importlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import keras_qrobust as kq
from keras_qrobust import export
from keras_qrobust.export.onnx_clip_codes import clip_on_codes

keras = kq.keras


def _ops(path) -> list[str]:
    return [node.op_type for node in onnx.load(str(path)).graph.node]


def _optimized_ops(path) -> list[str]:
    return [node.op_type for node in export.load(path).optimized_graph().node]


@pytest.mark.parametrize("setting,clips", [("w8a8", 0), ("w4a4", 3), ("w2a2", 3)])
def test_activation_clips_run_on_codes_and_compute_the_same(setting, clips, fashion_slice, tmp_path, monkeypatch):
    (x_train, _), (x_test, _) = fashion_slice
    keras.utils.set_random_seed(0)
    qmodel = kq.RobustQuantizer.from_setting(setting).quantize(kq.zoo.cnn_small(), x_train[:256])
    path = export.onnx(qmodel, tmp_path / "m.onnx")
    assert _ops(path).count("Clip") == clips and "Min" not in _ops(path)
    assert "Min" not in _optimized_ops(path)  # every clamp an integer op in onnxruntime too
    monkeypatch.setattr(importlib.import_module("keras_qrobust.export.onnx"), "clip_on_codes", lambda p: 0)
    kept = export.onnx(qmodel, tmp_path / "kept.onnx")
    assert _ops(kept).count("Min") == clips
    x = np.concatenate([x_test[:300], np.clip(x_test[:300] * 3.0, 0, 1)])  # saturate some activations
    np.testing.assert_array_equal(export.load(path).predict(x), export.load(kept).predict(x))


def _min_graph(codes_grid=(0.5, 0), top_grid=(0.5, 0), out_grid=(0.5, 0), top=15, constant_top=True):
    inits = [numpy_helper.from_array(np.array(top, np.uint8), "top")]
    nodes = []
    for name, (scale, zero) in (("c", codes_grid), ("t", top_grid), ("o", out_grid)):
        inits += [numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
                  numpy_helper.from_array(np.array(zero, np.uint8), f"{name}_z")]
    nodes.append(helper.make_node("DequantizeLinear", ["x", "c_s", "c_z"], ["xf"]))
    nodes.append(helper.make_node("DequantizeLinear", ["top" if constant_top else "x", "t_s", "t_z"], ["tf"]))
    nodes.append(helper.make_node("Min", ["xf", "tf"], ["m"]))
    nodes.append(helper.make_node("QuantizeLinear", ["m", "o_s", "o_z"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, ["N", 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _run(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_one_grid_becomes_a_clip_with_the_same_codes():
    x = np.arange(256, dtype=np.uint8).reshape(32, 8)
    proto = _min_graph()
    before = _run(proto, x)
    assert clip_on_codes(proto) == 1
    onnx.checker.check_model(proto)
    assert [node.op_type for node in proto.graph.node] == ["Clip"]
    np.testing.assert_array_equal(_run(proto, x), before)
    np.testing.assert_array_equal(before, np.minimum(x, 15))


@pytest.mark.parametrize("changes", [dict(out_grid=(0.25, 0)), dict(top_grid=(0.5, 3)), dict(codes_grid=(0.5, 1)),
                                     dict(constant_top=False)])
def test_other_grids_or_a_computed_bound_stay(changes):
    proto = _min_graph(**changes)
    assert clip_on_codes(proto) == 0 and "Min" in [node.op_type for node in proto.graph.node]

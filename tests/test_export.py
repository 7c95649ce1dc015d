"""TFLite / ONNX export: exact sub-8-bit lowering, runtimes, overwrite protection, bad input."""

import numpy as np
import onnx
import pytest
import tensorflow_model_optimization as tfmot

import keras_qrobust as kq
from keras_qrobust import export
from keras_qrobust.export import lower
from keras_qrobust.quantization.integer_bias import bias_step
from keras_qrobust.quantizers.grid import int8_code_multiplier

SETTINGS = ("w8a8", "w4a4", "w2a2")


@pytest.fixture(scope="module")
def quantized(fashion_slice, trained_cnn):
    (x, _), _ = fashion_slice
    return {s: kq.RobustQuantizer.from_setting(s).quantize(trained_cnn, x[:512]) for s in SETTINGS}


@pytest.fixture(scope="module")
def exported(quantized, fashion_slice, tmp_path_factory):
    (x, _), _ = fashion_slice
    folder = tmp_path_factory.mktemp("exported")
    paths = {}
    for setting, model in quantized.items():
        paths[setting] = (export.tflite(model, folder / f"{setting}.tflite", x[:256]),
                          export.onnx(model, folder / f"{setting}.onnx", x[:256], int4_weights=False))
    return paths


def agreement(a, b) -> float:
    return float(np.mean(a.argmax(1) == b.argmax(1)))


@pytest.mark.parametrize("setting", SETTINGS)
def test_exported_models_agree_with_the_fake_quant_model(setting, quantized, exported, fashion_slice):
    _, (x, _) = fashion_slice
    keras_scores = quantized[setting].predict(x, verbose=0)
    tflite_path, onnx_path = exported[setting]
    tflite_model, onnx_model = export.load(tflite_path), export.load(onnx_path)
    assert tflite_model.format == "tflite" and onnx_model.format == "onnx"
    # 500 test images; the docs claim ≥ 99.9% agreement (measured 99.98–99.99% on 10,000): at most
    # one of these 500 may differ (the only inexact step is the int8 output range: near-tied logits)
    assert agreement(tflite_model.predict(x), keras_scores) >= 0.998
    assert agreement(onnx_model.predict(x), keras_scores) >= 0.998
    assert agreement(onnx_model.predict(x), tflite_model.predict(x)) >= 0.998  # ties round differently


@pytest.mark.parametrize("setting", SETTINGS)
def test_lowered_model_equals_the_fake_quant_model(setting, quantized, fashion_slice):
    _, (x, _) = fashion_slice
    model = quantized[setting]
    lowered = lower(model)  # every tensor already has its range: no representative inputs
    assert lowered.exact and lowered.requantized_weights == () and lowered.calibrated == ()
    lowered_scores, scores = lowered.model.predict(x, verbose=0), model.predict(x, verbose=0)
    # identical up to float32 rounding, which moves a value sitting on a rounding boundary by one level
    assert np.mean(np.abs(lowered_scores - scores) < 1e-4) >= 0.99
    assert agreement(lowered_scores, scores) >= 0.995


@pytest.mark.parametrize("setting", SETTINGS)
def test_tflite_weights_stay_on_their_b_bit_grid(setting, exported):
    from ai_edge_litert.interpreter import Interpreter

    bits = int(setting[1])
    interpreter = Interpreter(str(exported[setting][0]))
    interpreter.allocate_tensors()
    kernels = [d for d in interpreter.get_tensor_details()
               if d["dtype"] == np.int8 and len(d["shape"]) == 4 and len(d["quantization_parameters"]["scales"]) > 1]
    assert len(kernels) == 4  # conv1, conv2, fc1, logits (the Dense layers run as 1x1 convolutions)
    sub_8_bit = 0
    for detail in kernels:
        codes = interpreter.get_tensor(detail["index"]).astype(np.int32)
        if detail["shape"][-1] == 1:  # conv1 reads the input: input_weight_bits = 8
            continue
        m = int8_code_multiplier(bits)
        assert np.all(codes % m == 0)
        assert len(np.unique(codes // m)) <= 2**bits - 1 and np.abs(codes // m).max() <= max(2 ** (bits - 1) - 1, 1)
        sub_8_bit += 1
    assert sub_8_bit == 3


@pytest.mark.parametrize("setting", SETTINGS)
def test_files_agree_with_the_keras_model_where_attacks_put_inputs(setting, quantized, exported, fashion_slice):
    """x ± 0.1 lies exactly between two of the input's 255 levels: the Keras model's input
    quantizer must round such ties as the files' callers do (half to even), or 36% of the
    input codes differ and the file disagrees at the points an attack returns."""
    _, (x, _) = fashion_slice
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=x.shape)
    perturbed = np.clip(x + 0.1 * signs, 0.0, 1.0).astype(np.float32)
    scores = quantized[setting].predict(perturbed, verbose=0)
    step = float(quantized[setting].get_layer("output_quantizer").step)
    for path in exported[setting]:
        deployed = export.load(path).predict(perturbed)
        assert np.array_equal(deployed.argmax(axis=1), scores.argmax(axis=1)), path.name
        # the same scores but where a value within float32 noise of a rounding boundary lands
        # on the neighbouring level (1 of 500 inputs on an AVX2 host, in both files alike)
        assert np.max(np.abs(deployed - scores)) <= step * 1.01, path.name
        assert np.mean(np.max(np.abs(deployed - scores), axis=1) > 1e-5) <= 0.01, path.name


def test_models_quantized_with_half_up_input_rounding_can_be_upgraded(trained_cnn, fashion_slice, tmp_path):
    (x, _), _ = fashion_slice
    qmodel = kq.RobustQuantizer.from_setting("w8a8").quantize(trained_cnn, x[:256])
    (quantizer,) = [layer for layer in qmodel.layers if getattr(layer, "rounding", None) == "half_even"]
    quantizer.rounding = "half_up"  # what a model quantized by an older keras_qrobust has
    path = tmp_path / "old.keras"
    qmodel.save(path)
    old = kq.keras.models.load_model(path)
    assert kq.quantize.round_inputs_half_even(old) == [quantizer.name]
    assert kq.quantize.round_inputs_half_even(old) == []
    assert old.get_layer(quantizer.name).rounding == "half_even"


@pytest.mark.parametrize("setting", ["w8a8", "w4a4"])
def test_onnxruntime_runs_every_convolution_as_an_integer_kernel(setting, exported, tmp_path):
    """tf2onnx puts Reshape/Transpose between a QuantizeLinear and the DequantizeLinear of the
    next Conv; onnxruntime then runs that Conv in float. onnx_layout moves them above the
    QuantizeLinear, so every Conv of cnn_small (two convolutions, two Dense as 1x1) is fused."""
    ops = [node.op_type for node in export.load(exported[setting][1]).optimized_graph().node]
    assert ops.count("QLinearConv") == 4 and "Conv" not in ops, ops


def test_layout_ops_move_above_a_per_tensor_quantize_only():
    from onnx import helper, numpy_helper

    from keras_qrobust.export.onnx_layout import hoist_layout_ops

    def graph(scale):
        inits = [numpy_helper.from_array(np.asarray(scale, np.float32), "s"),
                 numpy_helper.from_array(np.zeros(np.shape(scale), np.int8), "z"),
                 numpy_helper.from_array(np.array([1, 8], np.int64), "shape")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
                 helper.make_node("Reshape", ["q", "shape"], ["r"]),
                 helper.make_node("DequantizeLinear", ["r", "s", "z"], ["y"], axis=1)]
        x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 4])
        y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])
        return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                                 opset_imports=[helper.make_opsetid("", 13)])

    per_tensor = graph(0.1)
    assert hoist_layout_ops(per_tensor) == 1
    assert [n.op_type for n in per_tensor.graph.node] == ["Reshape", "QuantizeLinear", "DequantizeLinear"]
    onnx.checker.check_model(per_tensor)
    per_channel = graph([0.1, 0.2])  # a per-axis scale does not commute with a reshape
    assert hoist_layout_ops(per_channel) == 0


def test_uint8_codes_compute_the_int8_graph_exactly():
    """The rewrite that keeps onnxruntime off its saturating u8s8 kernels changes no value:
    checked with onnx's reference evaluator (plain numpy, the same on every CPU)."""
    import onnxruntime as ort
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    from keras_qrobust.export.onnx_unsigned import signed_codes, unsign_codes

    rng = np.random.default_rng(0)
    weight = rng.integers(-127, 128, size=(3, 2, 3, 3)).astype(np.int8)
    weight[0, 0, 0, :2] = (127, 127)  # the pair a VPMADDUBSW kernel saturates on a 255 input
    inits = [numpy_helper.from_array(np.float32(1 / 255), "sx"), numpy_helper.from_array(np.int8(-128), "zx"),
             numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.float32(0.01), "sw"),
             numpy_helper.from_array(np.int8(0), "zw"), numpy_helper.from_array(np.float32(0.05), "sy"),
             numpy_helper.from_array(np.int8(3), "zy")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"]),
             helper.make_node("Conv", ["xd", "wd"], ["c"]),
             helper.make_node("QuantizeLinear", ["c", "sy", "zy"], ["cq"]),
             helper.make_node("DequantizeLinear", ["cq", "sy", "zy"], ["y"])]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 2, 5, 5])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3, 3, 3])
    proto = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),  # opset 19: the evaluator's Q/DQ
                              opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    inputs = {"x": np.concatenate([np.ones((1, 2, 5, 5)), rng.uniform(-0.2, 1.2, (1, 2, 5, 5))]).astype(np.float32)}
    before = ReferenceEvaluator(proto).run(None, inputs)[0]
    assert signed_codes(proto) == ["zx", "w", "zw", "zy"]
    assert unsign_codes(proto) == 4
    onnx.checker.check_model(proto, full_check=True)
    assert signed_codes(proto) == []
    after = ReferenceEvaluator(proto).run(None, inputs)[0]
    np.testing.assert_array_equal(after, before)
    assert np.ptp(before) > 1  # the codes reach both ends of the output grid's range, not one level
    # onnxruntime's integer kernel on this CPU: within one output step of the reference (the
    # saturated int8 sum was 23 steps off on an AVX2 CPU without VNNI)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.max(np.abs(session.run(None, inputs)[0] - before)) <= 0.05 * 1.01


def test_exported_onnx_files_hold_no_int8_codes(exported):
    """Whatever CPU reads them: int8 activations with 8-bit weights saturate onnxruntime's
    u8s8 kernels on x86 without AVX-VNNI (its own docs); uint8 codes run in exact u8u8 kernels."""
    from keras_qrobust.export.onnx_unsigned import signed_codes

    for setting, (_, path) in exported.items():
        proto = onnx.load(str(path))
        assert signed_codes(proto) == [], setting
        uint8 = [init for init in proto.graph.initializer if init.data_type == onnx.TensorProto.UINT8]
        assert len(uint8) >= 4, setting


def test_int4_onnx_weights_are_packed_and_compute_the_same(quantized, exported, fashion_slice, tmp_path):
    (x_train, _), (x, _) = fashion_slice
    path = export.onnx(quantized["w4a4"], tmp_path / "w4a4_int4.onnx", x_train[:256], int4_weights=True)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert max(entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")) == 21
    int4 = [init for init in proto.graph.initializer if init.data_type == onnx.TensorProto.INT4]
    assert len(int4) >= 3
    int8_path = exported["w4a4"][1]
    assert path.stat().st_size < 0.6 * int8_path.stat().st_size
    # the decoded INT4 weights are the 8-bit file's tensors: the same fused integer kernels
    np.testing.assert_array_equal(export.load(path).predict(x), export.load(int8_path).predict(x))
    # and so the file's graph, evaluated by the ONNX reference implementation, computes them too
    from onnx import version_converter
    from onnx.reference import ReferenceEvaluator

    int8_proto = version_converter.convert_version(onnx.load(str(int8_path)), 21)  # the evaluator's Q/DQ: ≥ 19
    decoded = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: x[:8]})[0]
    containers = ReferenceEvaluator(int8_proto).run(None, {int8_proto.graph.input[0].name: x[:8]})[0]
    np.testing.assert_array_equal(decoded, containers)


def test_int4_needs_a_layer_with_at_most_4_bits(quantized, fashion_slice, tmp_path):
    (x_train, _), _ = fashion_slice
    with pytest.raises(ValueError, match="no layer has weights of 4 bits or fewer"):
        export.onnx(quantized["w8a8"], tmp_path / "m.onnx", x_train[:64], int4_weights=True)
    assert not (tmp_path / "m.onnx").exists()


def test_tfmot_qat_model_exports_to_tflite_and_onnx(trained_cnn, fashion_slice, tmp_path):
    (x_train, y_train), (x, _) = fashion_slice
    qat = tfmot.quantization.keras.quantize_model(trained_cnn)
    kq.defenses.compile_classifier(qat)
    qat.fit(x_train[:512], y_train[:512], epochs=1, batch_size=64, verbose=0)
    keras_scores = qat.predict(x, verbose=0)
    tflite_path = export.tflite(qat, tmp_path / "qat.tflite")
    onnx_path = export.onnx(qat, tmp_path / "qat.onnx")
    assert agreement(export.load(tflite_path).predict(x), keras_scores) >= 0.98
    assert agreement(export.load(onnx_path).predict(x), keras_scores) >= 0.98


def test_sub_8_bit_tfmot_model_is_refused_with_the_fix(trained_cnn, tmp_path):
    annotated = tfmot.quantization.keras.quantize_annotate_model(trained_cnn)
    with tfmot.quantization.keras.quantize_scope():
        low = tfmot.quantization.keras.quantize_apply(annotated, scheme=kq.WXAYScheme(4, 4))
    with pytest.raises(ValueError, match="RobustQuantizer"):
        export.tflite(low, tmp_path / "low.tflite")
    assert not (tmp_path / "low.tflite").exists()


def test_float_model_exports_int8_by_ptq_and_float32(trained_cnn, fashion_slice, tmp_path):
    (x_train, _), (x, _) = fashion_slice
    int8 = export.tflite(trained_cnn, tmp_path / "float_ptq.tflite", x_train[:128])
    float32 = export.tflite(trained_cnn, tmp_path / "float.tflite", precision="float32")
    assert float32.stat().st_size > 3.5 * int8.stat().st_size
    scores = trained_cnn.predict(x, verbose=0)
    np.testing.assert_allclose(export.load(float32).predict(x), scores, atol=1e-4)
    assert agreement(export.load(int8).predict(x), scores) >= 0.97
    with pytest.raises(ValueError, match="representative"):
        export.tflite(trained_cnn, tmp_path / "again.tflite")


def test_existing_files_are_replaced_only_with_overwrite(quantized, fashion_slice, tmp_path):
    (x_train, _), _ = fashion_slice
    for name, exporter in (("m.tflite", export.tflite), ("m.onnx", export.onnx)):
        path = tmp_path / name
        path.write_bytes(b"keep me")
        with pytest.raises(FileExistsError, match="overwrite=True"):
            exporter(quantized["w4a4"], path, x_train[:64])
        assert path.read_bytes() == b"keep me"
        exporter(quantized["w4a4"], path, x_train[:64], overwrite=True)
        assert path.read_bytes() != b"keep me"
        assert export.load(path).predict(x_train[:4]).shape == (4, 10)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_bad_export_input_is_refused_before_writing(quantized, trained_cnn, tmp_path):
    model = quantized["w4a4"]
    with pytest.raises(ValueError, match=r"\.tflite"):
        export.tflite(model, tmp_path / "m.onnx", np.zeros((4, 28, 28, 1)))
    weights_only = kq.RobustQuantizer(weight_bits=4, activation_bits=None).quantize(trained_cnn)
    with pytest.raises(ValueError, match="representative"):  # its activations are float: ranges to calibrate
        export.tflite(weights_only, tmp_path / "m.tflite")
    with pytest.raises(ValueError, match="shaped"):
        export.tflite(model, tmp_path / "m.tflite", np.zeros((4, 32, 32, 3)))
    with pytest.raises(ValueError, match="precision"):
        export.tflite(model, tmp_path / "m.tflite", np.zeros((4, 28, 28, 1)), precision="int4")
    with pytest.raises(ValueError, match="opset"):
        export.onnx(model, tmp_path / "m.onnx", np.zeros((4, 28, 28, 1)), opset=9)
    with pytest.raises(ValueError, match="no keras_qrobust quantized layer"):
        lower(trained_cnn, np.zeros((4, 28, 28, 1)))
    assert list(tmp_path.iterdir()) == []


def test_runtime_load_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown artifact type"):
        export.load(tmp_path / "model.pb")
    with pytest.raises(FileNotFoundError, match="export it first"):
        export.load(tmp_path / "missing.tflite")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="could not be loaded"):
        export.load(corrupt)


def test_runtime_predict_checks_shapes(exported):
    model = export.load(exported["w8a8"][0])
    assert model.input_shape == (28, 28, 1)
    with pytest.raises(ValueError, match="inputs of shape"):
        model.predict(np.zeros((2, 32, 32, 3)))
    assert model.predict(np.zeros((3, 28, 28, 1)), batch_size=2).shape == (3, 10)


def test_runtime_models_are_scored_like_keras_models(exported, fashion_slice):
    _, (x, y) = fashion_slice
    model = export.load(exported["w8a8"][0])
    assert 0.5 < kq.metrics.accuracy(model, x, y) <= 1.0


@pytest.mark.parametrize("setting", ["w4a4", "w2a2"])
def test_integer_biases_are_on_the_int32_grid(setting, quantized, trained_cnn, fashion_slice):
    (x, _), _ = fashion_slice
    model = quantized[setting]
    rounded = 0
    for layer in model.layers:
        step = bias_step(layer)
        if step is None:
            continue
        codes = layer.bias.numpy() / step
        np.testing.assert_allclose(codes, np.rint(codes), atol=1e-3)
        rounded += 1
    assert rounded == 4  # conv1 (on the input's grid), conv2, fc1, logits
    unrounded = kq.RobustQuantizer.from_setting(setting, integer_bias=False).quantize(trained_cnn, x[:512])
    np.testing.assert_array_equal(unrounded.get_layer("fc1").bias.numpy(), trained_cnn.get_layer("fc1").bias.numpy())
    assert "float bias" in str(kq.RobustQuantizer.from_setting(setting, integer_bias=False))


def test_output_quantizer_has_256_levels_and_a_straight_through_gradient():
    layer = kq.layers.OutputQuantizer()
    layer.build((None, 4))
    layer.set_range(-3.0, 5.0)
    x = kq.tf.constant(np.linspace(-6.0, 8.0, 4000, dtype=np.float32).reshape(-1, 4))
    with kq.tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    assert len(np.unique(y.numpy())) == 256
    np.testing.assert_allclose([y.numpy().min(), y.numpy().max()], [layer.min.numpy(), layer.max.numpy()], atol=1e-5)
    assert abs(layer.max.numpy() - layer.min.numpy() - 8.0) < 1e-5  # nudged (zero on a level), same span
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), np.ones(x.shape, np.float32))


def test_score_range_keeps_every_top_score_and_zero():
    low, high = kq.quantizers.score_range(-20.0, 10.0, lowest_top=2.0)
    assert -2.1 < low < 0.0  # 2.0 - 0.5·(10 - 2) = -2, nudged onto the zero level: far tighter than -20
    assert high >= 10.0 - 1e-6
    step = (high - low) / 255
    assert abs(round(-low / step) - (-low / step)) < 1e-6  # zero is one of the levels
    assert kq.quantizers.score_range(-20.0, 10.0, None)[0] <= -20.0 + 1e-6


def test_quantized_models_end_with_a_calibrated_output_quantizer(quantized, trained_cnn, fashion_slice):
    (x, _), _ = fashion_slice
    last = quantized["w4a4"].layers[-1]
    assert isinstance(last, kq.layers.OutputQuantizer) and last.max.numpy() > last.min.numpy()
    float_output = kq.RobustQuantizer.from_setting("w4a4", quantize_output=False).quantize(trained_cnn, x[:256])
    assert not any(isinstance(layer, kq.layers.OutputQuantizer) for layer in float_output.layers)
    weight_only = kq.RobustQuantizer(weight_bits=3, activation_bits=None).quantize(trained_cnn)
    assert not any(isinstance(layer, kq.layers.OutputQuantizer) for layer in weight_only.layers)


def test_attacks_still_see_probabilities_behind_the_output_quantizer(fashion_slice):
    from keras_qrobust.attacks._common import _softmax_output

    (x, _), _ = fashion_slice
    model = kq.zoo.cnn_small()
    probabilities = kq.keras.Model(model.inputs, kq.keras.layers.Softmax(name="probabilities")(model.outputs[0]))
    quantized = kq.RobustQuantizer.from_setting("w4a4").quantize(probabilities, x[:64])
    assert isinstance(quantized.layers[-1], kq.layers.OutputQuantizer)
    assert _softmax_output(quantized) and not _softmax_output(kq.RobustQuantizer.from_setting("w4a4").quantize(
        model, x[:64]))


def test_onnx_stores_4_bit_weights_as_int4_by_default(quantized, tmp_path):
    def types(path):
        return {init.data_type for init in onnx.load(str(path)).graph.initializer}

    default = export.onnx(quantized["w4a4"], tmp_path / "default.onnx")
    int8 = export.onnx(quantized["w4a4"], tmp_path / "int8.onnx", int4_weights=False)
    assert onnx.TensorProto.INT4 in types(default) and onnx.TensorProto.INT4 not in types(int8)
    assert not onnx.load(str(default)).graph.value_info  # shape hints onnxruntime infers itself
    assert default.stat().st_size < 0.6 * int8.stat().st_size  # the 4-bit layers hold nearly all weights
    assert onnx.TensorProto.INT4 not in types(export.onnx(quantized["w8a8"], tmp_path / "w8a8.onnx"))

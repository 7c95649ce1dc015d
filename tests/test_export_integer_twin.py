"""export.integer_twin: the TFLite file's integer arithmetic as a Keras model with fake-quant gradients.

Bit-exactness against the files is checked for every architecture of test_export_exactness.py
(and the zoo and keras.applications models there); this file checks the twin's arithmetic
pieces against their definitions, its gradients and its errors.
"""

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust import export
from keras_qrobust.export import int8_arithmetic as arith
from keras_qrobust.transforms import UnsupportedModelError

keras = kq.keras
layers = keras.layers
tf = kq.tf


def _model(*, activation="relu", product=True):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 1))
    x = layers.Conv2D(6, 3, strides=2, padding="same")(inputs)
    x = layers.Activation(activation)(x) if activation != "relu" else layers.ReLU()(x)
    y = layers.Conv2D(6, 1)(x)
    x = layers.Add()([x, y])
    if product:
        x = layers.Multiply()([x, layers.DepthwiseConv2D(3, padding="same")(x)])
    return keras.Model(inputs, layers.Dense(4)(layers.Flatten()(x)))


@pytest.fixture(scope="module")
def samples():
    return np.random.default_rng(0).uniform(size=(128, 12, 12, 1)).astype(np.float32)


def test_fake_quant_grid_is_the_converters():
    # [-1, 1.5] at 8 bits: scale 2.5/255 in double, zero point round(-128 + 1/scale) = -26
    grid = arith.fake_quant_grid(-1.0, 1.5)
    assert grid.scale_double == 2.5 / 255 and grid.scale == np.float32(2.5 / 255) and grid.zero_point == -26
    assert arith.fake_quant_grid(0.0, 2.0).zero_point == -128
    with pytest.raises(ValueError, match="high > low"):
        arith.fake_quant_grid(1.0, 1.0)


def test_add_multipliers_follow_xnnpack():
    a, b, out = (arith.Int8Grid(np.float32(s), s, 0) for s in (0.02, 0.01, 0.03))
    m_a, m_b, shift = arith.add_multipliers(a, b, out)
    # the larger ratio 2/3 has exponent -1: shift 21, multipliers rint(ratio·2^21)
    assert shift == 21
    assert m_a == int(np.rint(np.float64(np.float32(np.float32(0.02) / np.float32(0.03))) * 2 ** 21))
    assert m_b == int(np.rint(np.float64(np.float32(np.float32(0.01) / np.float32(0.03))) * 2 ** 21))


def test_twin_gradients_are_the_fake_quant_models(samples):
    """Without products the backward pass does not depend on the values it passes through
    (only on which are inside their ranges), so it is the lowered model's exactly."""
    qmodel = kq.RobustQuantizer.from_setting("w4a4").quantize(_model(product=False), samples)
    twin = export.integer_twin(qmodel)
    x = tf.constant(samples[:16])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        twin_loss = tf.reduce_sum(twin.model(x)[:, 0])
        fake_quant_loss = tf.reduce_sum(twin.lowered.model(x)[:, 0])
    twin_gradient = tape.gradient(twin_loss, x).numpy()
    np.testing.assert_array_equal(twin_gradient, tape.gradient(fake_quant_loss, x).numpy())
    assert np.mean(twin_gradient != 0) > 0.5


def test_twin_computes_the_file_on_perturbed_inputs(samples, tmp_path):
    """Where the fake-quant model rounds a float sum differently, the twin follows the file."""
    qmodel = kq.RobustQuantizer.from_setting("w8a8").quantize(_model(), samples)
    path = export.tflite(qmodel, tmp_path / "m.tflite")
    twin = export.integer_twin(qmodel, file=path)  # checked against the export, not a second conversion
    assert twin.exact
    x = np.clip(samples + np.random.default_rng(1).choice([-0.05, 0.05], size=samples.shape), 0, 1).astype(np.float32)
    np.testing.assert_array_equal(twin.model.predict(x, verbose=0), export.load(path).predict(x))


def test_an_op_without_an_integer_kernel_is_named(samples):
    qmodel = kq.RobustQuantizer.from_setting("w8a8").quantize(_model(activation="swish"), samples)
    with pytest.raises(UnsupportedModelError, match=r"\(Activation\): the integer twin has no integer kernel"):
        export.integer_twin(qmodel, samples)


def test_a_file_the_twin_does_not_compute_is_reported(samples):
    """The twin checks itself on the converted file: a file whose grid differs (here a range
    changed after the twin was built) is found on the probe inputs."""
    from keras_qrobust.export.integer_twin import _check_against_file

    qmodel = kq.RobustQuantizer.from_setting("w8a8").quantize(_model(), samples)
    twin = export.integer_twin(qmodel)
    assert twin.exact
    assert _check_against_file(twin.model, qmodel, twin.lowered.model, samples, "tflite", None) == []
    quantizer = next(layer for layer in twin.lowered.model.layers if layer.name.startswith("add")
                     and layer.name.endswith("_quantizer"))
    quantizer.set_range(float(quantizer.min.numpy()) * 1.5, float(quantizer.max.numpy()) * 1.5)
    # the twin's integer constants were taken when it was built: the file converted now is another
    findings = _check_against_file(twin.model, qmodel, twin.lowered.model, samples, "tflite", None)
    assert any("differs from the TFLite file" in entry for entry in findings), findings


def test_a_file_of_another_model_is_found_out(samples, tmp_path):
    w8a8 = kq.RobustQuantizer.from_setting("w8a8").quantize(_model(), samples)
    w4a4 = kq.RobustQuantizer.from_setting("w4a4").quantize(_model(), samples)
    twin = export.integer_twin(w8a8, file=export.tflite(w4a4, tmp_path / "w4a4.tflite"))
    assert not twin.exact and any("differs from the TFLite file" in entry for entry in twin.approximated)
    inputs = keras.Input((5,))
    dense = kq.RobustQuantizer.from_setting("w8a8").quantize(keras.Model(inputs, layers.Dense(4)(inputs)),
                                                             np.random.default_rng(0).uniform(size=(64, 5)))
    with pytest.raises(ValueError, match=r"takes inputs of shape \(5,\), the model \(12, 12, 1\)"):
        export.integer_twin(w8a8, file=export.tflite(dense, tmp_path / "dense.tflite"))
    with pytest.raises(ValueError, match="is not a .tflite file"):
        export.integer_twin(w8a8, file=tmp_path / "missing.tflite")


def test_onnx_twin_computes_the_onnx_file(samples, tmp_path):
    """ONNX Runtime requantizes a sum and a product in float32 on uint8 codes (not XNNPACK's
    fixed point): the ONNX twin follows it bit for bit, where the TFLite twin need not."""
    qmodel = kq.RobustQuantizer.from_setting("w8a8").quantize(_model(), samples)
    path = export.onnx(qmodel, tmp_path / "m.onnx")
    twin = export.integer_twin(qmodel, runtime="onnx", file=path)
    assert twin.exact and twin.runtime == "onnx", twin.approximated
    x = np.clip(samples + np.random.default_rng(1).choice([-0.05, 0.05], size=samples.shape), 0, 1).astype(np.float32)
    np.testing.assert_array_equal(twin.model.predict(x, verbose=0), export.load(path).predict(x))
    with pytest.raises(ValueError, match="runtime='akida' is not one of"):
        export.integer_twin(qmodel, runtime="akida")
    with pytest.raises(ValueError, match="is not a .onnx file"):
        export.integer_twin(qmodel, runtime="onnx", file=export.tflite(qmodel, tmp_path / "m.tflite"))


def test_guard_attacks_the_twin_of_its_target(samples):
    from keras_qrobust.guard.attacking import attacked_model

    qmodel = kq.RobustQuantizer.from_setting("w4a4").quantize(_model(product=False), samples)
    onnx_model, onnx_twin = attacked_model(qmodel, "onnx")
    assert onnx_twin.runtime == "onnx" and attacked_model(qmodel, "onnx")[1] is onnx_twin  # built once
    assert attacked_model(qmodel, "tflite-int8")[1].runtime == "tflite"  # Akida: tests/test_export_akida_twin.py

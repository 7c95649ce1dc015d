import dataclasses

import numpy as np
import pytest

import keras_qrobust as kq
from conftest import randomize_batchnorm
from keras_qrobust.layers import QuantizedDense, QuantizedReLU
from keras_qrobust.transforms import UnsupportedModelError

keras = kq.keras
tf = kq.tf
layers = keras.layers
SAMPLES = np.random.default_rng(1).uniform(0, 1, (96, 28, 28, 1)).astype(np.float32)


def quantized_kernels(model):
    for layer in model.layers:
        if hasattr(layer, "quantized_kernels"):
            for attr, value in layer.quantized_kernels().items():
                yield layer, attr, value.numpy()


@pytest.mark.parametrize("setting", ["w8a8", "w4a4", "w2a2"])
@pytest.mark.parametrize("name", list(kq.zoo.MODELS))
def test_every_zoo_model_quantizes(name, setting, rng):
    kq.defenses.set_seed(0)  # the untrained weights (the agreement check below) must not depend on test order
    model = kq.zoo.get(name)
    randomize_batchnorm(model, rng)
    weight_bits, activation_bits = kq.parse_setting(setting)
    qmodel = kq.RobustQuantizer(weight_bits, activation_bits, input_weight_bits=weight_bits).quantize(model, SAMPLES)
    assert not any(isinstance(l, layers.BatchNormalization) for l in qmodel.layers)
    kinds = {type(l).__name__ for l in qmodel.layers}
    assert not kinds & {"Dense", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "ReLU"}, kinds
    for layer, attr, kernel in quantized_kernels(qmodel):  # every kernel on a <= 2^b-level grid
        axes = (0, 1) if attr == "depthwise_kernel" else tuple(range(kernel.ndim - 1))
        flat = np.moveaxis(kernel, axes, tuple(range(len(axes)))).reshape(-1, *kernel.shape[len(axes):])
        for channel in flat.reshape(flat.shape[0], -1).T:
            assert len(np.unique(channel)) <= 2 ** weight_bits, (layer.name, attr)
    relus = [layer for layer in qmodel.layers if isinstance(layer, QuantizedReLU)]
    assert all(layer.activation_max.numpy() > 0 for layer in relus)
    assert relus
    # one probe for every ReLU (a model per layer would trace a predict function per layer)
    found = keras.Model(qmodel.inputs, [layer.output for layer in relus]).predict(SAMPLES[:8], verbose=0)
    for layer, outputs in zip(relus, found if len(relus) > 1 else [found]):
        assert len(np.unique(outputs)) <= 2 ** activation_bits, layer.name
    outputs = qmodel.predict(SAMPLES, verbose=0)
    assert np.all(np.isfinite(outputs))
    if setting == "w8a8":
        agreement = np.mean(outputs.argmax(1) == model.predict(SAMPLES, verbose=0).argmax(1))
        assert agreement >= 0.9


def test_first_layer_uses_input_weight_bits_and_mu_law_last():
    qmodel = kq.RobustQuantizer(4, 4, input_weight_bits=8, mu_law_last=1).quantize(kq.zoo.cnn_small(), SAMPLES)
    assert qmodel.get_layer("conv1").quantizers["kernel_quantizer"].bits == 8
    assert qmodel.get_layer("conv2").quantizers["kernel_quantizer"].bits == 4
    assert str(qmodel.get_layer("logits").quantizers["kernel_quantizer"]) == "mu_law(4, mu=255, compand)"
    assert qmodel.name == "cnn_small_w4a4"


def test_weight_only_keeps_float_relus():
    qmodel = kq.RobustQuantizer(3, None).quantize(kq.zoo.cnn_small())
    assert not any(isinstance(l, QuantizedReLU) for l in qmodel.layers)
    assert isinstance(qmodel.get_layer("fc1"), QuantizedDense)


def test_max_calibration_equals_largest_relu_output_of_first_layer():
    model = kq.zoo.cnn_small()
    qmodel = kq.RobustQuantizer(8, 4, input_weight_bits=None, calibration="max").quantize(model, SAMPLES)
    first_weights_quantized = keras.Model(qmodel.inputs, qmodel.get_layer("conv1").output)
    expected = np.maximum(first_weights_quantized.predict(SAMPLES, verbose=0), 0).max()
    assert qmodel.get_layer("conv1_relu").activation_max.numpy() == pytest.approx(expected, rel=1e-6)


def test_percentile_calibration_clips_outliers_exactly():
    inputs = keras.Input((100,))
    model = keras.Model(inputs, layers.ReLU()(layers.Dense(100, kernel_initializer="identity")(inputs)))
    # values 0..99 and one 255 (so the input's 8-bit grid has step 1: every value is exact), 10 copies each
    samples = np.tile(np.arange(100, dtype=np.float32), (10, 1))
    samples[0, 0] = 255.0
    rq = kq.RobustQuantizer(16, 8, calibration="percentile", percentile=95.0, batch_size=3)
    relu = [l for l in rq.quantize(model, samples).layers if isinstance(l, QuantizedReLU)][0]
    assert relu.activation_max.numpy() == pytest.approx(95.0, abs=0.01)  # the 50th largest of 1000 values


def _single_relu_model(width):
    inputs = keras.Input((width,))
    return keras.Model(inputs, layers.ReLU()(layers.Dense(width, kernel_initializer="identity")(inputs)))


def test_mse_calibration_clips_a_rare_outlier_at_low_bits_only():
    samples = np.random.default_rng(0).uniform(0, 1, (1000, 10)).astype(np.float32)
    samples[0, 0] = 20.0  # one value in 10,000 is far out
    ranges = {}
    for bits in (2, 16):
        quantized = kq.RobustQuantizer(16, bits, calibration="mse").quantize(_single_relu_model(10), samples)
        relu = [l for l in quantized.layers
                if isinstance(l, QuantizedReLU)][0]
        ranges[bits] = float(relu.activation_max.numpy())
    assert 0.8 < ranges[2] < 1.5  # the bulk [0, 1] is kept, the outlier clipped
    assert ranges[16] > 19.0  # with 65,535 levels keeping the outlier costs nothing


def test_mse_calibration_minimizes_the_quantization_error():
    samples = np.random.default_rng(1).exponential(1.0, (500, 8)).astype(np.float32)
    relu = [l for l in kq.RobustQuantizer(16, 3, calibration="mse").quantize(_single_relu_model(8), samples).layers
            if isinstance(l, QuantizedReLU)][0]
    chosen = float(relu.activation_max.numpy())

    def error(top):
        step = top / 7
        return np.mean((np.floor(np.minimum(samples, top) / step + 0.5) * step - samples) ** 2)

    grid = np.linspace(0.05, samples.max(), 400)
    assert error(chosen) <= min(error(t) for t in grid) * 1.02
    assert kq.RobustQuantizer().calibration == "mse"  # the default


def test_callers_model_is_untouched(rng):
    model = kq.zoo.ds_cnn()
    randomize_batchnorm(model, rng)
    before = [w.copy() for w in model.get_weights()]
    config = model.get_config()
    kq.RobustQuantizer(4, 4).quantize(model, SAMPLES)
    assert model.get_config() == config
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fmt", ["keras", "savedmodel", "h5"])
@pytest.mark.parametrize("name", ["cnn_small", "ds_cnn", "resnet_small"])
def test_save_load_round_trip_is_identical_without_custom_objects(name, fmt, tmp_path, rng):
    model = kq.zoo.get(name)
    randomize_batchnorm(model, rng)
    qmodel = kq.RobustQuantizer(4, 4, mu_law_last=1).quantize(model, SAMPLES)
    path = tmp_path / {"keras": "m.keras", "savedmodel": "m_saved", "h5": "m.h5"}[fmt]
    qmodel.save(path, **({"save_format": "tf"} if fmt == "savedmodel" else {}))
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(SAMPLES, verbose=0), qmodel.predict(SAMPLES, verbose=0))
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in qmodel.layers]


def test_quantized_model_fine_tunes_with_fit_and_ste(fashion_slice):
    (x, y), _ = fashion_slice
    qmodel = kq.RobustQuantizer(4, 4).quantize(kq.zoo.cnn_small(), x[:256])
    kq.defenses.compile_classifier(qmodel)
    before = qmodel.get_layer("conv2").kernel.numpy().copy()
    history = qmodel.fit(x[:512], y[:512], epochs=2, batch_size=64, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert not np.array_equal(before, qmodel.get_layer("conv2").kernel.numpy())


def test_unsupported_layer_error_names_it():
    model = keras.Sequential([keras.Input((10, 4)), layers.LSTM(8, name="my_lstm"), layers.Dense(2)])
    with pytest.raises(UnsupportedModelError, match=r"layer 'my_lstm' \(LSTM\)"):
        kq.RobustQuantizer(4, 4).quantize(model, np.zeros((2, 10, 4), np.float32))


def test_tf_op_layer_error_explains_the_fix():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, layers.Dense(2)(inputs * 2.0))
    with pytest.raises(UnsupportedModelError, match="TFOpLambda.*Keras layer instead"):
        kq.RobustQuantizer(4, None).quantize(model)


def test_already_quantized_model_is_rejected():
    qmodel = kq.RobustQuantizer(4, None).quantize(kq.zoo.cnn_small())
    with pytest.raises(UnsupportedModelError, match="already quantized"):
        kq.RobustQuantizer(4, None).quantize(qmodel)


def test_keras3_model_gives_the_documented_type_error():
    import keras as keras3

    model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])
    with pytest.raises(TypeError, match=r"Keras 3 model.*tf_keras.*kq.keras"):
        kq.RobustQuantizer(4, 4).quantize(model, np.zeros((1, 4), np.float32))


def test_learned_activation_ranges_start_calibrated_train_and_export_exactly(fashion_slice, tmp_path):
    """The ranges start where calibration puts them (the same function as the frozen model),
    are trained by fit, survive saving, and the file exported after training is still the
    Keras model once the biases are on the new ranges' int32 grid."""
    (x, y), (x_test, _) = fashion_slice
    keras.utils.set_random_seed(0)
    model = kq.zoo.cnn_small()
    frozen = kq.RobustQuantizer(4, 4).quantize(model, x[:256])
    learned = kq.RobustQuantizer(4, 4, learn_activation_ranges=True).quantize(model, x[:256])
    np.testing.assert_array_equal(learned.predict(x_test, verbose=0), frozen.predict(x_test, verbose=0))
    relus = [layer for layer in learned.layers if isinstance(layer, QuantizedReLU)]
    assert relus and all(layer.activation_max.trainable for layer in relus)
    assert not any(layer.activation_max.trainable for layer in frozen.layers if isinstance(layer, QuantizedReLU))
    before = [float(layer.activation_max.numpy()) for layer in relus]
    kq.defenses.compile_classifier(learned)
    learned.fit(x[:512], y[:512], epochs=1, batch_size=64, verbose=0)
    assert [float(layer.activation_max.numpy()) for layer in relus] != before
    learned.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert all(layer.activation_max.trainable for layer in loaded.layers if isinstance(layer, QuantizedReLU))
    np.testing.assert_array_equal(loaded.predict(x_test, verbose=0), learned.predict(x_test, verbose=0))
    kq.quantization.integer_bias.round_biases(learned)
    scores = learned.predict(x_test, verbose=0)
    deployed = kq.export.load(kq.export.tflite(learned, tmp_path / "m.tflite")).predict(x_test)
    assert np.mean(deployed.argmax(1) == scores.argmax(1)) >= 0.998  # ≤ 1 of 500 near-ties
    assert np.max(np.abs(deployed - scores)) <= learned.get_layer("output_quantizer").step * 1.01


@pytest.mark.parametrize("setting, clip", [("w4a4", None), ("w2a2", None), ("w3", {"conv2": 0.7, "fc1": 0.5})])
def test_grid_valued_kernels_keep_the_function_bit_for_bit_and_compress(setting, clip, fashion_slice, tmp_path):
    import zipfile

    (x, _), (x_test, y_test) = fashion_slice
    keras.utils.set_random_seed(0)
    quantizer = kq.RobustQuantizer.from_setting(setting, layer_clip=clip)
    qmodel = quantizer.quantize(kq.zoo.cnn_small(), x[:256] if quantizer.activation_bits else None)
    before = qmodel.predict(x_test, verbose=0)
    batch = tf.constant(x_test[:64])
    labels = tf.constant(y_test[:64])

    def input_gradient():
        with tf.GradientTape() as tape:
            tape.watch(batch)
            loss = keras.losses.sparse_categorical_crossentropy(labels, qmodel(batch), from_logits=True)
        return tape.gradient(loss, batch).numpy()

    gradient = input_gradient()
    quantized = {name: qmodel.get_layer(name).quantized_kernels()["kernel"].numpy() for name in ("conv2", "fc1")}
    names = ("conv1", "conv2", "fc1", "logits")

    def channel_max():
        return [np.abs(qmodel.get_layer(n).kernel.numpy()).reshape(-1, qmodel.get_layer(n).kernel.shape[-1]).max(0)
                for n in names]

    scales = channel_max()
    replaced = kq.quantization.grid_valued_kernels(qmodel)
    assert replaced == ["conv1.kernel", "conv2.kernel", "fc1.kernel", "logits.kernel"]
    for before_max, after_max in zip(scales, channel_max()):  # each channel's scale is unchanged
        np.testing.assert_array_equal(after_max, before_max)
    stored = [w.copy() for w in qmodel.get_weights()]
    kq.quantization.grid_valued_kernels(qmodel)  # a second call changes nothing
    for a, b in zip(stored, qmodel.get_weights()):
        np.testing.assert_array_equal(a, b)
    after = qmodel.predict(x_test, verbose=0)
    if clip is None:  # W + (Q(W) − W) was Q(W) exactly: the same function, bit for bit
        np.testing.assert_array_equal(after, before)
        np.testing.assert_array_equal(input_gradient(), gradient)
    else:  # clipped entries were Q(W) up to float32 rounding
        np.testing.assert_allclose(after, before, rtol=0, atol=1e-5)
        np.testing.assert_array_equal(after.argmax(1), before.argmax(1))
    for name, values in quantized.items():
        kernel = qmodel.get_layer(name).kernel.numpy()
        np.testing.assert_array_equal(qmodel.get_layer(name).quantized_kernels()["kernel"].numpy(), values)
        # at most 2^b − 1 values per channel besides the kept largest entries
        assert max(len(np.unique(kernel[..., c])) for c in range(kernel.shape[-1])) <= 2 ** quantizer.weight_bits + 1
    path = tmp_path / "m.keras"
    qmodel.save(path)
    with zipfile.ZipFile(path) as stored:
        raw = stored.read("model.weights.h5")
    import zlib

    assert len(zlib.compress(raw, 9)) < len(raw) / 2.5


def test_grid_valued_kernels_leave_float_and_mu_law_kernels(rng):
    model = kq.zoo.cnn_small()
    qmodel = kq.RobustQuantizer(4, None, mu_law_last=1).quantize(model)
    mu_law = qmodel.layers[-1].kernel.numpy().copy()
    assert "logits.kernel" not in kq.quantization.grid_valued_kernels(qmodel)
    np.testing.assert_array_equal(qmodel.layers[-1].kernel.numpy(), mu_law)
    assert kq.quantization.grid_valued_kernels(model) == []


@pytest.mark.parametrize("samples, error, match", [
    (None, ValueError, "samples are needed"),
    (np.zeros((0, 28, 28, 1)), ValueError, "empty"),
    (np.zeros((4, 28, 28)), ValueError, r"expects \(N, 28, 28, 1\)"),
    (np.full((4, 28, 28, 1), np.nan), ValueError, "NaN"),
])
def test_bad_samples(samples, error, match):
    with pytest.raises(error, match=match):
        kq.RobustQuantizer(4, 4).quantize(kq.zoo.cnn_small(), samples)


@pytest.mark.parametrize("kwargs, match", [
    ({"weight_bits": None, "activation_bits": None}, "needs weight_bits or activation_bits"),
    ({"weight_bits": 0}, r"weight_bits must be in \[1, 16\]"),
    ({"calibration": "entropy"}, "calibration must be one of"),
    ({"mu_law_last": -1}, "mu_law_last"),
    ({"weight_bits": None, "mu_law_last": 1}, "mu_law_last needs weight_bits"),
    ({"activation_bits": None, "learn_activation_ranges": True}, "learn_activation_ranges needs activation_bits"),
])
def test_bad_quantizer_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        kq.RobustQuantizer(**kwargs)


def test_settings_parse_and_print():
    assert kq.parse_setting("w4a4") == (4, 4)
    assert kq.parse_setting("W3") == (3, None)
    assert kq.RobustQuantizer.from_setting("w3").setting == "w3"
    assert str(kq.RobustQuantizer(4, 4)) == "RobustQuantizer(w4a4, input w8, per-axis, mse calibration)"
    assert str(kq.RobustQuantizer(4, 4, learn_activation_ranges=True)).endswith("mse calibration, learned ranges)")
    with pytest.raises(ValueError, match="wXaY"):
        kq.parse_setting("4bit")
    with pytest.raises(dataclasses.FrozenInstanceError):
        kq.RobustQuantizer(4, 4).weight_bits = 2  # immutable


def test_non_relu_hidden_activation_warns():
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3, activation="tanh", name="h"), layers.Dense(2)])
    with pytest.warns(UserWarning, match=r"8-bit grid instead: h_tanh \(tanh\)"):
        kq.RobustQuantizer(4, 4).quantize(model, np.zeros((2, 4), np.float32))


def test_lipschitz_layers_quantize_as_the_kernels_they_compute_with(rng):
    samples = rng.uniform(0, 1, (64, 28, 28, 1)).astype(np.float32)
    model = kq.transforms.to_lipschitz(kq.zoo.cnn_small(), spectral_norm=True)
    quantized = kq.RobustQuantizer(8, 8).quantize(model, samples)
    assert not any("Lipschitz" in type(layer).__name__ for layer in quantized.layers)
    expected = model.predict(samples, verbose=0)
    assert np.mean(quantized.predict(samples, verbose=0).argmax(-1) == expected.argmax(-1)) > 0.95


def test_mu_law_layer_before_quantization_is_an_error_with_the_fix(rng):
    samples = rng.uniform(0, 1, (16, 28, 28, 1)).astype(np.float32)
    mapped = kq.apply_mu_law(kq.zoo.cnn_small(), mode="map")
    with pytest.raises(UnsupportedModelError, match="mu_law_last"):
        kq.RobustQuantizer(4, 4).quantize(mapped, samples)

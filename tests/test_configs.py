import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import keras_qrobust as kq
from conftest import randomize_batchnorm
from keras_qrobust import quantizers as qz

keras = kq.keras
tfq = tfmot.quantization.keras


def qat(model, scheme):
    return tfq.quantize_apply(tfq.quantize_annotate_model(model), scheme=scheme)


def wrapper_quantizers(model):
    found = []
    for layer in model.layers:
        if isinstance(layer, tfq.QuantizeWrapperV2):
            found += [q for _, q in layer.quantize_config.get_weights_and_quantizers(layer.layer)]
            found += layer.quantize_config.get_output_quantizers(layer.layer)
            if layer.quantize_config.activation_attrs:
                found.append(layer.quantize_config._activation_quantizer())
    return found


@pytest.mark.parametrize("name", ["cnn_small", "ds_cnn", "resnet_small"])
def test_quantize_apply_with_wxay_scheme_trains_with_fit(name, fashion_slice, rng):
    (x, y), _ = fashion_slice
    model = kq.zoo.get(name)
    randomize_batchnorm(model, rng)
    q = qat(model, kq.WXAYScheme(4, 4))
    assert all(isinstance(l, (tfq.QuantizeWrapperV2, keras.layers.InputLayer)) for l in q.layers)
    assert not any(isinstance(getattr(l, "layer", None), keras.layers.BatchNormalization) for l in q.layers)
    used = wrapper_quantizers(q)
    # the ActivationQuantizer whose EMA follows the global batch under a tf.distribute strategy
    assert qz.SymmetricQuantizer(4) in used
    assert kq.quantization.tfmot_scheme.GlobalBatchActivationQuantizer(4, ema_decay=0.999) in used
    kq.defenses.compile_classifier(q)
    history = q.fit(x[:512], y[:512], epochs=2, batch_size=64, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    ranges = [v for v in q.variables if v.name.endswith("_max:0")]
    assert ranges and all(0 < v.numpy() < 50 for v in ranges)  # set by the first batch, not 6.0


def test_weight_only_scheme_quantizes_no_activation():
    q = qat(kq.zoo.cnn_small(), kq.WXScheme(3))
    used = wrapper_quantizers(q)
    assert qz.SymmetricQuantizer(3) in used
    assert not any(isinstance(u, qz.ActivationQuantizer) for u in used)


def test_qat_wrapper_computes_with_the_quantized_kernel(rng):
    q = qat(kq.zoo.cnn_small(), kq.WXScheme(3))
    wrapper = q.get_layer("quant_logits")
    kernel = [w for w in wrapper.trainable_weights if "kernel" in w.name][0].numpy()
    bias = [w for w in wrapper.trainable_weights if "bias" in w.name][0].numpy()
    x = rng.uniform(0, 1, (4, 28, 28, 1)).astype(np.float32)
    features = keras.Model(q.inputs, wrapper.input).predict(x, verbose=0)
    quantized = qz.SymmetricQuantizer(3)(kernel, False, {}).numpy()
    assert max(len(np.unique(c)) for c in quantized.T) <= 7
    np.testing.assert_allclose(q.predict(x, verbose=0), features @ quantized + bias, rtol=1e-4, atol=1e-5)
    assert np.abs(features @ kernel + bias - q.predict(x, verbose=0)).max() > 1e-3


@pytest.mark.parametrize("fmt", ["h5", "savedmodel"])
def test_qat_model_saves_and_loads_without_custom_objects(fmt, tmp_path, rng):
    model = kq.zoo.ds_cnn()
    randomize_batchnorm(model, rng)
    q = qat(model, kq.WXAYScheme(4, 4))
    x = rng.uniform(0, 1, (8, 28, 28, 1)).astype(np.float32)
    path = tmp_path / ("m.h5" if fmt == "h5" else "m_saved")
    q.save(path, **({"save_format": "tf"} if fmt == "savedmodel" else {}))
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), q.predict(x, verbose=0))


def test_unsupported_layer_in_scheme_names_it():
    model = keras.Sequential([keras.Input((6, 4)), keras.layers.LSTM(3, name="rnn"), keras.layers.Dense(2)])
    with pytest.raises(RuntimeError, match=r"Layer rnn:.*LSTM.* is not supported.*QuantizeConfig"):
        qat(model, kq.WXAYScheme(4, 4))
    registry = kq.WXAYScheme(4, 4).get_quantize_registry()
    with pytest.raises(ValueError, match=r"WXAYScheme cannot quantize layer 'rnn' \(LSTM\)"):
        registry.get_quantize_config(model.get_layer("rnn"))


def test_quantize_config_round_trip():
    config = kq.WXAYQuantizeConfig(4, 4, weight_attrs=["kernel"], activation_attrs=["activation"])
    assert kq.WXAYQuantizeConfig.from_config(config.get_config()) == config
    with pytest.raises(ValueError, match="without activation_bits"):
        kq.WXAYQuantizeConfig(4, None, quantize_output=True)


def test_calibrate_tfmot_sets_ranges_without_touching_weights(fashion_slice, trained_cnn):
    (x, _), (xt, yt) = fashion_slice
    from tensorflow_model_optimization.python.core.quantization.keras.experimental.default_n_bit import (
        default_n_bit_quantize_scheme as nbit)
    q = qat(trained_cnn, nbit.DefaultNBitQuantizeScheme(num_bits_weight=8, num_bits_activation=8))
    trainable_before = [w.numpy().copy() for w in q.trainable_weights]
    uncalibrated = kq.metrics.accuracy(q, xt, yt)
    ranges = kq.calibrate_tfmot(q, x[:512], batch_size=256)
    for before, after in zip(trainable_before, q.trainable_weights):
        np.testing.assert_array_equal(before, after.numpy())
    conv1_relu = keras.Model(trained_cnn.inputs, trained_cnn.get_layer("conv1").output)
    largest = conv1_relu.predict(x[:512], verbose=0).max()
    assert float(ranges["quant_conv1/post_activation_min:0"]) == 0.0
    assert float(ranges["quant_conv1/post_activation_max:0"]) == pytest.approx(largest, rel=0.02)
    float_accuracy = kq.metrics.accuracy(trained_cnn, xt, yt)
    calibrated = kq.metrics.accuracy(q, xt, yt)
    assert abs(calibrated - float_accuracy) <= 0.01
    assert calibrated >= uncalibrated - 0.01


def test_calibrate_tfmot_rejects_a_float_model():
    with pytest.raises(ValueError, match="no quantizer ranges"):
        kq.calibrate_tfmot(kq.zoo.cnn_small(), np.zeros((2, 28, 28, 1), np.float32))

"""MuLawDense and the apply_mu_law rewrite (Song et al. 2020, eq. 3)."""

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust import quantizers as qz
from keras_qrobust.layers import LipschitzDense, MuLawDense, QuantizedDense
from keras_qrobust.transforms import UnsupportedModelError, apply_mu_law, to_lipschitz

keras = kq.keras
tf = kq.tf
layers = keras.layers


# ---------------------------------------------------------- numpy reference (float64)
def compress(x, mu):
    return np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)


def expand(y, mu):
    return np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu


def grid(y, bits):
    """Symmetric b-bit grid on [-1, 1], rounding half away from zero."""
    levels = 2 ** (bits - 1) - 1
    return np.clip(np.sign(y) * np.floor(np.abs(y) * levels + 0.5), -levels, levels) / levels


def compand_reference(w, mu, bits):
    s = np.abs(w).max()
    return s * expand(grid(compress(w / s, mu), bits), mu)


def map_reference(w, mu, bits=None):
    s = np.abs(w).max()
    wn = w / s if bits is None else grid(w / s, bits)
    return s * compress(wn, mu)


def mu_dense(rng, n_in=6, **kwargs):
    layer = MuLawDense(4, **kwargs)
    keras.Sequential([keras.Input((n_in,)), layer])
    kernel = rng.normal(size=(n_in, 4)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    layer.set_weights([kernel, bias])
    return layer, kernel.astype(np.float64), bias


# ------------------------------------------------------------------------ MuLawDense
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("mu", [255.0, 10.0])
def test_compand_kernel_and_output_equal_the_formula(bits, mu, rng):
    layer, kernel, bias = mu_dense(rng, mu=mu, mode="compand", bits=bits)
    expected = compand_reference(kernel, mu, bits)
    np.testing.assert_allclose(layer.quantized_kernels()["kernel"].numpy(), expected, rtol=1e-5, atol=1e-7)
    x = rng.normal(size=(3, 6)).astype(np.float32)
    np.testing.assert_allclose(layer(x).numpy(), x @ expected + bias, rtol=1e-5, atol=1e-5)
    # A non-uniform grid: at most 2^b - 1 distinct values, all of the form s·F⁻¹(k/L).
    levels = 2 ** (bits - 1) - 1
    codes = compress(layer.quantized_kernels()["kernel"].numpy() / np.abs(kernel).max(), mu) * levels
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)


@pytest.mark.parametrize("bits", [None, 3])
@pytest.mark.parametrize("mu", [255.0, 10.0])
def test_map_kernel_and_output_equal_the_formula(bits, mu, rng):
    layer, kernel, bias = mu_dense(rng, mu=mu, mode="map", bits=bits)
    mapped = layer.quantized_kernels()["kernel"].numpy()
    expected = map_reference(kernel, mu, bits)
    np.testing.assert_allclose(mapped, expected, rtol=1e-5, atol=1e-7)
    x = rng.normal(size=(3, 6)).astype(np.float32)
    np.testing.assert_allclose(layer(x).numpy(), x @ expected + bias, rtol=1e-5, atol=1e-5)
    # F(1) = 1 keeps the scale; F is odd and increasing, so signs and order are kept.
    np.testing.assert_allclose(np.abs(mapped).max(), np.abs(kernel).max(), rtol=1e-6)
    assert np.all(np.sign(mapped) * np.sign(kernel) >= 0)  # the 3-bit grid may round to zero
    if bits is None:
        order = np.argsort(kernel.ravel())
        assert np.all(np.diff(mapped.ravel()[order]) > 0)


def test_map_mode_keeps_the_true_gradient_of_the_mapping(rng):
    layer, kernel, _ = mu_dense(rng, mu=255.0, mode="map")
    with tf.GradientTape() as tape:
        mapped = tf.reduce_sum(layer.quantized_kernels()["kernel"])
    grad = tape.gradient(mapped, layer.kernel).numpy()
    s, mu = np.abs(kernel).max(), 255.0
    # d/dW s·F(W/s) with s held constant = F'(W/s) = μ/((1 + μ|W/s|)·ln(1 + μ)).
    np.testing.assert_allclose(grad, mu / ((1 + mu * np.abs(kernel / s)) * np.log1p(mu)), rtol=1e-5)


def test_mu_law_dense_config_round_trip():
    layer = MuLawDense(5, mu=100.0, mode="compand", bits=3, activation="relu", use_bias=False, name="m")
    config = layer.get_config()
    assert (config["mu"], config["mode"], config["bits"]) == (100.0, "compand", 3)
    assert "kernel_quantizer" not in config
    assert {k: v for k, v in config.items() if k not in ("mu", "mode", "bits")} == layers.Dense(
        5, activation="relu", use_bias=False, name="m").get_config()
    assert MuLawDense.from_config(config).get_config() == config


@pytest.mark.parametrize("kwargs, message", [({"mode": "compand"}, "needs bits"), ({"mode": "expand"}, "mode"),
                                             ({"mode": "map", "mu": 0.0}, "mu must be > 0"),
                                             ({"mode": "map", "bits": 0}, "bits")])
def test_mu_law_dense_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MuLawDense(3, **kwargs)


# ---------------------------------------------------------------------- apply_mu_law
def mlp_after_conv(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6, 6, 1)),
        layers.Conv2D(3, 3, activation="relu", name="conv"),
        layers.Flatten(name="flatten"),
        layers.Dense(8, activation="relu", name="fc1"),
        layers.Dense(6, activation="relu", name="fc2"),
        layers.Dense(3, name="fc3"),
    ])


@pytest.mark.parametrize("mode, bits", [("compand", 4), ("map", None)])
def test_apply_mu_law_changes_only_the_last_n_and_leaves_the_callers_model(mode, bits, rng):
    model = mlp_after_conv()
    before = [w.copy() for w in model.get_weights()]
    x = rng.normal(size=(4, 6, 6, 1)).astype(np.float32)
    y_before = model(x).numpy()

    mapped = apply_mu_law(model, last_n=2, mode=mode, bits=bits)

    assert [type(l).__name__ for l in model.layers] == ["Conv2D", "Flatten", "Dense", "Dense", "Dense"]
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model(x).numpy(), y_before)

    assert [type(l).__name__ for l in mapped.layers[1:]] == ["Conv2D", "Flatten", "Dense", "MuLawDense",
                                                              "MuLawDense"]
    for a, b in zip(before, mapped.get_weights()):
        np.testing.assert_array_equal(a, b)
    for name in ("fc2", "fc3"):
        layer = mapped.get_layer(name)
        assert (layer.mu_law.mode, layer.mu_law.bits, layer.mu_law.mu) == (mode, bits, 255.0)
        assert layer.get_config()["activation"] == model.get_layer(name).get_config()["activation"]

    # The new model is the old one with fc2 and fc3 computing with the mapped kernels.
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    for name in ("fc2", "fc3"):
        kernel, bias = model.get_layer(name).get_weights()
        w = kernel.astype(np.float64)
        new = compand_reference(w, 255.0, bits) if mode == "compand" else map_reference(w, 255.0)
        reference.get_layer(name).set_weights([new.astype(np.float32), bias])
    np.testing.assert_allclose(mapped(x).numpy(), reference(x).numpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(mapped(x).numpy() - y_before).max() > 1e-3


def test_apply_mu_law_on_a_robust_quantizer_output_equals_mu_law_last(rng):
    model = mlp_after_conv()
    rq = kq.RobustQuantizer(weight_bits=4, activation_bits=None, input_weight_bits=8)
    qmodel = rq.quantize(model)
    mapped = apply_mu_law(qmodel, last_n=2)
    layer = mapped.get_layer("fc3")
    assert type(layer) is QuantizedDense
    assert layer.quantizers["kernel_quantizer"] == qz.MuLawQuantizer(4, mu=255.0, mode="compand")
    assert mapped.get_layer("fc1").quantizers == qmodel.get_layer("fc1").quantizers
    expected = kq.RobustQuantizer(weight_bits=4, activation_bits=None, input_weight_bits=8, mu_law_last=2)
    x = rng.normal(size=(4, 6, 6, 1)).astype(np.float32)
    np.testing.assert_array_equal(mapped(x).numpy(), expected.quantize(model)(x).numpy())
    # map mode keeps the layer's 4-bit grid and maps it: s·F(Q_4(W/s)).
    kernel = qmodel.get_layer("fc3").get_weights()[0].astype(np.float64)
    mapped_kernel = apply_mu_law(qmodel, mode="map").get_layer("fc3").quantized_kernels()["kernel"].numpy()
    np.testing.assert_allclose(mapped_kernel, map_reference(kernel, 255.0, 4), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("extension", ["keras", "h5"])
def test_mu_law_model_save_load_round_trip_without_custom_objects(extension, rng, tmp_path):
    mapped = apply_mu_law(mlp_after_conv(), last_n=1, mu=50.0, mode="compand", bits=3)
    path = tmp_path / f"model.{extension}"
    mapped.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer("fc3")) is MuLawDense
    assert loaded.get_layer("fc3").mu_law == qz.MuLawQuantizer(3, mu=50.0, mode="compand")
    x = rng.normal(size=(2, 6, 6, 1)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x).numpy(), mapped(x).numpy())


def test_apply_mu_law_twice_resets_the_settings_instead_of_stacking(rng):
    model = mlp_after_conv()
    twice = apply_mu_law(apply_mu_law(model, mode="map"), mode="compand", bits=5)
    once = apply_mu_law(model, mode="compand", bits=5)
    x = rng.normal(size=(2, 6, 6, 1)).astype(np.float32)
    np.testing.assert_array_equal(twice(x).numpy(), once(x).numpy())


def test_too_few_weight_layers_names_the_count():
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="a"), layers.Dense(2, name="b")])
    with pytest.raises(UnsupportedModelError, match=r"only 2 weight layer\(s\), 2 of them Dense.*last_n <= 2"):
        apply_mu_law(model, last_n=3, mode="map")


def test_a_convolution_among_the_last_n_is_rejected_with_the_fix():
    with pytest.raises(UnsupportedModelError, match=r"Dense layers only.*'conv' \(Conv2D\).*last_n <= 3.*mu_law_last"):
        apply_mu_law(mlp_after_conv(), last_n=4, mode="map")


def test_a_lipschitz_layer_among_the_last_n_points_to_strip_lipschitz():
    model = to_lipschitz(mlp_after_conv(), layers=["fc3"])
    assert type(model.get_layer("fc3")) is LipschitzDense
    with pytest.raises(UnsupportedModelError, match="strip_lipschitz"):
        apply_mu_law(model, mode="map")


@pytest.mark.parametrize("kwargs, error, message", [
    ({"last_n": 0}, ValueError, "last_n"),
    ({"last_n": True}, ValueError, "last_n"),
    ({"mode": "compress"}, ValueError, "mode"),
    ({"mode": "compand"}, ValueError, "needs bits.*'fc3'"),
    ({"mode": "compand", "bits": 17}, ValueError, "bits"),
    ({"mode": "map", "mu": -1.0}, ValueError, "mu"),
])
def test_apply_mu_law_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        apply_mu_law(mlp_after_conv(), **kwargs)

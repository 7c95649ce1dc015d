import math

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust.analysis import parseval_scale, quantization_lipschitz

keras = kq.keras
layers = keras.layers


def symmetric_numpy(w: np.ndarray, bits: int, keep: tuple) -> np.ndarray:
    """Symmetric max quantizer (docs/methods.md) written directly in numpy; ``keep`` = per-channel axes."""
    levels = max(2 ** (bits - 1) - 1, 1)
    reduce = tuple(a for a in range(w.ndim) if a not in keep)
    step = (np.abs(w).max(axis=reduce, keepdims=True) / np.float32(levels)).astype(np.float32)
    if bits == 1:
        return np.where(w >= 0, step, -step)
    return np.clip(np.sign(w) * np.floor(np.abs(w / step) + 0.5), -levels, levels) * step


def sigma(matrix: np.ndarray) -> float:
    return float(np.linalg.norm(matrix.astype(np.float64), 2))


@pytest.fixture(scope="module")
def model():
    kq.defenses.set_seed(0)
    net = keras.Sequential([
        keras.Input((16, 16, 3)),
        layers.Conv2D(6, 3, strides=2, activation="relu", name="conv_s2"),
        layers.DepthwiseConv2D(3, depth_multiplier=2, name="depthwise"),
        layers.SeparableConv2D(5, 2, name="separable"),
        layers.Conv2D(4, (3, 1), name="conv_31"),
        layers.Flatten(name="flatten"),
        layers.Dense(7, name="dense"),
    ])
    rng = np.random.default_rng(0)
    net.set_weights([rng.normal(0, 0.4, w.shape).astype(np.float32) for w in net.get_weights()])
    return net


def expected_sigma(layer, attribute: str, bits: int, per_axis: bool) -> float:
    w = getattr(layer, attribute).numpy()
    if attribute == "depthwise_kernel":
        keep = (2, 3) if per_axis else ()
        delta = symmetric_numpy(w, bits, keep) - w
        return max(sigma(delta[:, :, c, :].reshape(-1, w.shape[3])) for c in range(w.shape[2]))
    delta = symmetric_numpy(w, bits, (w.ndim - 1,) if per_axis else ()) - w
    return sigma(delta.reshape(-1, w.shape[-1]))


@pytest.mark.parametrize("bits,per_axis", [(4, True), (2, False), (1, True), (8, True)])
def test_matches_a_direct_numpy_computation(model, bits, per_axis):
    rows = quantization_lipschitz(model, bits, per_axis=per_axis)
    expected_rows = [("conv_s2", "Conv2D", "kernel"), ("depthwise", "DepthwiseConv2D", "depthwise_kernel"),
                     ("separable", "SeparableConv2D", "depthwise_kernel"),
                     ("separable", "SeparableConv2D", "pointwise_kernel"), ("conv_31", "Conv2D", "kernel"),
                     ("dense", "Dense", "kernel")]
    assert [(r["layer"], r["kind"], r["kernel"]) for r in rows] == expected_rows
    for row in rows:
        layer = model.get_layer(row["layer"])
        assert row["shape"] == tuple(getattr(layer, row["kernel"]).shape) and row["bits"] == bits
        np.testing.assert_allclose(row["sigma_max"], expected_sigma(layer, row["kernel"], bits, per_axis), rtol=1e-6)
        assert row["amplifying"] == (row["sigma_max"] > 1.0)


def test_parseval_scale_of_convolutions(model):
    rows = {(r["layer"], r["kernel"]): r for r in quantization_lipschitz(model, 4)}
    # sqrt(ceil(kh/sh) * ceil(kw/sw)): 3x3 stride 2 -> 2; 3x3 stride 1 -> 3; 2x2 -> 2; 3x1 -> sqrt(3); 1x1, Dense -> 1
    scales = {("conv_s2", "kernel"): 2.0, ("depthwise", "depthwise_kernel"): 3.0,
              ("separable", "depthwise_kernel"): 2.0, ("separable", "pointwise_kernel"): 1.0,
              ("conv_31", "kernel"): math.sqrt(3.0), ("dense", "kernel"): 1.0}
    for key, scale in scales.items():
        np.testing.assert_allclose(rows[key]["sigma_max_scaled"], scale * rows[key]["sigma_max"], rtol=1e-12)
    assert parseval_scale((5, 5, 1, 1), (2, 3)) == math.sqrt(3 * 2)


def test_same_quantizer_as_robust_quantizer_and_reads_float_kernels_of_quantized_layers(model):
    quantized = kq.RobustQuantizer(weight_bits=3, activation_bits=None, input_weight_bits=3).quantize(model)
    rows = quantization_lipschitz(model, 3)
    for row in rows:
        layer = quantized.get_layer(row["layer"])
        assert type(layer).__name__.startswith("Quantized")
        q_kernel = layer.quantized_kernels()[row["kernel"]].numpy()
        delta = q_kernel.astype(np.float64) - getattr(model.get_layer(row["layer"]), row["kernel"]).numpy()
        if row["kernel"] == "depthwise_kernel":
            direct = max(sigma(delta[:, :, c, :].reshape(-1, delta.shape[3])) for c in range(delta.shape[2]))
        else:
            direct = sigma(delta.reshape(-1, delta.shape[-1]))
        np.testing.assert_allclose(row["sigma_max"], direct, rtol=1e-6)
    # the quantized model's layers hold the same float kernels: the same rows
    assert [r["sigma_max"] for r in quantization_lipschitz(quantized, 3)] == pytest.approx(
        [r["sigma_max"] for r in rows], rel=1e-9)


def test_spectral_normalized_layers_are_read_as_the_kernel_they_compute_with():
    layer = kq.layers.LipschitzDense(5, spectral_norm=True, name="sn")
    net = keras.Sequential([keras.Input((8,)), layer])
    rng = np.random.default_rng(3)
    layer.kernel.assign(rng.normal(0, 2.0, (8, 5)).astype(np.float32))
    layer.power_iterate(50)
    effective = layer.kernel.numpy() / float(layer.spectral_sigma())
    delta = symmetric_numpy(effective, 2, (1,)) - effective
    (row,) = quantization_lipschitz(net, 2)
    np.testing.assert_allclose(row["sigma_max"], sigma(delta), rtol=1e-5)


def test_amplifying_flags_large_quantization_errors():
    net = keras.Sequential([keras.Input((16,)), layers.Dense(16, name="big"), layers.Dense(3, name="small")])
    rng = np.random.default_rng(1)
    net.get_layer("big").set_weights([rng.uniform(-20, 20, (16, 16)).astype(np.float32), np.zeros(16, np.float32)])
    net.get_layer("small").set_weights([rng.uniform(-0.01, 0.01, (16, 3)).astype(np.float32), np.zeros(3, np.float32)])
    big, small = quantization_lipschitz(net, 2)
    assert big["sigma_max"] > 1.0 and big["amplifying"]
    assert small["sigma_max"] < 1.0 and not small["amplifying"]


def test_finds_layers_inside_wrappers_and_nested_models(model):
    robust = kq.defenses.AdversarialModel(model, attack="fgsm_rs", eps=0.1)
    assert quantization_lipschitz(robust, 4) == quantization_lipschitz(model, 4)
    inner = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="inner_dense")], name="inner")
    outer = keras.Sequential([keras.Input((4,)), inner, layers.Dense(2, name="outer_dense")])
    assert [r["layer"] for r in quantization_lipschitz(outer, 4)] == ["inner_dense", "outer_dense"]


def test_errors():
    no_weights = keras.Sequential([keras.Input((6, 4)), layers.Conv1D(3, 2), layers.Flatten()])
    with pytest.raises(ValueError, match="no Dense, Conv2D, DepthwiseConv2D or SeparableConv2D layer"):
        quantization_lipschitz(no_weights, 4)
    transposed = keras.Sequential([keras.Input((4, 4, 1)), layers.Conv2DTranspose(2, 3), layers.Flatten(),
                                   layers.Dense(2, name="dense")])
    assert [r["layer"] for r in quantization_lipschitz(transposed, 4)] == ["dense"]
    dense = keras.Sequential([keras.Input((3,)), layers.Dense(2)])
    for bits in (0, 17):
        with pytest.raises(ValueError, match="bits must be in"):
            quantization_lipschitz(dense, bits)
    with pytest.raises(TypeError, match="bits must be an int"):
        quantization_lipschitz(dense, 4.5)

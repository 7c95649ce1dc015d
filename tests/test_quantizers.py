import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import keras_qrobust as kq
from keras_qrobust import quantizers as qz

tf = kq.tf

BITS = st.integers(1, 16)
FLOATS = st.floats(-50, 50, allow_nan=False, width=32)


def tensors(min_side=1, max_side=6, rank=2):
    return hnp.arrays(np.float32, hnp.array_shapes(min_dims=rank, max_dims=rank, min_side=min_side,
                                                    max_side=max_side), elements=FLOATS)


def apply(quantizer, x, weights=None):
    return quantizer.quantize(tf.constant(x), weights).numpy()


# ---------------------------------------------------------------- symmetric (per axis)
@given(x=tensors(), bits=BITS, per_axis=st.booleans())
def test_symmetric_values_on_grid_and_level_count(x, bits, per_axis):
    q = qz.SymmetricQuantizer(bits, per_axis=per_axis)
    out = apply(q, x)
    scale = np.abs(x).max(axis=0, keepdims=True) if per_axis else np.abs(x).max(keepdims=True)
    step = scale / max(2 ** (bits - 1) - 1, 1)
    codes = np.divide(out, step, out=np.zeros_like(out), where=step > 0)
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
    columns = out.T if per_axis else out.reshape(1, -1)
    for column in columns:
        assert len(np.unique(column)) <= 2 ** bits


@given(x=tensors(), bits=st.integers(2, 16), per_axis=st.booleans())
def test_symmetric_error_at_most_half_step(x, bits, per_axis):
    q = qz.SymmetricQuantizer(bits, per_axis=per_axis)
    out = apply(q, x)
    scale = np.abs(x).max(axis=0, keepdims=True) if per_axis else np.abs(x).max(keepdims=True)
    step = scale / (2 ** (bits - 1) - 1)
    assert np.all(np.abs(out - x) <= step / 2 * (1 + 1e-5) + 1e-6)


@given(x=tensors(), bits=BITS, per_axis=st.booleans())
def test_symmetric_idempotent(x, bits, per_axis):
    q = qz.SymmetricQuantizer(bits, per_axis=per_axis)
    once = apply(q, x)
    np.testing.assert_allclose(apply(q, once), once, rtol=1e-5, atol=1e-6)


def test_symmetric_scales_are_per_output_channel():
    x = np.array([[0.1, 10.0], [-0.05, -3.0], [0.02, 7.0]], np.float32)
    out = apply(qz.SymmetricQuantizer(2, per_axis=True), x)  # levels {-s, 0, s} per column
    np.testing.assert_allclose(out[:, 0], [0.1, -0.1, 0.0], atol=1e-7)
    np.testing.assert_allclose(out[:, 1], [10.0, 0.0, 10.0], atol=1e-6)
    per_tensor = apply(qz.SymmetricQuantizer(2, per_axis=False), x)
    np.testing.assert_allclose(per_tensor[:, 0], 0.0)


def test_symmetric_depthwise_axis_takes_one_scale_per_output_channel():
    kernel = np.random.default_rng(0).normal(size=(3, 3, 4, 2)).astype(np.float32)
    out = apply(qz.SymmetricQuantizer(1, axis=(-2, -1)), kernel)
    for c in range(4):
        for m in range(2):
            np.testing.assert_allclose(np.abs(out[:, :, c, m]), np.abs(kernel[:, :, c, m]).max(), rtol=1e-6)


def test_binary_is_sign_times_scale():
    x = np.array([[0.5, -2.0], [-0.25, 1.0], [0.0, -1.5]], np.float32)
    out = apply(qz.SymmetricQuantizer(1), x)
    np.testing.assert_allclose(out, [[0.5, -2.0], [-0.5, 2.0], [0.5, -2.0]])


# ----------------------------------------------------------------- uniform (asymmetric)
@given(x=tensors(), bits=BITS, per_axis=st.booleans())
def test_uniform_grid_levels_error_idempotent(x, bits, per_axis):
    q = qz.UniformQuantizer(bits, per_axis=per_axis)
    out = apply(q, x)
    axis = 0 if per_axis else None
    lo, hi = x.min(axis=axis, keepdims=True), x.max(axis=axis, keepdims=True)
    step = (hi - lo) / (2 ** bits - 1)
    codes = np.divide(out - lo, step, out=np.zeros_like(out), where=step > 0)
    np.testing.assert_allclose(codes, np.round(codes), atol=2e-3)
    assert np.all(np.abs(out - x) <= step / 2 * (1 + 1e-4) + 1e-5)
    columns = out.T if per_axis else out.reshape(1, -1)
    assert all(len(np.unique(c)) <= 2 ** bits for c in columns)
    np.testing.assert_allclose(apply(q, out), out, rtol=1e-5, atol=1e-5)


def test_uniform_matches_zhou_equation_6():
    x = np.array([-1.0, -0.2, 0.3, 2.0], np.float32)
    lo, hi, n = -1.0, 2.0, 2 ** 3 - 1
    expected = lo + np.round((x - lo) * n / (hi - lo)) * (hi - lo) / n
    np.testing.assert_allclose(apply(qz.UniformQuantizer(3), x), expected, rtol=1e-6)


def test_constant_tensor_is_left_unchanged():
    x = np.full((3, 2), 0.7, np.float32)
    np.testing.assert_allclose(apply(qz.UniformQuantizer(4), x), x)
    np.testing.assert_allclose(apply(qz.SymmetricQuantizer(4), x), x, rtol=1e-6)


# ------------------------------------------------------------------------- activations
def _activation_weights(max_value):
    return {"max": tf.Variable(float(max_value)), "initialized": tf.Variable(1.0)}


@given(x=hnp.arrays(np.float32, st.integers(1, 40), elements=FLOATS), bits=BITS,
       max_value=st.floats(0.1, 20))
def test_activation_unsigned_grid_and_error(x, bits, max_value):
    q = qz.ActivationQuantizer(bits)
    weights = _activation_weights(max_value)
    out = q(tf.constant(x), False, weights).numpy()
    step = np.float32(max_value) / (2 ** bits - 1)
    assert out.min() >= 0 and out.max() <= np.float32(max_value) * (1 + 1e-6)
    np.testing.assert_allclose(out / step, np.round(out / step), atol=2e-3)
    inside = (x >= 0) & (x <= max_value)
    assert np.all(np.abs(out - x)[inside] <= step / 2 * (1 + 1e-4) + 1e-6)
    assert len(np.unique(out)) <= 2 ** bits
    np.testing.assert_allclose(q(tf.constant(out), False, weights).numpy(), out, rtol=1e-5, atol=1e-6)


def test_activation_gradient_is_straight_through_inside_range_only():
    q = qz.ActivationQuantizer(2)
    weights = _activation_weights(1.0)
    x = tf.constant([-0.5, 0.1, 0.45, 0.9, 1.5])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = q(x, False, weights)
    np.testing.assert_allclose(tape.gradient(y, x).numpy(), [0, 1, 1, 1, 0])


def test_activation_range_initialised_by_first_training_batch_then_ema():
    layer = kq.keras.layers.Layer()
    q = qz.ActivationQuantizer(4, ema_decay=0.9)
    weights = q.build(None, "act", layer)
    q(tf.constant([0.0, 3.0]), True, weights)
    assert weights["max"].numpy() == pytest.approx(3.0)
    q(tf.constant([0.0, 5.0]), True, weights)
    assert weights["max"].numpy() == pytest.approx(0.9 * 3.0 + 0.1 * 5.0)
    q(tf.constant([0.0, 50.0]), False, weights)  # inference never moves the range
    assert weights["max"].numpy() == pytest.approx(3.2)


@given(x=hnp.arrays(np.float32, st.integers(1, 40), elements=FLOATS), bits=st.integers(1, 8),
       max_value=st.floats(0.1, 20))
def test_learned_range_computes_what_the_frozen_range_computes(x, bits, max_value):
    frozen = qz.ActivationQuantizer(bits)(tf.constant(x), False, _activation_weights(max_value)).numpy()
    learned = qz.ActivationQuantizer(bits, learn_range=True)(tf.constant(x), False, _activation_weights(max_value))
    np.testing.assert_array_equal(learned.numpy(), frozen)


def test_learned_range_gradients_are_lsq_inside_and_pact_above():
    """With max = 3 on 2 bits (L = 3, Δ = 1): ∂x̂/∂x is 1 inside [0, 3] and 0 outside;
    ∂x̂/∂max is (round(v) - v)/L inside, 1 above the range and 0 below zero."""
    q = qz.ActivationQuantizer(2, learn_range=True)
    weights = _activation_weights(3.0)
    x = tf.constant([-1.0, 0.2, 1.4, 2.5, 2.9, 4.0, 7.0])
    upstream = tf.constant([1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 0.5])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(q(x, True, weights) * upstream)
    d_x, d_max = tape.gradient(y, [x, weights["max"]])
    np.testing.assert_allclose(d_x.numpy(), [0, 2, 1, 1, 1, 0, 0])
    v = np.array([0.2, 1.4, 2.5, 2.9])
    inside = (np.floor(v + 0.5) - v) / 3 * np.array([2.0, 1.0, 1.0, 1.0])
    assert d_max.numpy() == pytest.approx(inside.sum() + 1.0 + 0.5, abs=1e-6)


def test_learned_range_is_trainable_and_moves_with_the_loss():
    layer = kq.keras.layers.Layer()
    q = qz.ActivationQuantizer(4, learn_range=True)
    weights = q.build(None, "act", layer)
    assert weights["max"].trainable and not weights["initialized"].trainable
    weights["max"].assign(1.0)
    x = tf.constant([0.5, 2.0, 4.0])  # two values clipped at 1: the loss wants a wider range
    optimizer = kq.keras.optimizers.SGD(0.1)
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum((q(x, True, weights) - x) ** 2)
        optimizer.apply_gradients([(tape.gradient(loss, weights["max"]), weights["max"])])
    assert weights["max"].numpy() > 1.5


def test_learned_range_and_ema_are_exclusive():
    with pytest.raises(ValueError, match="learn_range and ema_decay"):
        qz.ActivationQuantizer(4, ema_decay=0.9, learn_range=True)
    with pytest.raises(TypeError, match="learn_range must be a bool"):
        qz.ActivationQuantizer(4, learn_range=1)


def test_weight_gradient_is_straight_through():
    w = tf.constant([[0.3, -0.7], [0.1, 0.9]])
    with tf.GradientTape() as tape:
        tape.watch(w)
        y = tf.reduce_sum(qz.SymmetricQuantizer(2)(w, True, {}) * tf.constant([[1.0, 2.0], [3.0, 4.0]]))
    np.testing.assert_allclose(tape.gradient(y, w).numpy(), [[1, 2], [3, 4]])


# ------------------------------------------------------------------------------- mu-law
@given(x=hnp.arrays(np.float32, st.integers(1, 50), elements=st.floats(-1, 1, width=32)),
       mu=st.sampled_from([1.0, 15.0, 255.0]))
def test_mu_law_inverse_of_forward_is_identity(x, mu):
    back = qz.mu_law_inverse(qz.mu_law(tf.constant(x), mu), mu).numpy()
    np.testing.assert_allclose(back, x, atol=2e-6)


def test_mu_law_matches_song_equation_3():
    x = np.array([-1.0, -0.01, 0.0, 0.2, 1.0], np.float32)
    expected = np.sign(x) * np.log1p(255 * np.abs(x)) / np.log1p(255)
    np.testing.assert_allclose(qz.mu_law(tf.constant(x)).numpy(), expected, rtol=1e-6)


@given(x=tensors(), bits=st.integers(1, 8))
def test_mu_law_compand_levels_and_idempotence(x, bits):
    q = qz.MuLawQuantizer(bits)
    out = apply(q, x)
    assert len(np.unique(out)) <= 2 ** bits
    np.testing.assert_allclose(apply(q, out), out, rtol=1e-4, atol=1e-5)


def test_mu_law_compand_is_denser_near_zero():
    x = np.linspace(-1, 1, 2001, dtype=np.float32)
    levels = np.unique(apply(qz.MuLawQuantizer(4), x))
    gaps = np.diff(levels)
    assert gaps[len(gaps) // 2] < gaps[0] / 10


def test_mu_law_map_mode_applies_the_mapping():
    w = np.array([0.5, -1.0, 0.25], np.float32)
    out = apply(qz.MuLawQuantizer(None, mode="map"), w)
    np.testing.assert_allclose(out, np.sign(w) * np.log1p(255 * np.abs(w)) / np.log1p(255), rtol=1e-6)


# --------------------------------------------------------------- config, errors, display
@pytest.mark.parametrize("quantizer", [
    qz.UniformQuantizer(4, per_axis=True), qz.SymmetricQuantizer(3, axis=(-2, -1)),
    qz.ActivationQuantizer(5, init_max=2.0, ema_decay=0.99), qz.ActivationQuantizer(3, learn_range=True),
    qz.MuLawQuantizer(3, mu=100.0),
    qz.MuLawQuantizer(None, mode="map"),
])
def test_config_round_trip(quantizer):
    assert type(quantizer).from_config(quantizer.get_config()) == quantizer
    assert qz.get(qz.serialize(quantizer)) == quantizer
    assert qz.get(kq.keras.utils.legacy.serialize_keras_object(quantizer)) == quantizer


def test_readable_str():
    assert str(qz.UniformQuantizer(4, per_axis=True)) == "uniform(4, per_axis)"
    assert str(qz.SymmetricQuantizer(2, per_axis=False)) == "symmetric(2)"
    assert str(qz.SymmetricQuantizer(4, axis=(-2, -1))) == "symmetric(4, per_axis=[-2, -1])"
    assert str(qz.ActivationQuantizer(4)) == "unsigned(4)"
    assert str(qz.ActivationQuantizer(4, learn_range=True)) == "unsigned(4, learned range)"
    assert str(qz.MuLawQuantizer(3)) == "mu_law(3, mu=255, compand)"


@pytest.mark.parametrize("bits", [0, 17, -1])
def test_bits_out_of_range(bits):
    with pytest.raises(ValueError, match=r"bits must be in \[1, 16\]"):
        qz.SymmetricQuantizer(bits)


@pytest.mark.parametrize("bits", [2.5, "4", True])
def test_bits_wrong_type(bits):
    with pytest.raises(TypeError, match="bits must be an int"):
        qz.UniformQuantizer(bits)


def test_mu_law_argument_errors():
    with pytest.raises(ValueError, match="needs bits"):
        qz.MuLawQuantizer(None)
    with pytest.raises(ValueError, match="mode must be one of"):
        qz.MuLawQuantizer(3, mode="expand")


def test_get_rejects_unknown():
    with pytest.raises(TypeError, match="Cannot interpret"):
        qz.get("symmetric")

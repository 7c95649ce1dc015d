"""OrthogonalityRegularizer, LipschitzDense/LipschitzConv2D, to_lipschitz and strip_lipschitz."""

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import keras_qrobust as kq
from keras_qrobust.layers import LipschitzConv2D, LipschitzDense
from keras_qrobust.defenses import OrthogonalityRegularizer
from keras_qrobust.transforms import UnsupportedModelError, strip_lipschitz, to_lipschitz

keras = kq.keras
tf = kq.tf
layers = keras.layers


def orthogonality_reference(kernel: np.ndarray, beta: float) -> float:
    """(β/2)·‖WᵀW − I‖²_F of the (fan_in, outputs) matrix, WWᵀ when outputs > fan_in (float64)."""
    w = np.asarray(kernel, np.float64).reshape(-1, kernel.shape[-1])
    gram = w @ w.T if w.shape[1] > w.shape[0] else w.T @ w
    return beta / 2 * np.sum((gram - np.eye(len(gram))) ** 2)


def orthogonality_deviation(kernel: np.ndarray) -> float:
    return np.sqrt(orthogonality_reference(kernel, 2.0))


def sigma_max(kernel: np.ndarray) -> float:
    return np.linalg.svd(np.asarray(kernel, np.float64).reshape(-1, kernel.shape[-1]), compute_uv=False)[0]


def kernel_with_singular_values(shape, values, rng) -> np.ndarray:
    """A kernel whose (fan_in, outputs) matrix has the given singular values."""
    fan_in, outputs = int(np.prod(shape[:-1])), shape[-1]
    u, _ = np.linalg.qr(rng.normal(size=(fan_in, len(values))))
    v, _ = np.linalg.qr(rng.normal(size=(outputs, len(values))))
    return (u @ np.diag(values) @ v.T).reshape(shape).astype(np.float32)


KERNELS = hnp.arrays(
    np.float64,
    st.one_of(
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=7),
        hnp.array_shapes(min_dims=4, max_dims=4, min_side=1, max_side=4),
    ),
    elements=st.floats(-3, 3, allow_nan=False),
)


# ------------------------------------------------------------------ the regularizer
@given(kernel=KERNELS, beta=st.floats(0, 10, allow_nan=False))
def test_regularizer_equals_the_formula(kernel, beta):
    value = OrthogonalityRegularizer(beta)(tf.constant(kernel)).numpy()
    np.testing.assert_allclose(value, orthogonality_reference(kernel, beta), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (3, 3, 2, 5), (1, 1, 2, 6)])
def test_regularizer_is_zero_exactly_for_isometries(shape, rng):
    # Orthonormal columns (tall) or rows (wide): only the smaller Gram matrix can be I.
    kernel = kernel_with_singular_values(shape, np.ones(min(np.prod(shape[:-1]), shape[-1])), rng)
    assert OrthogonalityRegularizer(1.0)(tf.constant(kernel, tf.float64)).numpy() < 1e-10
    assert OrthogonalityRegularizer(1.0)(tf.constant(2 * kernel, tf.float64)).numpy() > 1.0


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (2, 2, 3, 4), (1, 1, 2, 5)])
def test_regularizer_gradient_matches_finite_differences_and_closed_form(shape, rng):
    beta = 0.7
    reg = OrthogonalityRegularizer(beta)
    kernel = rng.normal(size=shape)
    variable = tf.Variable(kernel, dtype=tf.float64)
    with tf.GradientTape() as tape:
        loss = reg(variable)
    grad = tape.gradient(loss, variable).numpy()

    h = 1e-6
    numeric = np.zeros_like(kernel)
    for index in np.ndindex(*shape):
        step = np.zeros_like(kernel)
        step[index] = h
        numeric[index] = (orthogonality_reference(kernel + step, beta)
                          - orthogonality_reference(kernel - step, beta)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)

    w = kernel.reshape(-1, shape[-1])
    closed = (2 * beta * (w @ w.T - np.eye(len(w))) @ w if w.shape[1] > w.shape[0]
              else 2 * beta * w @ (w.T @ w - np.eye(w.shape[1])))
    np.testing.assert_allclose(grad, closed.reshape(shape), rtol=1e-10, atol=1e-12)


def test_regularizer_serializes_and_works_as_kernel_regularizer_of_any_layer(rng, tmp_path):
    reg = OrthogonalityRegularizer(0.25)
    assert keras.regularizers.deserialize(keras.regularizers.serialize(reg)) == reg
    model = keras.Sequential([keras.Input((6, 3)), layers.Conv1D(4, 2, kernel_regularizer=reg, name="conv")])
    kernel = model.get_layer("conv").kernel.numpy()
    np.testing.assert_allclose(float(model.losses[0]), orthogonality_reference(kernel, 0.25), rtol=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("conv").kernel_regularizer == reg
    # Keras' own OrthogonalRegularizer (a different penalty) must keep deserializing as itself.
    builtin = keras.regularizers.deserialize(keras.regularizers.serialize(keras.regularizers.OrthogonalRegularizer()))
    assert not isinstance(builtin, OrthogonalityRegularizer)


@pytest.mark.parametrize("beta, error", [(-1.0, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
                                         ("3e-4", TypeError), (True, TypeError)])
def test_bad_beta_is_rejected(beta, error):
    with pytest.raises(error, match="beta"):
        OrthogonalityRegularizer(beta)
    with pytest.raises(error, match="beta"):
        LipschitzDense(3, beta=beta)


# ------------------------------------------------------------------------ the layers
PAIRS = {
    "dense": (lambda **kw: layers.Dense(5, activation="relu", **kw),
              lambda **kw: LipschitzDense(5, activation="relu", **kw), (7,)),
    "dense_wide_no_bias": (lambda **kw: layers.Dense(9, use_bias=False, **kw),
                           lambda **kw: LipschitzDense(9, use_bias=False, **kw), (4,)),
    "conv2d": (lambda **kw: layers.Conv2D(4, 3, strides=2, padding="same", **kw),
               lambda **kw: LipschitzConv2D(4, 3, strides=2, padding="same", **kw), (6, 6, 2)),
    "conv2d_wide": (lambda **kw: layers.Conv2D(6, 1, activation="tanh", **kw),
                    lambda **kw: LipschitzConv2D(6, 1, activation="tanh", **kw), (5, 5, 2)),
}


def build(layer, input_shape):
    return keras.Sequential([keras.Input(input_shape), layer])


@pytest.mark.parametrize("pair", PAIRS, ids=list(PAIRS))
def test_regularized_layer_computes_what_the_keras_layer_computes(pair, rng):
    make_keras, make_lipschitz, input_shape = PAIRS[pair]
    plain = build(make_keras(), input_shape)
    robust = build(make_lipschitz(beta=0.3), input_shape)
    weights = [rng.normal(size=w.shape).astype(np.float32) for w in plain.get_weights()]
    plain.set_weights(weights)
    robust.set_weights(weights)
    x = rng.normal(size=(3, *input_shape)).astype(np.float32)
    np.testing.assert_array_equal(robust(x, training=True).numpy(), plain(x).numpy())
    assert plain.losses == []
    (loss,) = robust.losses
    np.testing.assert_allclose(float(loss), orthogonality_reference(weights[0], 0.3), rtol=1e-5)


@pytest.mark.parametrize("pair", PAIRS, ids=list(PAIRS))
def test_config_keeps_every_keras_argument(pair):
    make_keras, make_lipschitz, _ = PAIRS[pair]
    keras_config = make_keras(name="x").get_config()
    layer = make_lipschitz(name="x", beta=0.01, spectral_norm=True, kernel_regularizer="l2")
    config = layer.get_config()
    assert {k: v for k, v in config.items() if k not in ("beta", "spectral_norm", "kernel_regularizer")} == {
        k: v for k, v in keras_config.items() if k != "kernel_regularizer"}
    assert (config["beta"], config["spectral_norm"]) == (0.01, True)
    clone = type(layer).from_config(config)
    assert clone.get_config() == config


def test_user_kernel_regularizer_is_added_to_the_orthogonality_loss(rng):
    model = build(LipschitzDense(4, beta=0.5, kernel_regularizer=keras.regularizers.L2(0.1)), (6,))
    kernel = model.layers[0].kernel.numpy()
    total = sum(float(v) for v in model.losses)
    np.testing.assert_allclose(total, orthogonality_reference(kernel, 0.5) + 0.1 * np.sum(kernel**2), rtol=1e-5)


def test_beta_zero_adds_no_loss():
    assert build(LipschitzDense(4, beta=0.0), (6,)).losses == []


def test_spectral_norm_must_be_a_bool():
    with pytest.raises(TypeError, match="spectral_norm"):
        LipschitzConv2D(2, 3, spectral_norm="yes")


# -------------------------------------------------------------------- spectral norm
def power_step(kernel, u):
    w = np.asarray(kernel, np.float64).reshape(-1, kernel.shape[-1])
    v = w @ u / np.linalg.norm(w @ u)
    return w.T @ v / np.linalg.norm(w.T @ v)


@pytest.mark.parametrize("make, shape", [(lambda: LipschitzDense(4, spectral_norm=True, beta=0.0), (6, 4)),
                                         (lambda: LipschitzConv2D(5, 2, spectral_norm=True), (2, 2, 3, 5))])
def test_spectral_norm_one_iteration_per_training_call_and_sigma_max_one_after_enough(make, shape, rng):
    layer = make()
    model = build(layer, (6,) if len(shape) == 2 else (4, 4, 3))
    kernel = kernel_with_singular_values(shape, [3.0, 1.5, 1.0, 0.5], rng)
    layer.kernel.assign(kernel)
    x = rng.normal(size=(2, *model.input_shape[1:])).astype(np.float32)

    u0 = layer.spectral_u.numpy()
    model(x, training=False)
    np.testing.assert_array_equal(layer.spectral_u.numpy(), u0)  # inference never updates u
    model(x, training=True)
    np.testing.assert_allclose(layer.spectral_u.numpy(), power_step(kernel, u0), rtol=1e-5, atol=1e-6)

    for _ in range(40):
        model(x, training=True)
    np.testing.assert_allclose(float(layer.spectral_sigma()), sigma_max(kernel), rtol=1e-5)
    effective = layer.lipschitz_kernel(training=False).numpy()
    np.testing.assert_allclose(sigma_max(effective), 1.0, rtol=1e-5)
    np.testing.assert_allclose(effective, kernel / sigma_max(kernel), rtol=1e-4, atol=1e-6)


def test_spectral_dense_output_is_x_times_normalized_kernel(rng):
    layer = LipschitzDense(3, spectral_norm=True)
    model = build(layer, (5,))
    sigma = float(layer.power_iterate(100))
    kernel, bias, _ = layer.get_weights()
    assert sigma == pytest.approx(sigma_max(kernel), rel=1e-5)
    x = rng.normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_allclose(model(x).numpy(), x @ (kernel / sigma) + bias, rtol=1e-5, atol=1e-6)


def test_spectral_norm_gradient_matches_finite_differences(rng):
    # The gradient flows through σ = ‖W û‖ too (Miyato et al.: ∂σ/∂W = v ûᵀ), with û held fixed.
    layer = LipschitzDense(3, spectral_norm=True, beta=0.0, dtype="float64")
    build(layer, (5,))
    kernel, bias, u = layer.get_weights()
    x = rng.normal(size=(4, 5))
    u_hat = u / np.linalg.norm(u)

    def objective(w):
        return np.sum((x @ (w / np.linalg.norm(w @ u_hat)) + bias) ** 2)

    with tf.GradientTape() as tape:
        out = tf.reduce_sum(layer(tf.constant(x), training=False) ** 2)
    grad = tape.gradient(out, layer.kernel).numpy()
    h = 1e-6
    numeric = np.zeros_like(kernel)
    for index in np.ndindex(*kernel.shape):
        step = np.zeros_like(kernel)
        step[index] = h
        numeric[index] = (objective(kernel + step) - objective(kernel - step)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
    assert all(w is not layer.spectral_u for w in layer.trainable_weights)


def test_power_iterate_needs_spectral_norm():
    layer = LipschitzDense(3)
    build(layer, (5,))
    with pytest.raises(ValueError, match="spectral_norm=False"):
        layer.power_iterate()


# ------------------------------------------------------------------------- training
def orthogonality_after_training(make_hidden, rng) -> float:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), make_hidden(), layers.Dense(2)])
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = np.stack([x[:, 0] - x[:, 1], x[:, 2]], axis=1)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    model.fit(x, y, epochs=10, batch_size=16, shuffle=False, verbose=0)
    return orthogonality_deviation(model.layers[0].kernel.numpy())


def test_training_with_the_regularizer_lowers_the_orthogonality_deviation():
    init = keras.initializers.RandomNormal(stddev=1.0, seed=1)
    plain = orthogonality_after_training(lambda: layers.Dense(6, kernel_initializer=init), np.random.default_rng(0))
    robust = orthogonality_after_training(lambda: LipschitzDense(6, beta=0.2, kernel_initializer=init),
                                          np.random.default_rng(0))
    assert robust < 0.5 * plain


# ----------------------------------------------------------------------- save / load
@pytest.mark.parametrize("extension", ["keras", "h5"])
def test_save_load_round_trip_without_custom_objects(extension, rng, tmp_path):
    model = keras.Sequential([
        keras.Input((6, 6, 1)),
        LipschitzConv2D(3, 3, activation="relu", spectral_norm=True, name="conv"),
        layers.Flatten(),
        LipschitzDense(4, beta=0.01, name="fc"),
    ])
    x = rng.normal(size=(2, 6, 6, 1)).astype(np.float32)
    model(x, training=True)  # moves u away from its initial value
    path = tmp_path / f"model.{extension}"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert [type(l) for l in loaded.layers] == [type(l) for l in model.layers]
    assert loaded.get_layer("fc").beta == 0.01 and loaded.get_layer("conv").spectral_norm
    np.testing.assert_array_equal(loaded.get_layer("conv").spectral_u.numpy(),
                                  model.get_layer("conv").spectral_u.numpy())
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-6)
    np.testing.assert_allclose([float(v) for v in loaded.losses], [float(v) for v in model.losses], rtol=1e-6)


# ------------------------------------------------------------- to_lipschitz / strip
def small_cnn():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        layers.Conv2D(4, 3, activation="relu", name="conv"),
        layers.MaxPooling2D(),
        layers.Flatten(name="flatten"),
        layers.Dense(6, activation="relu", kernel_regularizer="l2", name="fc1"),
        layers.Dense(3, name="fc2"),
    ])


def test_to_lipschitz_keeps_weights_outputs_and_the_callers_model(rng):
    model = small_cnn()
    before = [w.copy() for w in model.get_weights()]
    robust = to_lipschitz(model, beta=0.05)
    assert [type(l).__name__ for l in robust.layers if l.weights] == ["LipschitzConv2D", "LipschitzDense",
                                                                       "LipschitzDense"]
    assert [type(l).__name__ for l in model.layers if l.weights] == ["Conv2D", "Dense", "Dense"]
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(before, robust.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = rng.normal(size=(3, 8, 8, 1)).astype(np.float32)
    np.testing.assert_array_equal(robust(x).numpy(), model(x).numpy())
    assert len(robust.losses) == 4  # three orthogonality losses + fc1's l2
    assert robust.get_layer("fc1").get_config()["kernel_regularizer"] is not None


def test_to_lipschitz_only_named_layers():
    robust = to_lipschitz(small_cnn(), layers=["fc2"])
    assert [type(l).__name__ for l in robust.layers if l.weights] == ["Conv2D", "Dense", "LipschitzDense"]
    assert type(to_lipschitz(small_cnn(), layers="conv").get_layer("conv")) is LipschitzConv2D


def test_to_lipschitz_with_spectral_norm_is_exact_from_the_start(rng):
    model = small_cnn()
    robust = to_lipschitz(model, spectral_norm=True)
    for name in ("conv", "fc1", "fc2"):
        layer = robust.get_layer(name)
        np.testing.assert_allclose(float(layer.spectral_sigma()), sigma_max(layer.kernel.numpy()), rtol=1e-5)
        np.testing.assert_allclose(sigma_max(layer.lipschitz_kernel().numpy()), 1.0, rtol=1e-5)


def test_strip_lipschitz_gives_plain_layers_with_the_same_outputs(rng):
    robust = to_lipschitz(small_cnn(), spectral_norm=True)
    x = rng.normal(size=(3, 8, 8, 1)).astype(np.float32)
    robust(x, training=True)  # u no longer the exact singular vector: σ comes from the stored u
    plain = strip_lipschitz(robust)
    assert [type(l).__name__ for l in plain.layers if l.weights] == ["Conv2D", "Dense", "Dense"]
    assert len(plain.losses) == 1  # fc1's own l2 regularizer stays
    np.testing.assert_allclose(plain(x).numpy(), robust(x, training=False).numpy(), rtol=1e-5, atol=1e-6)
    qmodel = kq.RobustQuantizer(8, None).quantize(plain)  # plain layers are quantizable
    np.testing.assert_allclose(qmodel(x).numpy(), plain(x).numpy(), atol=0.05)


def test_to_lipschitz_without_dense_or_conv_names_the_problem_and_the_fix():
    model = keras.Sequential([keras.Input((6, 6, 2)), layers.DepthwiseConv2D(3), layers.GlobalAveragePooling2D()])
    with pytest.raises(ValueError, match="no Dense or Conv2D.*OrthogonalityRegularizer"):
        to_lipschitz(model)


def test_to_lipschitz_on_a_quantized_model_says_to_use_the_float_model():
    qmodel = kq.RobustQuantizer(4, None).quantize(small_cnn())
    with pytest.raises(UnsupportedModelError, match="already quantized.*float model"):
        to_lipschitz(qmodel)


@pytest.mark.parametrize("names, message", [(["nope"], "no layer 'nope'.*conv, fc1, fc2"),
                                            (["flatten"], "is a Flatten"), ([], "layers is empty")])
def test_to_lipschitz_bad_layer_names(names, message):
    model = small_cnn()
    with pytest.raises(ValueError, match=message):
        to_lipschitz(model, layers=names)

import numpy as np
import pytest
from cleverhans.tf2.attacks.fast_gradient_method import fast_gradient_method
from cleverhans.tf2.attacks.momentum_iterative_method import momentum_iterative_method
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

import keras_qrobust as kq
from keras_qrobust import attacks

keras = kq.keras
tf = kq.tf
NORMS = [("inf", np.inf, 0.1), ("2", 2, 1.5)]


@pytest.fixture(scope="module")
def batch(fashion_slice):
    _, (x, y) = fashion_slice
    return x[:64], y[:64]


def distance(a, b, norm):
    diff = (a - b).reshape(len(a), -1)
    return np.abs(diff).max(axis=1) if norm == "inf" else np.linalg.norm(diff, axis=1)


@pytest.mark.parametrize("norm, ch_norm, eps", NORMS)
def test_fgsm_equals_cleverhans(trained_cnn, batch, norm, ch_norm, eps):
    x, y = batch
    ours = attacks.fgsm(trained_cnn, x, y, eps=eps, norm=norm)
    theirs = fast_gradient_method(trained_cnn, tf.constant(x), eps, ch_norm, clip_min=0.0, clip_max=1.0,
                                  y=tf.constant(y), sanity_checks=False).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("norm, ch_norm, eps", NORMS)
def test_pgd_and_bim_equal_cleverhans_without_random_start(trained_cnn, batch, norm, ch_norm, eps):
    x, y = batch
    ours = attacks.pgd(trained_cnn, x, y, eps=eps, steps=7, step_size=eps / 4, norm=norm,
                       random_start=False, verbose=0)
    theirs = projected_gradient_descent(trained_cnn, tf.constant(x), eps, eps / 4, 7, ch_norm, clip_min=0.0,
                                        clip_max=1.0, y=tf.constant(y), rand_init=False,
                                        sanity_checks=False).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    bim = attacks.bim(trained_cnn, x, y, eps=eps, steps=7, step_size=eps / 4, norm=norm, verbose=0)
    np.testing.assert_allclose(bim, theirs, atol=1e-5)


def test_mim_equals_cleverhans(trained_cnn, batch):
    x, y = batch
    ours = attacks.mim(trained_cnn, x, y, eps=0.1, steps=6, verbose=0)
    theirs = momentum_iterative_method(trained_cnn, tf.constant(x), 0.1, 0.1 / 6, 6, np.inf, clip_min=0.0,
                                       clip_max=1.0, y=tf.constant(y), sanity_checks=False).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "bim", "mim"])
@pytest.mark.parametrize("norm, eps", [("inf", 0.1), ("2", 1.5)])
def test_examples_stay_in_the_ball_and_box_and_hurt(trained_cnn, batch, attack, norm, eps):
    x, y = batch
    kwargs = {} if attack == "fgsm" else {"verbose": 0}
    adv = getattr(attacks, attack)(trained_cnn, x, y, eps=eps, norm=norm, **kwargs)
    assert adv.dtype == np.float32 and adv.shape == x.shape
    assert np.all(distance(adv, x, norm) <= eps * (1 + 1e-5) + 1e-6)
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert kq.metrics.accuracy(trained_cnn, adv, y) < kq.metrics.accuracy(trained_cnn, x, y) - 0.2


def test_pgd_random_start_is_seeded_and_restarts_never_hurt(trained_cnn, batch):
    x, y = batch
    a = attacks.pgd(trained_cnn, x, y, eps=0.03, steps=3, seed=1, verbose=0)
    b = attacks.pgd(trained_cnn, x, y, eps=0.03, steps=3, seed=1, verbose=0)
    c = attacks.pgd(trained_cnn, x, y, eps=0.03, steps=3, seed=2, verbose=0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    single_loss = _loss(trained_cnn, a, y)
    restarted = attacks.pgd(trained_cnn, x, y, eps=0.03, steps=3, seed=1, restarts=3, verbose=0)
    assert np.all(_loss(trained_cnn, restarted, y) >= single_loss - 1e-5)


def _loss(model, x, y):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x, training=False)).numpy()


def test_targeted_pgd_reaches_the_target(trained_cnn, batch):
    x, _ = batch
    target = np.full(len(x), 3)
    adv = attacks.pgd(trained_cnn, x, target, eps=0.2, steps=20, targeted=True, seed=0, verbose=0)
    clean_rate = np.mean(kq.metrics.predict_labels(trained_cnn, x) == 3)
    assert clean_rate < 0.2
    assert np.mean(kq.metrics.predict_labels(trained_cnn, adv) == 3) > clean_rate + 0.35


def test_default_labels_are_the_models_predictions(trained_cnn, batch):
    x, _ = batch
    predicted = kq.metrics.predict_labels(trained_cnn, x)
    np.testing.assert_array_equal(attacks.fgsm(trained_cnn, x, eps=0.05),
                                  attacks.fgsm(trained_cnn, x, predicted, eps=0.05))


def test_quantized_models_get_straight_through_gradients(trained_cnn, fashion_slice, batch):
    (x_train, _), _ = fashion_slice
    x, y = batch
    robust_q = kq.RobustQuantizer(4, 4).quantize(trained_cnn, x_train[:256])
    import tensorflow_model_optimization as tfmot
    tfq = tfmot.quantization.keras
    tfmot_q = tfq.quantize_apply(tfq.quantize_annotate_model(trained_cnn), scheme=kq.WXAYScheme(4, 4))
    kq.calibrate_tfmot(tfmot_q, x_train[:256])
    float_adv = attacks.pgd(trained_cnn, x, y, eps=0.1, steps=10, seed=0, verbose=0)
    float_robust = kq.metrics.accuracy(trained_cnn, float_adv, y)
    for qmodel in (robust_q, tfmot_q):
        adv = attacks.pgd(qmodel, x, y, eps=0.1, steps=10, seed=0, verbose=0)
        robust = kq.metrics.accuracy(qmodel, adv, y)
        assert robust < kq.metrics.accuracy(qmodel, x, y) - 0.2  # without STE it would not move
        assert robust <= float_robust + 0.12


def test_softmax_and_binary_outputs_are_read_as_logits(trained_cnn, batch):
    x, y = batch
    probabilities = keras.Sequential([keras.Input((28, 28, 1)), trained_cnn, keras.layers.Softmax()])
    assert attacks.as_attack_model(probabilities).probabilities
    np.testing.assert_allclose(attacks.fgsm(probabilities, x, y, eps=0.05),
                               attacks.fgsm(trained_cnn, x, y, eps=0.05), atol=1e-6)
    xs, ys = kq.datasets.load("two_spirals", "train")
    xs = (xs - xs.min()) / (xs.max() - xs.min())
    kq.defenses.set_seed(0)
    binary = kq.zoo.mlp_gorsline(input_shape=(2,), num_classes=1)
    kq.defenses.train_classifier(binary, xs, ys, epochs=3)
    adv = attacks.fgsm(binary, xs, ys, eps=0.05)
    assert attacks.as_attack_model(binary).num_classes == 2
    assert np.abs(adv - xs).max() <= 0.05 + 1e-6


def test_model_without_gradient_warns_instead_of_crashing(batch):
    x, y = batch

    class Round(keras.layers.Layer):
        def call(self, inputs):
            return tf.stop_gradient(tf.round(inputs * 4) / 4)

    model = keras.Sequential([keras.Input((28, 28, 1)), Round(), keras.layers.Flatten(), keras.layers.Dense(10)])
    with pytest.warns(UserWarning, match="no gradient.*spsa, square"):
        adv = attacks.pgd(model, x, y, eps=0.1, steps=2, random_start=False, verbose=0)
    np.testing.assert_array_equal(adv, x)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"eps": -0.1}, ValueError, "eps must be a finite number >= 0"),
    ({"eps": 0.1, "norm": 1}, ValueError, "norm must be 'inf' or 2"),
    ({"eps": 0.1, "x": np.zeros((4, 28, 28))}, ValueError, r"expects \(N, 28, 28, 1\)"),
    ({"eps": 0.1, "x": np.full((4, 28, 28, 1), 2.0)}, ValueError, "outside the clip range"),
    ({"eps": 0.1, "y": np.array([0, 1, 2, 10])}, ValueError, r"labels must be in \[0, 10\)"),
    ({"eps": 0.1, "y": np.array([0, 1])}, ValueError, "4 inputs but y has 2 labels"),
    ({"eps": 0.1, "steps": 0}, ValueError, "steps must be an integer >= 1"),
])
def test_bad_input_fails_before_computing(kwargs, error, match):
    model = kq.zoo.cnn_small()
    kwargs = {"x": np.zeros((4, 28, 28, 1), np.float32), "y": None, **kwargs}
    with pytest.raises(error, match=match):
        attacks.pgd(model, verbose=0, **kwargs)


def test_targeted_needs_labels():
    with pytest.raises(ValueError, match="needs labels"):
        attacks.pgd(kq.zoo.cnn_small(), np.zeros((2, 28, 28, 1), np.float32), eps=0.1, targeted=True)


def test_keras3_model_is_rejected():
    import keras as keras3

    model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2)])
    with pytest.raises(TypeError, match="Keras 3 model"):
        attacks.fgsm(model, np.zeros((1, 4), np.float32), eps=0.1)


def test_unseeded_attacks_run_under_op_determinism(trained_cnn, batch):
    # training.set_seed(..., deterministic_ops=True) turns it on for the whole process
    from tensorflow.python.framework import config as tf_config  # no public disable

    x, y = batch
    tf.config.experimental.enable_op_determinism()
    try:
        adv = attacks.pgd(trained_cnn, x[:8], y[:8], eps=0.1, steps=2, verbose=0)
    finally:
        tf_config.disable_op_determinism()
    assert np.abs(adv - x[:8]).max() <= 0.1 + 1e-6

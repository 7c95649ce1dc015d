import warnings

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust import attacks

keras = kq.keras
tf = kq.tf


def _rounded_input(model):
    """``model`` behind an 11-level input rounding without a straight-through gradient."""
    inputs = keras.Input(model.input_shape[1:])
    rounded = keras.layers.Lambda(lambda x: tf.round(x * 10.0) / 10.0, name="round")(inputs)
    return keras.Model(inputs, model(rounded), name="rounded")


def _logit_gradient(model, x, k: int = 3) -> np.ndarray:
    """∂(Σ logit k)/∂x: the Jacobian row BPDA must take from the approximation."""
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = tf.reduce_sum(model(xt)[:, k])
    return tape.gradient(out, xt).numpy()


@pytest.fixture(scope="module")
def defended(trained_cnn):
    return _rounded_input(trained_cnn)


def test_forward_is_the_model_and_gradient_is_the_approximation(trained_cnn, defended, fashion_slice):
    _, (x, y) = fashion_slice
    x, y = x[:32], y[:32]
    wrapped = attacks.bpda(defended, trained_cnn)
    np.testing.assert_allclose(wrapped.predict(x, verbose=0), defended.predict(x, verbose=0), atol=1e-5)
    xt = tf.constant(x)
    grads = []
    for model in (wrapped, trained_cnn):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(xt)))
        grads.append(tape.gradient(loss, xt).numpy())
    # the loss value differs (defended logits), so the CE gradient differs through softmax;
    # the logit Jacobian is the approximation's: compare one logit's gradient instead
    np.testing.assert_allclose(_logit_gradient(wrapped, x), _logit_gradient(trained_cnn, x), atol=1e-6)
    assert np.abs(grads[0]).sum() > 0


def test_bpda_breaks_a_gradient_masking_defense(trained_cnn, defended, fashion_slice):
    _, (x, y) = fashion_slice
    x, y = x[:128], y[:128]
    clean = kq.metrics.accuracy(defended, x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the no-gradient warning is the point of the defense
        masked = attacks.pgd(defended, x, y, eps=0.1, steps=10, seed=0, verbose=0)
    through = attacks.pgd(attacks.bpda(defended, trained_cnn), x, y, eps=0.1, steps=10, seed=0, verbose=0)
    assert np.abs(through - x).max() <= 0.1 + 1e-6
    masked_acc = kq.metrics.accuracy(defended, masked, y)
    bpda_acc = kq.metrics.accuracy(defended, through, y)
    assert masked_acc > clean - 0.15  # gradient attack sees zeros: little damage
    assert bpda_acc < masked_acc - 0.3


def test_mismatched_approximation_is_an_error(trained_cnn):
    other = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="inputs"):
        attacks.bpda(trained_cnn, other)
    five = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(5)])
    with pytest.raises(ValueError, match="classes"):
        attacks.bpda(trained_cnn, five)


def test_bpda_attacks_a_deployed_file_through_its_twin(trained_cnn, fashion_slice, tmp_path):
    """The file's own outputs forward, its Keras twin's gradients backward: the attack is decided
    by the integer arithmetic of the file, so it is at least as strong on the file as the
    twin's own adversarial points scored there."""
    (x_train, _), (x, y) = fashion_slice
    x, y = x[:96], y[:96]
    twin = kq.RobustQuantizer.from_setting("w4a4").quantize(trained_cnn, x_train[:256])
    deployed = kq.export.load(kq.export.tflite(twin, tmp_path / "w4a4.tflite"))
    wrapped = attacks.bpda(deployed, twin)
    np.testing.assert_allclose(wrapped.predict(x, verbose=0), deployed.predict(x), atol=1e-6)
    gradient = _logit_gradient(wrapped, x)
    np.testing.assert_allclose(gradient, _logit_gradient(twin, x), atol=1e-6)
    assert np.abs(gradient).sum() > 0
    through = attacks.pgd(wrapped, x, y, eps=0.1, steps=10, seed=0, verbose=0)
    on_twin = attacks.pgd(twin, x, y, eps=0.1, steps=10, seed=0, verbose=0)
    assert np.abs(through - x).max() <= 0.1 + 1e-6 and through.min() >= 0 and through.max() <= 1
    clean = kq.metrics.accuracy(deployed, x, y)
    adaptive, transferred = kq.metrics.accuracy(deployed, through, y), kq.metrics.accuracy(deployed, on_twin, y)
    assert adaptive <= transferred < clean
    assert wrapped.name == "bpda_w4a4_tflite"

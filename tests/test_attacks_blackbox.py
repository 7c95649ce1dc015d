"""SPSA, Square Attack and transfer evaluation (keras_qrobust.attacks.blackbox)."""

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust.attacks import pgd
from keras_qrobust.attacks.blackbox import TransferResult, spsa, square, transfer

keras = kq.keras
tf = kq.tf
EPS = 0.1
# Small budgets (a 2-core machine shared with other test runs). The 2-epoch trained_cnn is
# hard to fool at these budgets: PGD-10 takes it from 0.66 to 0.30, random ±ε noise to 0.63,
# these from 0.66 to about 0.50.
SPSA = dict(eps=EPS, steps=20, samples=8, learning_rate=0.03, verbose=0)
SQUARE = dict(eps=EPS, queries=400, verbose=0)
DROP = 0.1


class RoundInput(keras.layers.Layer):
    """Rounds inputs to 8-bit levels with tf.round and no straight-through estimator: the
    model's gradient is None (gradient masking)."""

    def call(self, x):
        return tf.round(x * 255.0) / 255.0


class GradientTrap(keras.layers.Layer):
    """Identity whose gradient raises: any gradient request through the model fails."""

    def call(self, x):
        @tf.custom_gradient
        def identity(v):
            def grad(upstream):
                raise AssertionError("a gradient of the model was requested")

            return tf.identity(v), grad

        return identity(x)


class CountImages(keras.layers.Layer):
    """Identity that counts the images passed through it (model queries)."""

    def build(self, input_shape):
        self.count = self.add_weight(name="count", shape=(), dtype="int64", initializer="zeros",
                                     trainable=False)

    def call(self, x):
        self.count.assign_add(tf.cast(tf.shape(x)[0], tf.int64))
        return x


def put_in_front(model, *front):
    inputs = keras.Input(model.input_shape[1:])
    hidden = inputs
    for layer in front:
        hidden = layer(hidden)
    return keras.Model(inputs, model(hidden))


class PredictOnly:
    """A target known only through predict(x) -> logits, like a deployed-model runtime."""

    def __init__(self, model):
        self._model = model
        self.calls = 0

    def predict(self, x):
        self.calls += 1
        return self._model(np.asarray(x), training=False).numpy()


def accuracy(model, x, y):
    return kq.metrics.accuracy(model, x, y)


def assert_in_ball_and_box(adv, x, eps=EPS):
    assert adv.dtype == np.float32 and adv.shape == x.shape
    assert np.abs(adv - x).max() <= eps + 1e-6
    assert adv.min() >= 0.0 and adv.max() <= 1.0


@pytest.fixture(scope="module")
def test_set(fashion_slice):
    _, (x, y) = fashion_slice
    return x[:100], y[:100]


@pytest.fixture(scope="module")
def other_cnn(fashion_slice):
    """A second cnn_small, trained independently (other seed) on the same images."""
    (x, y), _ = fashion_slice
    kq.defenses.set_seed(1)
    model = kq.zoo.cnn_small()
    kq.defenses.train_classifier(model, x, y, epochs=2, batch_size=64, seed=1)
    return model


def test_spsa_lowers_accuracy_inside_ball_and_box(trained_cnn, test_set):
    x, y = test_set
    clean = accuracy(trained_cnn, x, y)
    adv = spsa(trained_cnn, x, y, seed=0, **SPSA)
    assert_in_ball_and_box(adv, x)
    assert accuracy(trained_cnn, adv, y) < clean - DROP
    # early stop: inputs misclassified from the start are returned as they are
    wrong = kq.metrics.predict_labels(trained_cnn, x) != y
    assert wrong.any()
    np.testing.assert_array_equal(adv[wrong], x[wrong])


def test_square_lowers_accuracy_inside_ball_and_box_within_budget(trained_cnn, test_set):
    x, y = test_set
    counter = CountImages()
    counted = put_in_front(trained_cnn, counter)
    clean = accuracy(trained_cnn, x, y)
    adv = square(counted, x, y, seed=0, **SQUARE)
    queries = int(counter.count.numpy())
    assert_in_ball_and_box(adv, x)
    assert accuracy(trained_cnn, adv, y) < clean - DROP
    # one query for an input misclassified from the start, at most the budget for the others,
    # fewer for those fooled before the budget runs out
    wrong = int(np.sum(kq.metrics.predict_labels(trained_cnn, x) != y))
    assert 2 * len(x) - wrong < queries < SQUARE["queries"] * (len(x) - wrong) + wrong
    # Square searches the vertices of the ε-ball: every pixel sits at clip(x ± ε)
    attacked = np.any(adv != x, axis=(1, 2, 3))
    vertices = np.clip(x + EPS, 0, 1), np.clip(x - EPS, 0, 1)
    at_vertex = np.isclose(adv, vertices[0], atol=1e-6) | np.isclose(adv, vertices[1], atol=1e-6)
    assert attacked.sum() > 50 and at_vertex[attacked].all()


def test_square_spends_exactly_its_budget_on_a_model_it_cannot_fool(rng):
    counter = CountImages()
    constant = keras.Sequential([
        keras.Input((8, 8, 1)), counter, keras.layers.Flatten(),
        keras.layers.Dense(3, kernel_initializer="zeros",
                           bias_initializer=keras.initializers.Constant([1.0, 0.0, 0.0])),
    ])
    x = rng.uniform(0, 1, (5, 8, 8, 1)).astype(np.float32)
    adv = square(constant, x, eps=0.2, queries=37, seed=0, verbose=0)
    assert int(counter.count.numpy()) == 5 * 37
    assert_in_ball_and_box(adv, x, 0.2)


@pytest.mark.parametrize("attack, kwargs", [(spsa, dict(eps=EPS, steps=3, samples=8)),
                                            (square, dict(eps=EPS, queries=40))])
def test_same_seed_same_result(trained_cnn, test_set, attack, kwargs):
    x, y = test_set[0][:12], test_set[1][:12]
    a = attack(trained_cnn, x, y, seed=3, verbose=0, **kwargs)
    b = attack(trained_cnn, x, y, seed=3, verbose=0, **kwargs)
    c = attack(trained_cnn, x, y, seed=4, verbose=0, **kwargs)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("attack, kwargs", [(spsa, SPSA), (square, SQUARE)])
def test_targeted_attacks_reach_the_target(trained_cnn, test_set, attack, kwargs):
    x = test_set[0][:40]
    logits = trained_cnn.predict(x, verbose=0)
    target = np.argsort(logits, axis=1)[:, -2]  # the runner-up class of each input
    adv = attack(trained_cnn, x, target, targeted=True, seed=0, **kwargs)
    assert_in_ball_and_box(adv, x)
    reached = kq.metrics.predict_labels(trained_cnn, adv) == target
    assert reached.mean() > 0.1  # none of them before the attack


def test_zero_eps_returns_the_inputs(trained_cnn, test_set):
    x, y = test_set[0][:4], test_set[1][:4]
    np.testing.assert_array_equal(spsa(trained_cnn, x, y, eps=0, seed=0), x)
    np.testing.assert_array_equal(square(trained_cnn, x, y, eps=0.0, seed=0), x)


def test_gradient_free_attacks_break_a_model_without_gradient(trained_cnn, test_set):
    x, y = test_set
    masked = put_in_front(trained_cnn, RoundInput())
    clean = accuracy(masked, x, y)
    with pytest.warns(UserWarning, match="no gradient"):
        masked_pgd = accuracy(masked, pgd(masked, x, y, eps=EPS, steps=5, seed=0, verbose=0), y)
    assert masked_pgd > clean - 0.05  # PGD sees zero gradients: it only adds its random start
    for adv in (spsa(masked, x, y, seed=0, **SPSA), square(masked, x, y, seed=0, **SQUARE)):
        assert_in_ball_and_box(adv, x)
        assert accuracy(masked, adv, y) < min(clean - DROP, masked_pgd - 0.05)


def test_spsa_and_square_never_ask_for_a_gradient(trained_cnn, test_set):
    x, y = test_set[0][:4], test_set[1][:4]
    trapped = put_in_front(trained_cnn, GradientTrap())
    spsa(trapped, x, y, eps=EPS, steps=2, samples=4, seed=0, verbose=0)
    square(trapped, x, y, eps=EPS, queries=10, seed=0, verbose=0)
    with pytest.raises(AssertionError, match="gradient of the model"):  # the trap works
        pgd(trapped, x, y, eps=EPS, steps=1, verbose=0)


def test_gradient_free_attacks_work_on_a_w4a4_model(trained_cnn, fashion_slice, test_set):
    (x_train, _), _ = fashion_slice
    x, y = test_set
    qmodel = kq.RobustQuantizer(4, 4).quantize(trained_cnn, x_train[:256])
    clean = accuracy(qmodel, x, y)
    assert clean > 0.5
    # 4-bit activations make the output piecewise constant: SPSA's δ must span the plateaus
    # and Square's squares must be large enough to move the output (with δ = 0.01 and
    # p_init = 0.05 these budgets only reach 0.55 and 0.56)
    adversarial = (spsa(qmodel, x, y, seed=0, **{**SPSA, "delta": 0.03, "learning_rate": 0.05}),
                   square(qmodel, x, y, seed=0, p_init=0.3, **SQUARE))
    for adv in adversarial:
        assert_in_ball_and_box(adv, x)
        assert accuracy(qmodel, adv, y) < clean - DROP


def test_transfer_lies_between_white_box_and_clean(trained_cnn, other_cnn, test_set):
    x, y = test_set
    options = dict(eps=EPS, steps=10, seed=0, verbose=0)
    result = transfer(other_cnn, trained_cnn, x, y, attack="pgd", **options)
    assert isinstance(result, TransferResult) and result.attack == "pgd"
    assert_in_ball_and_box(result.x_adv, x)
    np.testing.assert_array_equal(result.x_adv, pgd(other_cnn, x, y, **options))
    assert result.source_clean_accuracy == pytest.approx(accuracy(other_cnn, x, y))
    assert result.target_clean_accuracy == pytest.approx(accuracy(trained_cnn, x, y))
    assert result.source_adversarial_accuracy == pytest.approx(accuracy(other_cnn, result.x_adv, y))
    white_box = accuracy(trained_cnn, pgd(trained_cnn, x, y, **options), y)
    assert white_box + 0.05 < result.target_adversarial_accuracy < result.target_clean_accuracy - 0.1
    text = str(result)
    assert "pgd" in text and f"{result.target_adversarial_accuracy:.4f}" in text


def test_transfer_target_needs_only_predict(trained_cnn, other_cnn, test_set):
    x, y = test_set
    target = PredictOnly(trained_cnn)
    deployed = transfer(other_cnn, target, x, y, attack="fgsm", eps=EPS)
    direct = transfer(other_cnn, trained_cnn, x, y, attack="fgsm", eps=EPS)
    assert target.calls == 2  # clean and adversarial
    assert deployed.target_clean_accuracy == direct.target_clean_accuracy
    assert deployed.target_adversarial_accuracy == direct.target_adversarial_accuracy
    assert direct.target_adversarial_accuracy < direct.target_clean_accuracy

    def half_fgsm(model, x, y=None, *, eps):
        return kq.attacks.fgsm(model, x, y, eps=eps / 2)

    custom = transfer(other_cnn, target, x, y, attack=half_fgsm, eps=EPS)
    assert custom.attack == "half_fgsm" and np.abs(custom.x_adv - x).max() <= EPS / 2 + 1e-6


class Exploding:
    """A target that must not be queried."""

    def predict(self, x):
        raise AssertionError("target queried")


class FlatScores:
    """A target whose predict returns one number per input instead of class scores."""

    def predict(self, x):
        return np.zeros(len(x))


@pytest.mark.parametrize("call, error, match", [
    (lambda m, x, y: spsa(m, x, y, eps=-0.1), ValueError, "eps must be a finite number >= 0"),
    (lambda m, x, y: square(m, x, y, eps=-0.1), ValueError, "eps must be a finite number >= 0"),
    (lambda m, x, y: spsa(m, x[..., 0], y, eps=0.1), ValueError, r"expects \(N, 28, 28, 1\)"),
    (lambda m, x, y: square(m, x[:, :20], y, eps=0.1), ValueError, r"expects \(N, 28, 28, 1\)"),
    (lambda m, x, y: spsa(m, x, y + 10, eps=0.1), ValueError, r"labels must be in \[0, 10\)"),
    (lambda m, x, y: square(m, x, y - 1 - y.max(), eps=0.1), ValueError, r"labels must be in \[0, 10\)"),
    (lambda m, x, y: square(m, x * 2 + 1, y, eps=0.1), ValueError, "outside the clip range"),
    (lambda m, x, y: spsa(m, x, y, eps=0.1, samples=0), ValueError, "samples must be an integer >= 1"),
    (lambda m, x, y: spsa(m, x, y, eps=0.1, delta=0), ValueError, "delta must be > 0"),
    (lambda m, x, y: square(m, x, y, eps=0.1, queries=1), ValueError, "queries must be an integer >= 2"),
    (lambda m, x, y: square(m, x, y, eps=0.1, p_init=2), ValueError, r"p_init must be in \(0, 1\]"),
    (lambda m, x, y: spsa(m, x, None, eps=0.1, targeted=True), ValueError, "needs labels"),
    (lambda m, x, y: transfer(m, Exploding(), x, y, attack="cw", eps=0.1), ValueError, "Unknown attack 'cw'"),
    (lambda m, x, y: transfer(m, Exploding(), x, y, eps=-1), ValueError, "eps must be a finite number >= 0"),
    (lambda m, x, y: transfer(m, Exploding(), x, y), TypeError, "missing a required argument: 'eps'"),
    (lambda m, x, y: transfer(m, Exploding(), x, y, eps=0.1, stepz=3), TypeError, "unexpected keyword"),
    (lambda m, x, y: transfer(m, Exploding(), x[:, 1:], y, eps=0.1), ValueError, "expects"),
    (lambda m, x, y: transfer(m, Exploding(), x, y + 10, eps=0.1), ValueError, "labels must be in"),
    (lambda m, x, y: transfer(m, object(), x, y, eps=0.1), TypeError, "must have a predict"),
    (lambda m, x, y: transfer(m, FlatScores(), x, y, eps=0.1), ValueError, r"returned shape \(8,\)"),
])
def test_bad_input_raises_before_computing(trained_cnn, test_set, call, error, match):
    x, y = test_set[0][:8], test_set[1][:8]
    counter = CountImages()
    counted = put_in_front(trained_cnn, counter)
    with pytest.raises(error, match=match):
        call(counted, x, y)
    assert int(counter.count.numpy()) == 0


def test_square_needs_images():
    mlp = keras.Sequential([keras.Input((16,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="use spsa"):
        square(mlp, np.zeros((2, 16), np.float32), eps=0.1)
    adv = spsa(mlp, np.full((2, 16), 0.5, np.float32), eps=0.1, steps=2, samples=4, seed=0, verbose=0)
    assert np.abs(adv - 0.5).max() <= 0.1 + 1e-6

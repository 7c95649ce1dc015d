"""APGD-CE / APGD-DLR / APGD-T (Croce & Hein 2020): schedule, losses, strength, bounds."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import keras_qrobust as kq
from keras_qrobust.attacks.apgd import apgd, apgd_t, checkpoint_windows, dlr_loss, targeted_dlr_loss

tf = kq._keras.tf
keras = kq.keras


@pytest.fixture(scope="module")
def digits():
    x, y = kq.datasets.load("digits", "train")
    x_test, y_test = kq.datasets.load("digits", "test")
    return (x, y), (x_test[:200], y_test[:200])


def _small_cnn(name: str):
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, activation="relu"),
                             keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                             keras.layers.Dense(10)], name=name)


@pytest.fixture(scope="module")
def natural_toy(digits):
    (x, y), _ = digits
    kq.defenses.set_seed(0)
    model = _small_cnn("natural_toy")
    kq.defenses.train_classifier(model, x, y, epochs=15, batch_size=64, seed=0)
    return model


@pytest.fixture(scope="module")
def robust_toy(digits):
    """Adversarially trained (PGD-AT, ε = 0.1), so attacks have to work for their successes."""
    (x, y), _ = digits
    kq.defenses.set_seed(0)
    trainer = kq.defenses.AdversarialModel(_small_cnn("robust_toy"), attack="pgd", eps=0.1, steps=5)
    kq.defenses.train_classifier(trainer, x, y, epochs=15, batch_size=64, seed=0)
    return trainer.model


def test_checkpoints_follow_the_papers_schedule():
    # w_j = ⌈p_j·N⌉ with p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (Croce & Hein 2020, §3.2);
    # the checkpoint at w_j ends iteration w_j - 1
    windows = checkpoint_windows(100)
    assert list(np.flatnonzero(windows)) == [21, 40, 56, 69, 79, 86, 92, 98]
    assert list(windows[np.flatnonzero(windows)]) == [22, 19, 16, 13, 10, 7, 6, 6]
    # short runs: intervals of ⌊2.2⌋ = 2, then never below 1 (the reference code's integer rounding)
    assert list(np.flatnonzero(checkpoint_windows(10))) == [1, 2, 3, 4, 5, 6, 7, 8, 9]


def test_dlr_is_positive_exactly_when_misclassified_and_scale_invariant(rng):
    logits = tf.constant(rng.normal(size=(64, 10)).astype(np.float32))
    y = tf.constant(rng.integers(0, 10, 64))
    loss = dlr_loss(logits, y).numpy()
    wrong = np.argmax(logits.numpy(), 1) != y.numpy()
    np.testing.assert_array_equal(loss > 0, wrong)
    np.testing.assert_allclose(dlr_loss(3.0 * logits + 7.0, y).numpy(), loss, rtol=1e-4, atol=1e-5)
    target = tf.constant((y.numpy() + 1) % 10)
    targeted = targeted_dlr_loss(logits, y, target).numpy()
    aimed = np.take_along_axis(logits.numpy(), target.numpy()[:, None], 1)[:, 0]
    true = np.take_along_axis(logits.numpy(), y.numpy()[:, None], 1)[:, 0]
    np.testing.assert_array_equal(targeted > 0, aimed > true)
    np.testing.assert_allclose(targeted_dlr_loss(2.0 * logits - 1.0, y, target).numpy(), targeted, rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("norm, eps", [("inf", 0.1), ("2", 0.5)])
def test_apgd_is_at_least_as_strong_as_pgd_with_the_same_budget(robust_toy, digits, norm, eps):
    _, (x, y) = digits
    acc = {}
    for name, attack in (("pgd", lambda: kq.attacks.pgd(robust_toy, x, y, eps=eps, norm=norm, steps=20, seed=0,
                                                          verbose=0)),
                         ("apgd-ce", lambda: apgd(robust_toy, x, y, eps=eps, norm=norm, steps=20, seed=0, verbose=0)),
                         ("apgd-dlr", lambda: apgd(robust_toy, x, y, eps=eps, norm=norm, loss="dlr", steps=20, seed=0,
                                                   verbose=0))):
        acc[name] = kq.metrics.accuracy(robust_toy, attack(), y)
    clean = kq.metrics.accuracy(robust_toy, x, y)
    assert acc["pgd"] < clean  # the budget is large enough to matter
    assert acc["apgd-ce"] <= acc["pgd"]
    assert acc["apgd-dlr"] <= acc["pgd"] + 0.02  # another loss; same strength within a few of 200 inputs


def test_apgd_t_pushes_the_target_logit_above_the_true_one(natural_toy, digits):
    # the targeted DLR loss (eq. 7) compares the target with the true class only; AutoAttack
    # counts any misclassification, so the target need not become the top class
    _, (x, y) = digits
    logits = natural_toy.predict(x, verbose=0)
    second = np.argsort(-logits, axis=1)[:, 1]
    adv = apgd_t(natural_toy, x, y, eps=0.3, target_classes=1, steps=50, seed=0, verbose=0)
    after = natural_toy.predict(adv, verbose=0)
    correct = np.argmax(logits, 1) == y
    rows = np.flatnonzero(correct)
    assert np.mean(after[rows, second[rows]] > after[rows, y[rows]]) > 0.9
    assert kq.metrics.accuracy(natural_toy, adv, y) < 0.1


def test_apgd_t_with_more_targets_is_at_least_as_strong(robust_toy, digits):
    _, (x, y) = digits
    one = kq.metrics.accuracy(robust_toy, apgd_t(robust_toy, x, y, eps=0.1, target_classes=1, steps=20, seed=0,
                                                 verbose=0), y)
    three = kq.metrics.accuracy(robust_toy, apgd_t(robust_toy, x, y, eps=0.1, target_classes=3, steps=20, seed=0,
                                                   verbose=0), y)
    assert three <= one


@settings(max_examples=12, deadline=None)
@given(eps=st.floats(0.0, 0.6), norm=st.sampled_from(["inf", "2"]), seed=st.integers(0, 2**31 - 1),
       loss=st.sampled_from(["ce", "dlr"]))
def test_apgd_never_leaves_the_ball_or_the_box(natural_toy, digits, eps, norm, seed, loss):
    _, (x, y) = digits
    x, y = x[:16], y[:16]
    adv = apgd(natural_toy, x, y, eps=eps, norm=norm, loss=loss, steps=8, seed=seed, verbose=0)
    delta = (adv - x).reshape(len(x), -1)
    size = np.abs(delta).max(1) if norm == "inf" else np.linalg.norm(delta, axis=1)
    assert np.all(size <= eps * (1 + 1e-5) + 1e-6)
    assert adv.min() >= 0.0 and adv.max() <= 1.0


def test_same_seed_same_result_and_eps_zero_returns_the_inputs(natural_toy, digits):
    _, (x, y) = digits
    first = apgd(natural_toy, x[:32], y[:32], eps=0.1, steps=10, restarts=2, seed=3, verbose=0)
    second = apgd(natural_toy, x[:32], y[:32], eps=0.1, steps=10, restarts=2, seed=3, verbose=0)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(apgd(natural_toy, x[:8], y[:8], eps=0.0, verbose=0), x[:8])


@pytest.mark.parametrize("call, match", [
    (lambda m, x, y: apgd(m, x, y, eps=0.1, loss="dlr-t"), "loss must be one of"),
    (lambda m, x, y: apgd(m, x, y, eps=0.1, rho=1.0), r"rho must be in \(0, 1\)"),
    (lambda m, x, y: apgd(m, x, y, eps=-1), "eps must be a finite number >= 0"),
    (lambda m, x, y: apgd(m, x, y, eps=0.1, steps=0), "steps must be an integer >= 1"),
    (lambda m, x, y: apgd(m, x, y, eps=0.1, norm="l1"), "norm must be"),
    (lambda m, x, y: apgd_t(m, x, y, eps=0.1, target_classes=10), "target_classes must be at most 9"),
    (lambda m, x, y: apgd(m, x * 3, y, eps=0.1), "outside the clip range"),
])
def test_bad_input_raises_before_computing(natural_toy, digits, call, match):
    _, (x, y) = digits
    with pytest.raises(ValueError, match=match):
        call(natural_toy, x[:4], y[:4])


def test_dlr_losses_need_enough_classes():
    three = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    two = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    x = np.full((2, 4), 0.5, np.float32)
    with pytest.raises(ValueError, match="at least 4 classes"):
        apgd_t(three, x, [0, 1], eps=0.1)
    with pytest.raises(ValueError, match="at least 3 classes"):
        apgd(two, x, [0, 1], eps=0.1, loss="dlr")
    assert apgd(three, x, [0, 1], eps=0.1, loss="dlr", steps=2, verbose=0).shape == x.shape

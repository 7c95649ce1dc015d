"""FAB / FAB-T (Croce & Hein 2020b): the exact box-constrained projection, minimal distances on
a linear model, bounds, and strength on a small CNN."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import Bounds, LinearConstraint, linprog, minimize

import keras_qrobust as kq
from keras_qrobust.attacks.fab import fab, project_onto_hyperplane

tf = kq._keras.tf
keras = kq.keras


def _reference(x, w, b, norm):
    """min ‖δ‖ s.t. ⟨w, x + δ⟩ = b, 0 ≤ x + δ ≤ 1, by scipy (None when infeasible)."""
    d, c = len(x), b - w @ x
    reachable = np.sum(np.abs(w) * np.where(np.sign(w) * np.sign(c) > 0, 1 - x, x))
    if abs(c) > reachable * (1 - 1e-6):
        return None
    bounds = [(-xi, 1 - xi) for xi in x]
    if norm == "inf":  # variables (δ, t): min t, -t ≤ δ_i ≤ t
        cost = np.r_[np.zeros(d), 1.0]
        a_ub = np.block([[np.eye(d), -np.ones((d, 1))], [-np.eye(d), -np.ones((d, 1))]])
        result = linprog(cost, A_ub=a_ub, b_ub=np.zeros(2 * d), A_eq=np.r_[w, 0.0][None], b_eq=[c],
                         bounds=bounds + [(0, None)], method="highs")
        assert result.status == 0
        return result.fun
    result = minimize(lambda v: v @ v, np.zeros(d), jac=lambda v: 2 * v, hess=lambda v: 2 * np.eye(d),
                      bounds=Bounds(-x, 1 - x), constraints=[LinearConstraint(w[None], c, c)], method="trust-constr",
                      options={"gtol": 1e-12, "xtol": 1e-12, "maxiter": 5000})
    return float(np.sqrt(result.fun))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), norm=st.sampled_from(["inf", "2"]), d=st.integers(2, 12),
       scale=st.floats(0.05, 3.0))
def test_projection_is_the_minimal_norm_step_inside_the_box(seed, norm, d, scale):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, d)
    w = rng.normal(size=d) * (rng.uniform(size=d) > 0.2)  # some coordinates do not matter
    b = w @ x + scale * rng.normal() * np.abs(w).sum()
    step = project_onto_hyperplane(tf.constant(x[None], tf.float32), tf.constant(w[None], tf.float32),
                                   tf.constant([b], tf.float32), norm, (0.0, 1.0)).numpy()[0].astype(np.float64)
    assert np.all(x + step >= -1e-6) and np.all(x + step <= 1 + 1e-6)
    assert np.all(step[w == 0] == 0)
    size = np.abs(step).max() if norm == "inf" else np.linalg.norm(step)
    optimum = _reference(x, w, b, norm)
    if optimum is None:  # out of the box's reach: every moving coordinate goes to its bound
        direction = np.sign(w) * np.sign(b - w @ x)
        np.testing.assert_allclose(step[w != 0], np.where(direction > 0, 1 - x, -x)[w != 0], atol=1e-5)
    else:
        assert w @ (x + step) == pytest.approx(b, abs=1e-4 * (1 + np.abs(w).sum()))
        assert size == pytest.approx(optimum, rel=1e-3, abs=1e-5)


@pytest.fixture(scope="module")
def linear():
    """Three classes, logits Wx + c, on 6 inputs."""
    rng = np.random.default_rng(1)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)], name="linear")
    model.set_weights([rng.normal(size=(6, 3)).astype(np.float32), np.zeros(3, np.float32)])
    x = rng.uniform(0.3, 0.7, (40, 6)).astype(np.float32)
    return model, x, model.predict(x, verbose=0).argmax(1)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_fab_t_finds_the_minimal_distance_on_a_linear_model(linear, norm):
    model, x, y = linear
    kernel, _ = model.get_weights()
    logits = x @ kernel
    target = np.argsort(-logits, 1)[:, 1]
    # the exact closest point of class ≠ y along the boundary with the target (a hyperplane)
    w = (kernel[:, target] - kernel[:, y]).T
    b = np.zeros(len(x))
    exact = project_onto_hyperplane(tf.constant(x), tf.constant(w), tf.constant(b, tf.float32), norm,
                                    (0.0, 1.0)).numpy()
    exact_size = np.abs(exact).max(1) if norm == "inf" else np.linalg.norm(exact, axis=1)
    adv = fab(model, x, y, eps=10.0, norm=norm, target_classes=1, steps=30, verbose=0)
    found = np.abs(adv - x).max(1) if norm == "inf" else np.linalg.norm(adv - x, axis=1)
    assert np.all(model.predict(adv, verbose=0).argmax(1) != y)
    # overshoot η = 1.05 and the backward steps bring FAB to the boundary within a few percent
    np.testing.assert_allclose(found, exact_size, rtol=0.06)
    assert np.all(found >= exact_size * (1 - 1e-4))


@pytest.fixture(scope="module")
def digits_cnn():
    x, y = kq.datasets.load("digits", "train")
    x_test, y_test = kq.datasets.load("digits", "test")
    kq.training.set_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10)], name="digits_cnn")
    kq.training.train_classifier(model, x, y, epochs=15, batch_size=64, seed=0)
    return model, x_test[:150], y_test[:150]


@pytest.mark.parametrize("norm, eps", [("inf", 0.08), ("2", 0.6)])
@pytest.mark.parametrize("targeted", [True, False])
def test_fab_lowers_accuracy_and_stays_in_the_ball_and_box(digits_cnn, norm, eps, targeted):
    model, x, y = digits_cnn
    adv = fab(model, x, y, eps=eps, norm=norm, targeted=targeted, target_classes=3, steps=30, seed=0, verbose=0)
    delta = (adv - x).reshape(len(x), -1)
    size = np.abs(delta).max(1) if norm == "inf" else np.linalg.norm(delta, axis=1)
    assert np.all(size <= eps * (1 + 1e-5) + 1e-6) and adv.min() >= 0 and adv.max() <= 1
    predicted = kq.metrics.predict_labels(model, adv)
    clean = kq.metrics.predict_labels(model, x)
    changed = np.any(delta != 0, axis=1)
    assert np.all(predicted[changed] != y[changed])  # a returned point is an adversarial example
    np.testing.assert_array_equal(adv[~changed], x[~changed])  # the others are the inputs themselves
    np.testing.assert_array_equal(adv[clean != y], x[clean != y])
    assert np.mean(predicted == y) < np.mean(clean == y) - 0.2


def test_a_large_eps_breaks_everything_and_seeds_repeat(digits_cnn):
    model, x, y = digits_cnn
    adv = fab(model, x, y, eps=0.5, target_classes=2, steps=40, verbose=0)
    assert kq.metrics.accuracy(model, adv, y) == 0.0
    first = fab(model, x[:30], y[:30], eps=0.05, target_classes=1, steps=10, restarts=3, seed=4, verbose=0)
    second = fab(model, x[:30], y[:30], eps=0.05, target_classes=1, steps=10, restarts=3, seed=4, verbose=0)
    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize("kwargs, match", [
    (dict(eps=-0.1), "eps must be a finite number >= 0"),
    (dict(eps=0.1, alpha_max=0.0), r"alpha_max must be in \(0, 1\]"),
    (dict(eps=0.1, eta=0.9), "eta must be >= 1"),
    (dict(eps=0.1, beta=1.5), r"beta must be in \(0, 1\]"),
    (dict(eps=0.1, target_classes=10), "target_classes must be at most 9"),
    (dict(eps=0.1, steps=0), "steps must be an integer >= 1"),
    (dict(eps=0.1, norm="l1"), "norm must be"),
])
def test_bad_input_raises_before_computing(digits_cnn, kwargs, match):
    model, x, y = digits_cnn
    with pytest.raises(ValueError, match=match):
        fab(model, x[:4], y[:4], **kwargs)

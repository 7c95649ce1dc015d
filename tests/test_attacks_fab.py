"""FAB / FAB-T (Croce & Hein 2020b): the exact box-constrained projection, minimal distances on
linear models, ball/box/unchanged guarantees, strength on a small CNN, seeds and input checks."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

import keras_qrobust as kq
from keras_qrobust.attacks.fab import fab, project_onto_hyperplane

tf = kq._keras.tf
keras = kq.keras


def _size(delta, norm):
    delta = np.asarray(delta, np.float64).reshape(len(delta), -1)
    return np.abs(delta).max(1) if norm == "inf" else np.linalg.norm(delta, axis=1)


def _project(x, w, b, norm, clip=(0.0, 1.0)):
    return project_onto_hyperplane(tf.constant(x, tf.float32), tf.constant(w, tf.float32),
                                   tf.constant(b, tf.float32), norm, clip).numpy().astype(np.float64)


def _reference(x, w, b, norm):
    """min ‖δ‖ s.t. ⟨w, x + δ⟩ = b, 0 ≤ x + δ ≤ 1, independently of the τ parametrization (None when
    infeasible): L∞ as a linear program (scipy's HiGHS); L2 by brute force over the 3^d active sets
    (each coordinate free, on its lower or on its upper bound; the free ones by least squares)."""
    d, c = len(x), b - w @ x
    reachable = np.sum(np.abs(w) * np.where(np.sign(w) * np.sign(c) > 0, 1 - x, x))
    if abs(c) > reachable * (1 - 1e-6):
        return None
    if norm == "inf":  # variables (δ, t): min t, -t ≤ δ_i ≤ t
        cost = np.r_[np.zeros(d), 1.0]
        a_ub = np.block([[np.eye(d), -np.ones((d, 1))], [-np.eye(d), -np.ones((d, 1))]])
        result = linprog(cost, A_ub=a_ub, b_ub=np.zeros(2 * d), A_eq=np.r_[w, 0.0][None], b_eq=[c],
                         bounds=[(-xi, 1 - xi) for xi in x] + [(0, None)], method="highs")
        assert result.status == 0
        return result.fun
    best = np.inf
    for state in itertools.product((0, 1, 2), repeat=d):  # 0 free, 1 at 0, 2 at 1
        state = np.array(state)
        delta = np.where(state == 1, -x, np.where(state == 2, 1 - x, 0.0))
        free = state == 0
        rest = c - w @ delta
        square = w[free] @ w[free]
        if square > 0:
            delta[free] = w[free] * rest / square
        elif abs(rest) > 1e-9:
            continue
        if np.all(x + delta >= -1e-9) and np.all(x + delta <= 1 + 1e-9):
            best = min(best, np.linalg.norm(delta))
    return best


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), norm=st.sampled_from(["inf", "2"]), d=st.integers(1, 7),
       scale=st.floats(0.0, 3.0))
def test_projection_is_the_minimal_norm_step_inside_the_box(seed, norm, d, scale):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, d) * (rng.uniform(size=d) > 0.15)  # some coordinates on the lower bound
    w = rng.normal(size=d) * (rng.uniform(size=d) > 0.2)  # some coordinates do not matter
    b = w @ x + scale * rng.normal() * np.abs(w).sum()
    step = _project(x[None], w[None], [b], norm)[0]
    assert np.all(x + step >= -1e-6) and np.all(x + step <= 1 + 1e-6)
    assert np.all(step[w == 0] == 0)
    optimum = _reference(x, w, b, norm)
    if optimum is None:  # out of the box's reach: every moving coordinate goes to its bound
        direction = np.sign(w) * np.sign(b - w @ x)
        np.testing.assert_allclose(step[w != 0], np.where(direction > 0, 1 - x, -x)[w != 0], atol=1e-5)
    else:
        assert w @ (x + step) == pytest.approx(b, abs=1e-4 * (1 + np.abs(w).sum()))
        assert _size(step[None], norm)[0] == pytest.approx(optimum, rel=1e-3, abs=1e-5)


def _bisection(x, w, b, norm):
    """The same projection by bisection on τ in float64 (the KKT form), one row at a time."""
    c = b - w @ x
    direction = np.sign(w) * np.sign(c)
    room = np.where(direction > 0, 1 - x, x)
    step = (lambda tau: direction * np.minimum(tau, room)) if norm == "inf" else (
        lambda tau: direction * np.minimum(tau * np.abs(w), room))
    low, high = 0.0, 1e6
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if abs(w @ step(mid)) < abs(c) else (low, mid)
    return step(high)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_projection_of_a_batch_of_image_sized_rows_matches_bisection(norm):
    """784 coordinates, 64 rows mixing near, far and unreachable hyperplanes, all in one call."""
    rng = np.random.default_rng(3)
    n, d = 64, 784
    x = np.clip(rng.uniform(-0.3, 1.3, (n, d)), 0, 1)  # many pixels on a bound, as in images
    w = rng.normal(size=(n, d)) * (rng.uniform(size=(n, d)) > 0.3)
    spread = np.abs(w).sum(1)
    b = (w * x).sum(1) + rng.normal(size=n) * spread * np.geomspace(1e-4, 2.0, n)
    steps = _project(x, w, b, norm)
    expected = np.stack([_bisection(x[i], w[i], b[i], norm) for i in range(n)])
    np.testing.assert_allclose(steps, expected, atol=2e-4 * np.abs(expected).max())
    np.testing.assert_allclose(_size(steps, norm), _size(expected, norm), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_projection_without_a_box_is_the_closed_form(norm):
    rng = np.random.default_rng(4)
    x, w, b = rng.normal(size=(5, 7)), rng.normal(size=(5, 7)), rng.normal(size=5)
    w[0] = 0.0  # nowhere to go: no step
    c = b - (w * x).sum(1)
    dual = np.abs(w).sum(1) if norm == "inf" else (w ** 2).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = (np.sign(w) if norm == "inf" else w) * np.nan_to_num(c / dual)[:, None]
    np.testing.assert_allclose(_project(x, w, b, norm, clip=None), expected, rtol=1e-5, atol=1e-6)


def _exact_distances(kernel, bias, x, y, norm, clip=(0.0, 1.0)):
    """Distance from each x to the boundary {z_l = z_y} of every class l (inside the box; ∞ where the
    boundary does not meet it), shape (n, classes)."""
    out = np.full((len(x), kernel.shape[1]), np.inf)
    for l in range(kernel.shape[1]):
        w = (kernel[:, l, None] - kernel[:, y]).T
        b = bias[y] - bias[l]
        step = _project(x, w, b, norm, clip)
        on_plane = np.abs(((x + step) * w).sum(1) - b) <= 1e-4 * (1 + np.abs(w).sum(1))
        out[:, l] = np.where(on_plane & (l != y), _size(step, norm), np.inf)
    return out


@pytest.fixture(scope="module")
def linear():
    """Four classes, logits Wx + c, on 6 inputs."""
    rng = np.random.default_rng(1)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)], name="linear")
    model.set_weights([rng.normal(size=(6, 4)).astype(np.float32), rng.normal(0, 0.1, 4).astype(np.float32)])
    x = rng.uniform(0.2, 0.8, (40, 6)).astype(np.float32)
    return model, x, model.predict(x, verbose=0).argmax(1)


@pytest.mark.parametrize("clip", [(0.0, 1.0), None])
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_fab_t_finds_the_minimal_distance_on_a_linear_model(linear, norm, clip):
    model, x, y = linear
    kernel, bias = model.get_weights()
    exact = _exact_distances(kernel, bias, x, y, norm, clip)
    target = np.argsort(-(x @ kernel + bias), 1)[:, 1]
    to_target = exact[np.arange(len(x)), target]
    keep = np.isfinite(to_target)  # the target's boundary meets the box
    adv = fab(model, x, y, eps=10.0, norm=norm, target_classes=1, steps=30, clip=clip, verbose=0)
    found = _size(adv - x, norm)
    assert np.all(model.predict(adv, verbose=0).argmax(1) != y)
    # no misclassified point is closer than the nearest boundary; FAB-T gets within 1% of the target's
    # (on a linear model its iterates settle 0.52% beyond it: the overshoot η = 1.05 against β = 0.9)
    assert np.all(found >= exact.min(1) * (1 - 1e-4))
    assert np.all(found[keep] <= to_target[keep] * 1.01)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_untargeted_fab_finds_the_nearest_boundary_on_a_linear_model(linear, norm):
    model, x, y = linear
    kernel, bias = model.get_weights()
    nearest = _exact_distances(kernel, bias, x, y, norm).min(1)
    adv = fab(model, x, y, eps=10.0, norm=norm, targeted=False, steps=30, verbose=0)
    found = _size(adv - x, norm)
    assert np.all(model.predict(adv, verbose=0).argmax(1) != y)
    assert np.all(found >= nearest * (1 - 1e-4))
    assert np.all(found <= nearest * 1.01)


def test_a_single_logit_model_is_two_classes():
    rng = np.random.default_rng(2)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(1)], name="logistic")
    model.set_weights([rng.normal(size=(5, 1)).astype(np.float32), np.zeros(1, np.float32)])
    x = rng.uniform(0.4, 0.6, (20, 5)).astype(np.float32)
    w, z = model.get_weights()[0][:, 0], (x @ model.get_weights()[0])[:, 0]
    adv = fab(model, x, eps=10.0, norm=2, target_classes=1, steps=20, verbose=0)
    found = np.linalg.norm(adv - x, axis=1)
    exact = np.abs(z) / np.linalg.norm(w)  # the boundary z = 0 (inside the box here)
    assert np.all((adv @ w > 0) != (z > 0))
    np.testing.assert_allclose(found, exact, rtol=1e-2)
    with pytest.raises(ValueError, match="target_classes must be at most 1"):
        fab(model, x, eps=1.0, target_classes=2)


@pytest.fixture(scope="module")
def digits_cnn():
    x, y = kq.datasets.load("digits", "train")
    x_test, y_test = kq.datasets.load("digits", "test")
    kq.defenses.set_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(16, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dense(10)], name="digits_cnn")
    kq.defenses.train_classifier(model, x, y, epochs=15, batch_size=64, seed=0)
    return model, x_test[:150], y_test[:150]


@pytest.mark.parametrize("norm, eps", [("inf", 0.08), ("2", 0.6)])
@pytest.mark.parametrize("targeted", [True, False])
def test_fab_lowers_accuracy_and_stays_in_the_ball_and_box(digits_cnn, norm, eps, targeted):
    model, x, y = digits_cnn
    adv = fab(model, x, y, eps=eps, norm=norm, targeted=targeted, target_classes=3, steps=30, seed=0,
              batch_size=64, verbose=0)
    assert adv.dtype == np.float32 and adv.shape == x.shape
    delta = (adv - x).reshape(len(x), -1)
    assert np.all(_size(delta, norm) <= eps * (1 + 1e-6)) and adv.min() >= 0 and adv.max() <= 1
    predicted = kq.metrics.predict_labels(model, adv)
    clean = kq.metrics.predict_labels(model, x)
    assert np.mean(clean != y) > 0  # some inputs are misclassified to begin with
    changed = np.any(delta != 0, axis=1)
    assert np.all(predicted[changed] != y[changed])  # a returned point is an adversarial example
    np.testing.assert_array_equal(adv[~changed], x[~changed])  # the others are the inputs themselves
    np.testing.assert_array_equal(adv[clean != y], x[clean != y])
    assert np.mean(predicted == y) < np.mean(clean == y) - 0.2


def test_a_large_eps_breaks_everything_and_eps_zero_changes_nothing(digits_cnn):
    model, x, y = digits_cnn
    adv = fab(model, x, y, eps=0.5, target_classes=2, steps=40, verbose=0)
    assert kq.metrics.accuracy(model, adv, y) == 0.0
    np.testing.assert_array_equal(fab(model, x, y, eps=0.0, verbose=0), x)


def test_restarts_start_at_seeded_random_points():
    """A ReLU unit dead at every input: no gradient there, so restart 0 cannot move; random restarts
    land where the unit is alive for some inputs, and FAB reaches the boundary from there."""
    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(1, activation="relu"), keras.layers.Dense(2)],
                             name="dead_relu")
    model.set_weights([np.full((16, 1), 1 / 16, np.float32), np.array([-0.51], np.float32),
                       np.array([[0.0, 10.0]], np.float32), np.array([0.0, -0.5], np.float32)])
    noise = np.random.default_rng(0).uniform(-0.2, 0.2, (30, 16))
    x = (0.5 + noise - noise.mean(1, keepdims=True)).astype(np.float32)  # mean 0.5: the unit is off, class 0
    run = lambda restarts, seed: fab(model, x, eps=0.3, target_classes=1, steps=10, restarts=restarts,  # noqa: E731
                                     seed=seed, verbose=0)
    np.testing.assert_array_equal(run(1, 4), x)
    first = run(4, 4)
    assert np.any(first != x)
    np.testing.assert_array_equal(first, run(4, 4))
    assert not np.array_equal(first, run(4, 5))
    assert np.all(kq.metrics.predict_labels(model, first)[np.any(first != x, 1)] == 1)


def test_a_model_without_input_gradient_warns_and_returns_the_inputs(linear):
    _, x, _ = linear
    model = keras.Sequential([keras.Input((6,)), keras.layers.Lambda(tf.stop_gradient), keras.layers.Dense(3)],
                             name="blocked")
    with pytest.warns(UserWarning, match="no gradient"):
        adv = fab(model, x[:8], eps=1.0, target_classes=1, steps=3, verbose=0)
    np.testing.assert_array_equal(adv, x[:8])


@pytest.mark.parametrize("kwargs, match", [
    (dict(eps=-0.1), "eps must be a finite number >= 0"),
    (dict(eps=0.1, alpha_max=0.0), r"alpha_max must be in \(0, 1\]"),
    (dict(eps=0.1, alpha_max=1.5), r"alpha_max must be in \(0, 1\]"),
    (dict(eps=0.1, eta=0.9), "eta must be >= 1"),
    (dict(eps=0.1, beta=1.5), r"beta must be in \(0, 1\]"),
    (dict(eps=0.1, target_classes=10), "target_classes must be at most 9.*pass target_classes=9"),
    (dict(eps=0.1, target_classes=0), "target_classes must be an integer >= 1"),
    (dict(eps=0.1, steps=0), "steps must be an integer >= 1"),
    (dict(eps=0.1, restarts=0), "restarts must be an integer >= 1"),
    (dict(eps=0.1, batch_size=0), "batch_size must be an integer >= 1"),
    (dict(eps=0.1, norm="l1"), "norm must be"),
    (dict(eps=0.1, y=np.full(4, 10)), r"labels must be in \[0, 10\)"),
    (dict(eps=0.1, x=np.full((4, 8, 8, 1), 2.0)), "outside the clip range"),
    (dict(eps=0.1, x=np.zeros((4, 28, 28, 1))), "expects"),
])
def test_bad_input_raises_before_computing(digits_cnn, kwargs, match):
    model, x, y = digits_cnn
    kwargs = dict(dict(x=x[:4], y=y[:4]), **kwargs)
    with pytest.raises(ValueError, match=match):
        fab(model, kwargs.pop("x"), kwargs.pop("y"), **kwargs)

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust.defenses.feedback import (
    boundary_distance,
    class_margins,
    feedback_counts,
    feedback_learning,
    fine_tune,
    generate_feedback_examples,
)

keras = kq.keras
D = 6
W = np.array([0.9, -0.6, 0.4, 1.0, -0.3, 0.7])
B = -float(W.sum()) * 0.5  # the boundary m(x) = w·x + b = 0 passes through the centre of the box


def linear_model(w=W, b=B):
    """Logits ``[0, w·x + b]``: class 1 exactly where the margin ``m(x) = w·x + b > 0``."""
    model = keras.Sequential([keras.Input((len(w),)), keras.layers.Dense(2)])
    kernel = np.zeros((len(w), 2), np.float32)
    kernel[:, 1] = w
    model.set_weights([kernel, np.array([0.0, b], np.float32)])
    return model


def interior_inputs(n=80, seed=0):
    """Inputs far enough from the box edges that ``x + t·d`` is never clipped for ``t ≤ 0.25``."""
    x = np.random.default_rng(seed).uniform(0.3, 0.7, (n, D)).astype(np.float32)
    return x, (x.astype(np.float64) @ W + B > 0).astype(np.int64)


def signed(x, y):
    """``s·m(x)`` with ``s = ±1`` so that it is positive when ``x`` is classified as ``y``."""
    return np.where(y == 1, 1.0, -1.0), x.astype(np.float64) @ W + B


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_distance_along_random_directions_matches_the_line_search_of_a_linear_model(norm):
    x, y = interior_inputs()
    y[:5] = 1 - y[:5]  # misclassified: r = 0
    t_max = 0.25
    result = boundary_distance(linear_model(), x, y, t_max=t_max, directions=5, norm=norm, seed=3)
    d = result.directions().astype(np.float64)
    if norm == "inf":
        assert set(np.unique(d)) == {-1.0, 1.0}
    else:
        np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, rtol=1e-6)
    s, m0 = signed(x, y)
    # along d the signed margin is s·m0 + t·s·(w·d): it reaches 0 at t* = s·m0 / (−s·w·d) when decreasing
    slope = s[:, None] * (d @ W)
    with np.errstate(divide="ignore"):
        t_star = np.where(slope < 0, (s * m0)[:, None] / -slope, np.inf)
    truth = np.minimum(t_star, t_max)
    resolution = t_max / 20 / 2**10
    ok = result.correct
    assert not ok[:5].any() and ok[5:].all() and np.all(result.distances[:5] == 0)
    error = result.distances[ok] - truth[ok]
    assert error.min() >= -1e-5 and error.max() <= resolution + 1e-5, (error.min(), error.max())
    assert np.all(result.distances[ok][t_star[ok] > t_max] == t_max)
    assert 0.15 < np.mean(t_star[ok] < t_max) < 0.9  # both cases really occur


@pytest.mark.parametrize("norm,dual", [("inf", 1), ("2", 2)])
def test_distance_along_the_steepest_direction_is_the_distance_to_the_hyperplane(norm, dual):
    x, y = interior_inputs(40, seed=1)
    s, m0 = signed(x, y)
    steepest = -np.sign(W) if norm == "inf" else -W / np.linalg.norm(W)
    given = 3.0 * (s[:, None] * steepest)[:, None, :]  # (N, K=1, D), not unit: scaled by the function
    result = boundary_distance(linear_model(), x, y, t_max=0.25, directions=given, norm=norm)
    # the l_norm distance from x to {w·x + b = 0} is |m(x)| / ||w||_dual (dual of inf is 1, of 2 is 2)
    truth = np.minimum(np.abs(m0) / np.linalg.norm(W, dual), 0.25)
    np.testing.assert_allclose(result.distances[:, 0], truth, atol=0.25 / 20 / 2**10 + 1e-5)
    assert np.all(result.distances[:, 0] >= truth - 1e-5)


def test_directions_depend_on_the_seed_only_not_the_batching():
    x, y = interior_inputs(30)
    model = linear_model()
    a = boundary_distance(model, x, y, t_max=0.25, directions=3, seed=7, batch_size=4)
    b = boundary_distance(model, x, y, t_max=0.25, directions=3, seed=7, batch_size=64)
    c = boundary_distance(model, x, y, t_max=0.25, directions=3, seed=8)
    np.testing.assert_array_equal(a.distances, b.distances)
    np.testing.assert_array_equal(a.directions([4, 9]), b.directions()[[4, 9]])
    assert not np.array_equal(a.directions(), c.directions())


def test_class_margins_are_per_class_means_over_correct_inputs():
    x, y = interior_inputs(60)
    y[:6] = 1 - y[:6]
    result = boundary_distance(linear_model(), x, y, t_max=0.25, directions=4, seed=0)
    expected = [result.distances[result.correct & (y == c)].mean() for c in (0, 1)]
    np.testing.assert_allclose(result.class_margins(), expected)
    np.testing.assert_allclose(class_margins(linear_model(), x, y, t_max=0.25, directions=4, seed=0), expected)
    only_zero = boundary_distance(linear_model(), x[y == 0], y[y == 0], t_max=0.25, directions=2, seed=0)
    margins = only_zero.class_margins()
    assert np.isfinite(margins[0]) and np.isnan(margins[1])


def test_feedback_counts_are_proportional_to_inverse_margins():
    np.testing.assert_array_equal(feedback_counts([0.1, 0.2, np.nan, 0.4], 70), [40, 20, 0, 10])
    rng = np.random.default_rng(0)
    for _ in range(20):
        margins = rng.uniform(0.01, 1.0, 7)
        total = int(rng.integers(1, 500))
        counts = feedback_counts(margins, total)
        share = (1 / margins) / (1 / margins).sum()
        assert counts.sum() == total and np.all(np.abs(counts - total * share) < 1)
    with pytest.raises(ValueError, match="none of the given inputs correctly"):
        feedback_counts([np.nan, np.nan], 10)


def check_examples(examples, x, y, t_max, norm, gamma=0.1, fraction=0.5):
    """The invariants of generated examples: labels, counts, distance, box, recomputation."""
    result = examples.distances
    total = int(round(fraction * len(x)))
    assert len(examples.y) == total and examples.counts.sum() == total
    np.testing.assert_array_equal(np.bincount(examples.y, minlength=result.num_classes), examples.counts)
    np.testing.assert_array_equal(examples.y, y[examples.source])
    assert result.correct[examples.source].all()
    share = 1 / examples.margins / np.sum(1 / examples.margins)
    assert np.all(np.abs(examples.counts - total * share) < 1)
    r = result.distances[examples.source, examples.direction]
    np.testing.assert_allclose(examples.step, np.minimum((1 + gamma) * r, t_max), rtol=1e-6)
    moved = (examples.x - x[examples.source]).reshape(total, -1)
    size = np.abs(moved).max(1) if norm == "inf" else np.linalg.norm(moved, axis=1)
    assert size.max() <= t_max + 1e-5
    assert examples.x.min() >= 0.0 and examples.x.max() <= 1.0
    d = result.directions(examples.source)[np.arange(total), examples.direction]
    np.testing.assert_allclose(examples.x, np.clip(x[examples.source] + examples.step[:, None] * d, 0, 1), atol=1e-6)


def test_generated_examples_cross_the_boundary_and_favour_the_narrow_class():
    x, y = interior_inputs(200)
    model = linear_model(b=B + 0.12)  # the boundary moves towards class 0: class 0 has the smaller margin
    y = (x.astype(np.float64) @ W + B + 0.12 > 0).astype(np.int64)
    examples = generate_feedback_examples(model, x, y, t_max=0.25, directions=4, seed=0)
    check_examples(examples, x, y, 0.25, "inf")
    assert examples.margins[0] < examples.margins[1] and examples.counts[0] > examples.counts[1]
    crossed = examples.step < 0.25  # moved (1 + γ)·r: past the boundary, where a linear model stays
    assert crossed.sum() > 10
    assert np.all(kq.metrics.predict_labels(model, examples.x[crossed]) != examples.y[crossed])


def test_generated_examples_stay_in_the_box_and_within_t_max_in_l2():
    rng = np.random.default_rng(2)
    x = rng.uniform(0.0, 1.0, (150, D)).astype(np.float32)
    x[:, 0] = rng.integers(0, 2, 150)  # pixels on the box edges: clipping matters
    y = kq.metrics.predict_labels(linear_model(), x)
    examples = generate_feedback_examples(linear_model(), x, y, t_max=0.4, norm="2", directions=3,
                                          fraction=0.8, gamma=0.2, seed=5)
    check_examples(examples, x, y, 0.4, "2", gamma=0.2, fraction=0.8)


def two_clusters():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(0.25, 0.4, (100, 4)), rng.uniform(0.6, 0.75, (100, 4))]).astype(np.float32)
    return x, np.repeat([0, 1], 100)


def narrow_model():
    """A separating linear model whose boundary (mean(x) = 0.42) hugs class 0."""
    model = linear_model(np.full(4, 5.0), -5.0 * 4 * 0.42)
    kq.defenses.compile_classifier(model, learning_rate=0.1)
    return model


def test_feedback_learning_widens_the_narrow_class_margin():
    x, y = two_clusters()
    model = narrow_model()
    kq.defenses.set_seed(0)
    history = feedback_learning(model, (x, y), t_max=0.3, rounds=2, epochs=3, directions=4, seed=0)
    assert len(history.margins) == 3 and len(history.counts) == 2 and len(history.fit) == 2
    assert all(m.shape == (2,) for m in history.margins) and all(c.sum() == 100 for c in history.counts)
    assert all(len(fit["loss"]) == 3 for fit in history.fit)
    assert history.counts[0][0] > history.counts[0][1]
    assert history.margins[-1][0] > history.margins[0][0] + 0.01, history.margins
    assert history.margin_mean[-1] > history.margin_mean[0]
    assert float(keras.backend.get_value(model.optimizer.learning_rate)) == pytest.approx(0.1)  # restored


def test_feedback_learning_with_an_adversarial_model():
    x, y = two_clusters()
    robust = kq.defenses.AdversarialModel(narrow_model(), attack="fgsm_rs", eps=0.05)
    kq.defenses.compile_classifier(robust, learning_rate=0.1)
    before = robust.model.get_weights()[0].copy()
    history = feedback_learning(robust, (x, y), t_max=0.3, rounds=1, epochs=1, directions=2, seed=0)
    assert "adv_loss" in history.fit[0] and len(history.margins) == 2
    assert not np.array_equal(before, robust.model.get_weights()[0])


def test_fine_tune_trains_and_logs_as_fit_does_on_the_same_batches():
    """The one fine-tune (``train_on_batch`` passes, usable inside a running ``fit``) against
    ``fit`` without shuffling on the data in the fine-tune's order: same weights, same logs
    (the metrics accumulate over a pass, the last batch of 150 % 32 = 22 weighs 22 examples)."""
    x, y = two_clusters()
    examples = generate_feedback_examples(narrow_model(), x, y, t_max=0.3, directions=2, seed=0, fraction=0.25)
    both_x, both_y = np.concatenate([x, examples.x]), np.concatenate([y, examples.y])
    tuned, reference = narrow_model(), narrow_model()
    logs = fine_tune(tuned, (x, y), examples, epochs=2, batch_size=32, lr_scale=0.5, seed=3, stream=1,
                     validation_data=(x[:50], y[:50]))
    rng, fitted = np.random.default_rng(np.random.SeedSequence(3, spawn_key=(2, 1))), {}
    reference.optimizer.learning_rate = 0.05
    for _ in range(2):
        order = rng.permutation(len(both_x))
        epoch = reference.fit(both_x[order], both_y[order], batch_size=32, shuffle=False, verbose=0,
                              validation_data=(x[:50], y[:50])).history
        for key, value in epoch.items():
            fitted.setdefault(key, []).extend(value)
    assert set(logs) == set(fitted) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    for key in logs:
        np.testing.assert_allclose(logs[key], fitted[key], rtol=1e-5, err_msg=key)
    for a, b in zip(tuned.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(keras.backend.get_value(tuned.optimizer.learning_rate)) == pytest.approx(0.1)  # restored


def test_errors_are_raised_before_any_work():
    x, y = interior_inputs(20)
    model = linear_model()
    with pytest.raises(ValueError, match="must be compiled"):
        feedback_learning(model, (x, y), t_max=0.2)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.9)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="ExponentialDecay schedule"):
        feedback_learning(model, (x, y), t_max=0.2)
    with pytest.raises(TypeError, match="tuple"):
        feedback_learning(narrow_model(), x, t_max=0.2)
    with pytest.raises(ValueError, match="t_max must be > 0"):
        boundary_distance(model, x, y, t_max=0.0)
    with pytest.raises(ValueError, match="x has 20 inputs but y has 19 labels"):
        boundary_distance(model, x, y[:19], t_max=0.2)
    with pytest.raises(ValueError, match="directions has shape"):
        boundary_distance(model, x, y, t_max=0.2, directions=np.ones((20, D)))
    with pytest.raises(ValueError, match="all-zero direction"):
        boundary_distance(model, x, y, t_max=0.2, directions=np.zeros((20, 1, D)))
    with pytest.raises(ValueError, match="outside the clip range"):
        boundary_distance(model, x + 1.0, y, t_max=0.2)
    with pytest.raises(ValueError, match="none of the given inputs correctly"):
        generate_feedback_examples(model, x, 1 - y, t_max=0.2, directions=2)

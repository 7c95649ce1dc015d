"""Square Attack L2, its schedule, and Square on deployed artifacts (the shipped file itself)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_attacks_blackbox import CountImages

import keras_qrobust as kq
from keras_qrobust import export
from keras_qrobust.attacks.square import meta_pattern, square, square_fraction

keras = kq.keras
tf = kq.tf


@pytest.fixture(scope="module")
def test_set(fashion_slice):
    _, (x, y) = fashion_slice
    return x[:100], y[:100]


def l2(delta):
    return np.linalg.norm(delta.reshape(len(delta), -1), axis=1)


def test_the_schedule_halves_p_at_the_papers_points():
    rescaled = [float(square_fraction(i, 1000, 0.8)) for i in (0, 1, 2, 5, 20, 50, 100, 200, 400, 600, 800, 999)]
    # 1,000 iterations: the points 10, 50, 200, ... of 10,000 become 1, 5, 20, 50, 100, 200, 400, 600, 800
    assert rescaled == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2, 0.1, 0.05, 0.025, 0.0125, 0.00625, 0.003125,
                                      0.0015625])
    raw = [float(square_fraction(i, 5000, 0.8, rescale=False)) for i in (10, 11, 51, 201, 501, 1001, 2001, 4001)]
    assert raw == pytest.approx([0.8 / 2 ** k for k in range(8)])


def test_the_l2_update_pattern_is_centred_and_balanced():
    pattern = meta_pattern(5)
    assert np.sqrt((pattern ** 2).sum()) == pytest.approx(1.0)
    assert pattern[:2].min() > 0 and pattern[2:].max() < 0  # positive top half, negative bottom half
    assert pattern[1, 2] == pattern[:2].max() and pattern[3, 2] == pattern[2:].min()  # peaks at the centres


def test_l2_square_lowers_accuracy_on_the_l2_sphere(trained_cnn, test_set):
    x, y = test_set
    clean = kq.metrics.accuracy(trained_cnn, x, y)
    adv = square(trained_cnn, x, y, eps=2.0, norm="2", queries=300, p_init=0.3, seed=0, verbose=0)
    assert np.all(l2(adv - x) <= 2.0 * (1 + 1e-5)) and adv.min() >= 0 and adv.max() <= 1
    assert kq.metrics.accuracy(trained_cnn, adv, y) < clean - 0.15
    same = square(trained_cnn, x, y, eps=2.0, norm="2", queries=300, p_init=0.3, seed=0, verbose=0)
    np.testing.assert_array_equal(adv, same)


@settings(max_examples=10, deadline=None)
@given(eps=st.floats(0.05, 4.0), seed=st.integers(0, 2**31 - 1), p_init=st.floats(0.05, 1.0))
def test_l2_square_never_leaves_the_ball_or_the_box(trained_cnn, test_set, eps, seed, p_init):
    x, y = test_set
    adv = square(trained_cnn, x[:12], y[:12], eps=eps, norm="2", queries=12, p_init=p_init, seed=seed, verbose=0)
    assert np.all(l2(adv - x[:12]) <= eps * (1 + 1e-5) + 1e-6)
    assert adv.min() >= 0.0 and adv.max() <= 1.0


def test_targeted_l2_square_reaches_targets(trained_cnn, test_set):
    # these targets are hard for this model: white-box PGD-50 (L2, ε = 4) reaches 52% of them
    x, y = test_set
    target = (y + 1) % 10
    clean_hits = np.mean(kq.metrics.predict_labels(trained_cnn, x[:40]) == target[:40])
    adv = square(trained_cnn, x[:40], target[:40], eps=4.0, norm="2", queries=300, p_init=0.3, targeted=True,
                 seed=0, verbose=0)
    assert np.mean(kq.metrics.predict_labels(trained_cnn, adv) == target[:40]) >= clean_hits + 0.2


def test_l2_square_spends_exactly_its_budget_on_a_model_it_cannot_fool(rng):
    counter = CountImages()
    constant = keras.Sequential([keras.Input((10, 10, 1)), counter, keras.layers.Flatten(),
                                 keras.layers.Dense(3, kernel_initializer="zeros",
                                                    bias_initializer=keras.initializers.Constant([1.0, 0.0, 0.0]))])
    x = rng.uniform(0, 1, (4, 10, 10, 1)).astype(np.float32)
    adv = square(constant, x, eps=1.0, norm="2", queries=23, seed=0, verbose=0)
    assert int(counter.count.numpy()) == 4 * 23
    assert np.all(l2(adv - x) <= 1.0 + 1e-5)


def test_the_ce_loss_works_and_the_loss_is_checked(trained_cnn, test_set):
    x, y = test_set
    adv = square(trained_cnn, x, y, eps=0.1, queries=200, p_init=0.3, loss="ce", seed=0, verbose=0)
    assert kq.metrics.accuracy(trained_cnn, adv, y) < kq.metrics.accuracy(trained_cnn, x, y)
    with pytest.raises(ValueError, match="loss must be one of"):
        square(trained_cnn, x, y, eps=0.1, loss="dlr")


# ------------------------------------------------------------------------ deployed files
@pytest.fixture(scope="module")
def deployed(trained_cnn, fashion_slice, tmp_path_factory):
    (x_train, _), _ = fashion_slice
    folder = tmp_path_factory.mktemp("square_deployed")
    qmodel = kq.RobustQuantizer.from_setting("w8a8").quantize(trained_cnn, x_train[:256])
    return qmodel, {"tflite": export.load(export.tflite(qmodel, folder / "m.tflite", x_train[:256])),
                    "onnx": export.load(export.onnx(qmodel, folder / "m.onnx", x_train[:256]))}


@pytest.mark.parametrize("runtime", ["tflite", "onnx"])
def test_square_attacks_the_deployed_file_itself(deployed, test_set, runtime):
    qmodel, files = deployed
    artifact = files[runtime]
    x, y = test_set
    x, y = x[:60], y[:60]
    clean = kq.metrics.accuracy(artifact, x, y)
    adv = square(artifact, x, y, eps=0.1, queries=400, p_init=0.3, seed=0, verbose=0)
    assert np.abs(adv - x).max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    # scored by the artifact itself: the attack used its runtime's own outputs
    attacked = kq.metrics.accuracy(artifact, adv, y)
    assert attacked < clean - 0.1
    # the same search on the Keras twin (same seed and budget) ends within a few inputs of it
    twin = square(qmodel, x, y, eps=0.1, queries=400, p_init=0.3, seed=0, verbose=0)
    assert abs(kq.metrics.accuracy(qmodel, twin, y) - attacked) <= 0.05
    # and the twin agrees with the file on (nearly) every attacked input
    assert np.mean(kq.metrics.predict_labels(artifact, adv) == kq.metrics.predict_labels(qmodel, adv)) >= 0.95


def test_square_on_a_file_spends_its_budget_in_the_runtime(deployed, test_set):
    _, files = deployed
    artifact = files["tflite"]
    calls = []
    original = artifact._run
    artifact._run = lambda batch: calls.append(len(batch)) or original(batch)
    try:
        x, y = test_set
        square(artifact, x[:10], y[:10], eps=0.1, queries=20, seed=0, verbose=0)
    finally:
        del artifact._run
    assert 0 < sum(calls) <= 10 * 20 + 64  # + the output-kind probe


def test_gradient_attacks_refuse_a_deployed_file_with_the_fix(deployed, test_set):
    _, files = deployed
    x, y = test_set
    for attack in (kq.attacks.pgd, kq.attacks.apgd, kq.attacks.fab):
        with pytest.raises(ValueError, match=r"m\.tflite is a deployed artifact, which has no gradients: attack its "
                                             "Keras twin, or the file itself with a gradient-free attack"):
            attack(files["tflite"], x[:4], y[:4], eps=0.1)
    with pytest.raises(ValueError, match="need its Keras twin"):
        kq.attacks.autoattack(files["tflite"], x[:4], y[:4], eps=0.1)
    result = kq.attacks.autoattack(files["onnx"], x[:20], y[:20], eps=0.1, attacks=["square"],
                                   options={"square": {"queries": 50}}, verbose=0)
    assert result.attacks == ("square",) and 0.0 <= result.robust_accuracy <= result.clean_accuracy


def test_a_probability_output_file_is_read_through_log(trained_cnn, fashion_slice, tmp_path):
    (x_train, _), (x, y) = fashion_slice
    softmax = keras.Sequential([keras.Input((28, 28, 1)), trained_cnn, keras.layers.Softmax()])
    artifact = export.load(export.tflite(softmax, tmp_path / "p.tflite", precision="float32"))
    view = kq.attacks._queries.as_query_model(artifact, probe=x[:16])
    assert view.probabilities
    np.testing.assert_allclose(view.logits(tf.constant(x[:8])).numpy(),
                               tf.nn.log_softmax(trained_cnn(x[:8])).numpy(), atol=1e-3)

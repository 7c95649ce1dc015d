"""Square Attack L2, its schedule, and Square on deployed artifacts (the shipped file itself)."""

import gc
import importlib
import itertools
import weakref

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
square_module = importlib.import_module("keras_qrobust.attacks.square")  # the module, not the function


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


def reference_l2_step(x, best, eps, size, first, second, eta, sign):
    """One L2 proposal of the authors' code (autoattack/square.py, attack_single_run, L2
    branch) for one (H, W, C) image, its windows at ``first``/``second`` (top, left), the
    update pattern ``eta`` and the per-channel signs ``sign``, without the box."""
    (vh, vw), (vh2, vw2), s = first, second, size
    delta = (best - x).astype(np.float64)
    window = (slice(vh, vh + s), slice(vw, vw + s))
    both = np.zeros(delta.shape[:2], bool)
    both[window] = True
    both[vh2:vh2 + s, vw2:vw2 + s] = True
    norm_window = np.sqrt((delta[window] ** 2).sum((0, 1)))
    norm_image = np.sqrt((delta ** 2).sum())
    norm_windows = np.sqrt((delta[both] ** 2).sum(0))
    new = eta[:, :, None] * sign + delta[window] / (1e-12 + norm_window)
    new = new / (1e-12 + np.sqrt((new ** 2).sum((0, 1)))) * np.sqrt(
        np.maximum(eps ** 2 - norm_image ** 2, 0) / x.shape[-1] + norm_windows ** 2)
    delta[vh2:vh2 + s, vw2:vw2 + s] = 0.0
    delta[window] = new
    return x + delta / np.sqrt((delta ** 2).sum()) * eps


def test_the_l2_proposal_is_the_reference_update(rng, monkeypatch):
    # Algorithm 3: the old content of window 1 (normalized) plus a new ±η, rescaled so the
    # windows carry their old mass plus what the ε-sphere is missing, window 2 emptied
    n, height, width, channels, eps = 5, 12, 10, 3, 1.5
    x = rng.uniform(0.2, 0.8, (n, height, width, channels)).astype(np.float32)
    delta = rng.normal(size=x.shape) * rng.uniform(0.3, 1.0, (n, 1, 1, 1))  # inside the sphere
    best = (x + eps * delta / np.linalg.norm(delta.reshape(n, -1), axis=1)[:, None, None, None]
            * rng.uniform(0.5, 1.0, (n, 1, 1, 1))).astype(np.float32)
    windows = []
    draw = square_module._window
    monkeypatch.setattr(square_module, "_window", lambda *a: windows.append(draw(*a)) or windows[-1])
    table = tf.constant(square_module._pattern_table(min(height, width)))
    for size in (3, 5, 7):
        windows.clear()
        got = square_module._proposal_l2(tf.constant(x), tf.constant(best), tf.constant(size), tf.constant(eps),
                                         None, tf.constant([size, 1], tf.int64), table).numpy()
        assert np.allclose(np.linalg.norm((got - x).reshape(n, -1), axis=1), eps, rtol=1e-5)
        (_, top, left), (_, top2, left2) = windows
        for k in range(n):  # the signs and the transposition are drawn inside: one candidate must match
            candidates = [reference_l2_step(x[k], best[k], eps, size, (top[k], left[k]), (top2[k], left2[k]),
                                            eta, np.array(sign))
                          for eta in (meta_pattern(size), meta_pattern(size).T)
                          for sign in itertools.product((-1.0, 1.0), repeat=channels)]
            assert min(np.abs(got[k] - c).max() for c in candidates) < 1e-5


def test_the_l2_start_tiles_signed_patterns_on_the_sphere(rng):
    x = rng.uniform(0, 1, (6, 28, 28, 2)).astype(np.float32)
    start = square_module._l2_start(x, 2.0, tf.constant([0, 1], tf.int64)).numpy()
    delta = start - x
    assert np.allclose(np.linalg.norm(delta.reshape(6, -1), axis=1), 2.0, rtol=1e-5)
    eta = meta_pattern(5)  # 28 // 5 = 5: 5 × 5 tiles from (1, 1)
    tiles = delta[:, 1:26, 1:26].reshape(6, 5, 5, 5, 5, 2).transpose(0, 1, 3, 5, 2, 4).reshape(-1, 5, 5)
    tiles = tiles / np.linalg.norm(tiles.reshape(len(tiles), -1), axis=1)[:, None, None]
    match = [min(np.abs(t - sign * pattern).max() for sign in (-1, 1) for pattern in (eta, eta.T)) for t in tiles]
    assert max(match) < 1e-5
    transposed = [np.abs(t - eta.T).max() < 1e-5 or np.abs(t + eta.T).max() < 1e-5 for t in tiles]
    assert 0.3 < np.mean(transposed) < 0.7  # each tile transposed with probability 1/2
    assert np.all(delta[:, 26:] == 0) and np.all(delta[:, :, 26:] == 0) and np.all(delta[:, 0] == 0)


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
    adv = square(artifact, x, y, eps=0.1, queries=1000, p_init=0.3, seed=0, verbose=0)
    assert np.abs(adv - x).max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    # scored by the artifact itself: the attack used its runtime's own outputs
    attacked = kq.metrics.accuracy(artifact, adv, y)
    assert attacked < clean - 0.1
    # the same search on the Keras twin (same seed and budget) ends within a few inputs of it
    twin = square(qmodel, x, y, eps=0.1, queries=1000, p_init=0.3, seed=0, verbose=0)
    assert abs(kq.metrics.accuracy(qmodel, twin, y) - attacked) <= 0.05
    # and the twin agrees with the file on (nearly) every attacked input
    assert np.mean(kq.metrics.predict_labels(artifact, adv) == kq.metrics.predict_labels(qmodel, adv)) >= 0.95


def test_square_attacks_an_akida_file_through_the_same_interface(fashion_slice, test_set, tmp_path):
    pytest.importorskip("cnn2snn", reason="Akida export needs cnn2snn and akida: pip install 'keras-qrobust[akida]'")
    (x_train, y_train), _ = fashion_slice
    kq.defenses.set_seed(0)
    tiny = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
                             keras.layers.Conv2D(8, 3, strides=2, activation="relu"), keras.layers.Flatten(),
                             keras.layers.Dense(10)])
    kq.defenses.train_classifier(tiny, x_train, y_train, epochs=3, batch_size=64, seed=0, verbose=0)
    artifact = export.load(export.akida(tiny, tmp_path / "m.fbz", x_train[:64], weight_bits=8, activation_bits=8))
    x, y = test_set
    x, y = x[:40], y[:40]
    clean = kq.metrics.accuracy(artifact, x, y)
    for norm, eps in (("inf", 0.1), ("2", 1.5)):
        adv = square(artifact, x, y, eps=eps, norm=norm, queries=100, p_init=0.3, seed=0, verbose=0)
        distance = np.abs(adv - x).max() if norm == "inf" else l2(adv - x).max()
        assert distance <= eps * (1 + 1e-5) and adv.min() >= 0 and adv.max() <= 1
        assert kq.metrics.accuracy(artifact, adv, y) < clean - 0.1


class CountRows:
    """Counts the inputs an artifact's runtime evaluates (``_run`` wrapped on the instance)."""

    def __init__(self, artifact):
        self.artifact, self.rows, self.original = artifact, 0, artifact._run

    def __enter__(self):
        def counted(batch):
            self.rows += len(batch)
            return self.original(batch)

        self.artifact._run = counted
        return self

    def __exit__(self, *exc):
        del self.artifact._run


@pytest.fixture(scope="module")
def constant_files(fashion_slice, tmp_path_factory):
    """A model that always says class 0 (Square cannot fool it), as .tflite and .onnx files."""
    (x_train, _), _ = fashion_slice
    folder = tmp_path_factory.mktemp("square_constant")
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3, kernel_initializer="zeros",
                                                 bias_initializer=keras.initializers.Constant([1.0, 0.0, 0.0]))])
    return {"tflite": export.load(export.tflite(model, folder / "c.tflite", precision="float32")),
            "onnx": export.load(export.onnx(model, folder / "c.onnx", x_train[:64]))}


@pytest.mark.parametrize("runtime, norm", [("tflite", "inf"), ("tflite", "2"), ("onnx", "2")])
def test_square_on_a_file_spends_exactly_its_budget_in_the_runtime(constant_files, test_set, runtime, norm):
    artifact = constant_files[runtime]
    x = test_set[0][:6]
    eps = 0.1 if norm == "inf" else 1.0
    with CountRows(artifact) as counter:
        adv = square(artifact, x, eps=eps, norm=norm, queries=23, batch_size=4, seed=0, verbose=0)
    # queries per input, plus one look at the first inputs' scores to tell logits from probabilities
    assert counter.rows == 6 * 23 + 6
    distance = np.abs(adv - x).max(axis=(1, 2, 3)) if norm == "inf" else l2(adv - x)
    assert np.all(distance <= eps * (1 + 1e-5)) and adv.min() >= 0 and adv.max() <= 1
    assert np.all(distance > 0)  # every input was searched


def test_an_attacked_file_is_not_kept_alive_by_the_compiled_search(constant_files, test_set):
    # the compiled loop is cached per artifact, weakly: it must not keep the runtime in memory
    artifact = export.load(constant_files["tflite"].path)
    square(artifact, test_set[0][:2], eps=0.1, queries=5, seed=0, verbose=0)
    alive = weakref.ref(artifact)
    del artifact
    gc.collect()
    assert alive() is None


def test_bad_input_raises_before_the_file_is_queried(constant_files, test_set):
    artifact = constant_files["tflite"]
    x = test_set[0][:4]
    with CountRows(artifact) as counter:
        for call, match in [(lambda: square(artifact, x, eps=-1), "eps must be"),
                            (lambda: square(artifact, x, eps=0.1, norm=1), "norm must be"),
                            (lambda: square(artifact, x, eps=0.1, p_init=0), r"p_init must be in \(0, 1\]"),
                            (lambda: square(artifact, x * 3, eps=0.1), "outside the clip range"),
                            (lambda: square(artifact, x[:, :20], eps=0.1), r"c\.tflite takes inputs of shape"),
                            (lambda: square(artifact, x, eps=0.1, output="scores"), "output must be one of")]:
            with pytest.raises(ValueError, match=match):
                call()
        with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
            square(artifact, x, np.full(4, 3), eps=0.1)
    assert counter.rows == 4  # only the labels' check needed the output width (one look at the scores)


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


def test_a_probability_output_file_is_read_through_log(trained_cnn, fashion_slice, deployed, tmp_path):
    (x_train, _), (x, y) = fashion_slice
    softmax = keras.Sequential([keras.Input((28, 28, 1)), trained_cnn, keras.layers.Softmax()])
    artifact = export.load(export.tflite(softmax, tmp_path / "p.tflite", precision="float32"))
    view = kq.attacks._queries.as_query_model(artifact, probe=x[:16])
    assert view.probabilities
    np.testing.assert_allclose(view.logits(tf.constant(x[:8])).numpy(),
                               tf.nn.log_softmax(trained_cnn(x[:8])).numpy(), atol=1e-3)
    # an explicit output kind is taken as given; a logits file is not mistaken for probabilities
    assert not kq.attacks._queries.as_query_model(artifact, "logits", probe=x[:16]).probabilities
    logits_file = deployed[1]["tflite"]  # int8 logits
    assert not kq.attacks._queries.as_query_model(logits_file, probe=x[:16]).probabilities
    assert kq.attacks._queries.as_query_model(logits_file, "probabilities", probe=x[:16]).probabilities

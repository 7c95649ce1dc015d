import warnings

import numpy as np
import pytest
from cleverhans.tf2.attacks.carlini_wagner_l2 import carlini_wagner_l2, clip_tanh, loss_fn

import keras_qrobust as kq
from keras_qrobust.attacks import _common, as_attack_model, pgd
from keras_qrobust.attacks.cw import cw_l2
from keras_qrobust.attacks.deepfool import deepfool, deepfool_perturbation
from keras_qrobust.attacks.noise import noise

keras = kq.keras
tf = kq.tf

# a CW budget that converges on the small cnn in a few seconds (the defaults take minutes)
CW_FAST = dict(learning_rate=0.02, max_iterations=300, binary_search_steps=3, initial_const=0.3, verbose=0)


def distance(a, b, norm="2"):
    diff = (a - b).reshape(len(a), -1)
    return np.abs(diff).max(axis=1) if norm == "inf" else np.linalg.norm(diff, axis=1)


def predict(model, x):
    return as_attack_model(model).predict_labels(x)


@pytest.fixture(scope="module")
def correct(trained_cnn, fashion_slice):
    """32 test images the trained cnn classifies correctly, and their labels."""
    _, (x, y) = fashion_slice
    keep = predict(trained_cnn, x[:128]) == y[:128]
    return x[:128][keep][:32], y[:128][keep][:32]


def pgd_needed(model, x, y, norm, grid):
    """Per input, the size of the first PGD example (10 steps, growing ε) that fools the model
    (inf where none does): an upper bound on its minimal adversarial distance."""
    needed = np.full(len(x), np.inf)
    for eps in grid:
        adv = pgd(model, x, y, eps=float(eps), steps=10, norm=norm, random_start=False, verbose=0)
        new = (predict(model, adv) != y) & np.isinf(needed)
        needed[new] = distance(adv, x, norm)[new]
    return needed


GRIDS = {"2": 0.2 * 1.25 ** np.arange(12), "inf": 0.02 * 1.25 ** np.arange(11)}


@pytest.fixture(scope="module")
def needed(trained_cnn, correct):
    cache = {}

    def get(norm):
        if norm not in cache:
            cache[norm] = pgd_needed(trained_cnn, *correct, norm, GRIDS[norm])
        return cache[norm]

    return get


# ----------------------------------------------------------------------------- Carlini & Wagner
def reference_cw(logits_fn, x, y, *, binary_search_steps, max_iterations, initial_const, learning_rate,
                 abort_early):
    """Carlini's l2_attack.py, eagerly: cleverhans's loss_fn and clip_tanh, a fresh tf_keras
    Adam per round, one constant per example and the reference binary search in numpy."""
    n = len(x)
    onehot = tf.one_hot(y, 10)
    w0 = tf.atanh((tf.constant(x) * 2.0 - 1.0) * 0.999999)
    lower, upper, const = np.zeros(n), np.full(n, 1e10), np.full(n, initial_const)
    best_l2, best = np.full(n, 1e10), x.copy()
    modifier = tf.Variable(tf.zeros_like(w0))
    aborted = 0
    for round_ in range(binary_search_steps):
        if binary_search_steps >= 10 and round_ == binary_search_steps - 1:
            const = upper.copy()  # the reference code's last round at the upper bound
        optimizer = keras.optimizers.Adam(learning_rate)
        modifier.assign(tf.zeros_like(w0))
        round_success, round_l2 = np.zeros(n, bool), np.full(n, 1e10)
        previous = None
        for iteration in range(max_iterations):
            with tf.GradientTape() as tape:
                adv = clip_tanh(modifier + w0, 0.0, 1.0)
                logits = logits_fn(adv)
                loss, l2 = loss_fn(w0, adv, onehot, logits, 0.0, const=tf.constant(const, tf.float32))
            optimizer.apply_gradients([(tape.gradient(loss, modifier), modifier)])
            if abort_early and iteration % max(max_iterations // 10, 1) == 0:
                if previous is not None and loss > previous * 0.9999:
                    aborted += 1
                    break
                previous = loss
            l2, fooled = l2.numpy(), logits.numpy().argmax(1) != y
            better = fooled & (l2 < round_l2)
            round_l2[better], round_success = l2[better], round_success | better
            better = fooled & (l2 < best_l2)
            best_l2[better], best[better] = l2[better], adv.numpy()[better]
        for e in range(n):
            if round_success[e]:
                upper[e] = min(upper[e], const[e])
                if upper[e] < 1e9:
                    const[e] = (lower[e] + upper[e]) / 2
            else:
                lower[e] = max(lower[e], const[e])
                const[e] = (lower[e] + upper[e]) / 2 if upper[e] < 1e9 else const[e] * 10
    return best, aborted


def test_cw_equals_cleverhans_in_one_round(trained_cnn, fashion_slice):
    # One round, where cleverhans 4.0.0's binary-search bugs do not act. Its image-shaped
    # constant broadcasts so that every example is weighted by the sum of all constants; a
    # power of two makes that sum exact in float32, and the two runs are then step-for-step
    # the same.
    _, (x, _) = fashion_slice
    x = x[:16]
    const = 2.0 ** -10
    theirs = carlini_wagner_l2(trained_cnn, tf.constant(x), batch_size=16, binary_search_steps=1,
                               max_iterations=40, initial_const=const, learning_rate=0.01)
    ours = cw_l2(trained_cnn, x, binary_search_steps=1, max_iterations=40, initial_const=const * x.size,
                 learning_rate=0.01, verbose=0)
    changed = distance(ours, x) > 0
    assert 4 <= changed.sum() <= 15  # some, not all, inputs fooled: a non-trivial comparison
    np.testing.assert_allclose(ours, np.asarray(theirs), atol=1e-6)


@pytest.mark.parametrize("abort_early, binary_search_steps, max_iterations, learning_rate",
                         [(True, 3, 30, 0.02), (False, 10, 6, 0.1)])
def test_cw_binary_search_equals_the_reference_code(trained_cnn, correct, abort_early, binary_search_steps,
                                                    max_iterations, learning_rate):
    x, y = correct[0][:8], correct[1][:8]
    config = dict(binary_search_steps=binary_search_steps, max_iterations=max_iterations, initial_const=0.1,
                  learning_rate=learning_rate, abort_early=abort_early)
    expected, aborted = reference_cw(as_attack_model(trained_cnn).logits, x, y, **config)
    assert (aborted > 0) == abort_early
    ours = cw_l2(trained_cnn, x, y, verbose=0, **config)
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    assert 2 <= (distance(ours, x) > 0).sum() <= 7


def test_cw_succeeds_with_smaller_l2_than_pgd(trained_cnn, correct, needed):
    x, y = correct[0][:16], correct[1][:16]
    adv = cw_l2(trained_cnn, x, y, **CW_FAST)
    changed = distance(adv, x) > 0
    fooled = predict(trained_cnn, adv) != y
    np.testing.assert_array_equal(changed, fooled)  # unchanged exactly where it failed
    assert fooled.mean() >= 0.9
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    pgd_l2 = needed("2")[:16]
    both = fooled & np.isfinite(pgd_l2)
    assert both.sum() >= 10
    assert distance(adv, x)[both].mean() < pgd_l2[both].mean()


def test_cw_without_success_returns_the_input_unchanged(trained_cnn, correct):
    x, y = correct
    adv = cw_l2(trained_cnn, x, y, binary_search_steps=1, max_iterations=1, initial_const=1e-6, verbose=0)
    np.testing.assert_array_equal(adv, x)


def test_cw_targeted_reaches_the_target(trained_cnn, correct):
    x, y = correct[0][:8], correct[1][:8]
    target = (y + 1) % 10
    adv = cw_l2(trained_cnn, x, target, targeted=True, **CW_FAST)
    changed = distance(adv, x) > 0
    assert changed.mean() >= 0.75
    np.testing.assert_array_equal(predict(trained_cnn, adv)[changed], target[changed])
    with pytest.raises(ValueError, match="needs labels"):
        cw_l2(trained_cnn, x, targeted=True)


# ----------------------------------------------------------------------------- DeepFool
@pytest.mark.parametrize("norm", ["2", "inf"])
def test_deepfool_flips_nearly_all_labels_near_the_boundary(trained_cnn, correct, needed, norm):
    x, y = correct
    adv = deepfool(trained_cnn, x, y, norm=norm)
    fooled = predict(trained_cnn, adv) != y
    assert fooled.mean() >= 0.95
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    # minimal: half of the perturbation leaves most labels alone
    assert (predict(trained_cnn, x + (adv - x) / 2) == y).mean() >= 0.8
    # small: about the size PGD needs at its best ε on a 1.25x grid
    size, pgd_size = distance(adv, x, norm), needed(norm)
    assert np.median(np.where(fooled, size, np.inf)) <= 1.25 * np.median(pgd_size)


@pytest.mark.parametrize("classes", [5, 1])
@pytest.mark.parametrize("norm", ["2", "inf"])
def test_deepfool_finds_the_exact_distance_on_a_linear_model(norm, classes, rng):
    # f(x) = Wx + b: the nearest boundary is min_k |f_k - f_y| / ‖w_k - w_y‖_q (q dual of the
    # attack norm), reached in one step; DeepFool returns (1 + η)·(that + 1e-4). One output
    # is a binary classifier, seen as the logits [0, z].
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(), keras.layers.Dense(classes)])
    x = rng.uniform(0, 1, (40, 6, 6, 1)).astype(np.float32)
    kernel, bias = model.layers[-1].get_weights()
    if classes == 1:
        kernel, bias = np.concatenate([np.zeros_like(kernel), kernel], 1), np.concatenate([[0.0], bias])
    logits = x.reshape(40, -1) @ kernel + bias
    y = logits.argmax(1)
    w = kernel.T[None, :, :] - kernel.T[y][:, None, :]  # (N, classes, features)
    gap = np.abs(logits - logits[np.arange(40), y][:, None])
    dual = 2 if norm == "2" else 1
    with np.errstate(divide="ignore", invalid="ignore"):
        exact = np.where(np.arange(len(bias)) == y[:, None], np.inf,
                         gap / np.linalg.norm(w, ord=dual, axis=2)).min(1)
    adv = deepfool(model, x, norm=norm, steps=1, overshoot=0.02, num_candidates=5, clip=None)
    assert (predict(model, adv) != y).all()
    # atol: the distance is a difference of float32 inputs in [0, 1], resolved to ~6e-8 (the
    # float32 spacing at 0.5), so a distance of ~1e-4 cannot match to rtol 1e-4 alone
    np.testing.assert_allclose(distance(adv, x, norm), 1.02 * (exact + 1e-4), rtol=1e-4, atol=2e-7)


@pytest.mark.parametrize("norm, eps", [("2", 0.8), ("inf", 0.06)])
def test_deepfool_projects_onto_the_eps_ball(trained_cnn, correct, norm, eps):
    x, y = correct
    free = deepfool(trained_cnn, x, y, norm=norm)
    capped = deepfool(trained_cnn, x, y, norm=norm, eps=eps)
    assert distance(capped, x, norm).max() <= eps * (1 + 1e-5)
    assert capped.min() >= 0.0 and capped.max() <= 1.0
    inside = distance(free, x, norm) <= eps
    assert 0 < inside.sum() < len(x)  # both cases occur
    np.testing.assert_allclose(capped[inside], free[inside], atol=1e-6)
    assert (predict(trained_cnn, capped) != y).mean() < (predict(trained_cnn, free) != y).mean()


def test_deepfool_perturbation_is_zero_where_already_misclassified(trained_cnn, correct):
    x, y = correct
    attack_model = as_attack_model(trained_cnn)
    labels = np.where(np.arange(len(y)) % 2 == 0, y, (y + 1) % 10)  # odd rows: wrong labels
    options = dict(steps=20, overshoot=0.02, norm="2", num_candidates=10, clip=(0.0, 1.0))
    delta = deepfool_perturbation(attack_model, tf.constant(x), tf.constant(labels), **options)
    assert isinstance(delta, tf.Tensor)
    delta = delta.numpy()
    flat = np.abs(delta).reshape(len(x), -1).max(1)
    assert (flat[1::2] == 0).all()
    assert (flat[0::2] > 0).all()
    assert (predict(trained_cnn, x + delta)[0::2] != y[0::2]).mean() >= 0.95

    @tf.function
    def inside(xs, ls):  # as the UAP loop calls it
        return deepfool_perturbation(attack_model, xs, ls, **options)

    np.testing.assert_allclose(inside(tf.constant(x), tf.constant(labels)).numpy(), delta, atol=1e-6)


# ----------------------------------------------------------------------------- shared behaviour
@pytest.mark.parametrize("attack", ["cw", "deepfool"])
def test_attacks_work_on_a_w4a4_quantized_model(trained_cnn, correct, fashion_slice, attack):
    (x_train, _), _ = fashion_slice
    qmodel = kq.RobustQuantizer(4, 4).quantize(trained_cnn, x_train[:256])
    x, y = correct[0][:16], correct[1][:16]
    keep = predict(qmodel, x) == y
    x, y = x[keep], y[keep]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gives no gradient.*")
        if attack == "cw":
            adv = cw_l2(qmodel, x, y, learning_rate=0.02, max_iterations=100, binary_search_steps=2,
                        initial_const=1.0, verbose=0)
        else:
            adv = deepfool(qmodel, x, y, num_candidates=4)
    # zero gradients would leave every input unchanged
    assert (predict(qmodel, adv) != y).mean() >= 0.5


@pytest.mark.parametrize("attack", ["cw", "deepfool"])
def test_softmax_output_model_gives_the_same_examples(trained_cnn, correct, attack):
    inputs = keras.Input((28, 28, 1))
    probabilities = keras.Model(inputs, keras.layers.Softmax()(trained_cnn(inputs)))
    assert as_attack_model(probabilities).probabilities
    x, y = correct[0][:16], correct[1][:16]

    def run(model):
        if attack == "cw":
            return cw_l2(model, x, y, learning_rate=0.02, max_iterations=50, binary_search_steps=2,
                         initial_const=1.0, verbose=0)
        return deepfool(model, x, y, num_candidates=4)

    from_logits, from_probabilities = run(trained_cnn), run(probabilities)
    assert (predict(trained_cnn, from_probabilities) != y).mean() >= 0.5
    close = np.abs(from_logits - from_probabilities).reshape(len(x), -1).max(1) < 1e-4
    assert close.mean() >= 0.9


# ----------------------------------------------------------------------------- noise
@pytest.mark.parametrize("kind, std", [("uniform", 0.1 / np.sqrt(3)), ("gaussian", 0.1)])
def test_noise_statistics(kind, std):
    x = np.full((200, 28, 28, 1), 0.5, np.float32)
    delta = noise(x, eps=0.1, kind=kind, seed=0) - x
    assert abs(delta.mean()) < 2e-3
    assert abs(delta.std() - std) < 0.02 * std
    if kind == "uniform":
        assert delta.min() >= -0.1 - 1e-6 and delta.max() <= 0.1 + 1e-6
        assert delta.min() < -0.099 and delta.max() > 0.099


def test_noise_is_clipped_and_seeded():
    x = np.zeros((50, 28, 28, 1), np.float32)
    out = noise(x, eps=0.2, kind="gaussian", seed=3)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() <= 1.0
    assert (out > 0).mean() == pytest.approx(0.5, abs=0.02)  # the negative half is clipped to 0
    np.testing.assert_array_equal(out, noise(x, eps=0.2, kind="gaussian", seed=3))
    assert not np.array_equal(out, noise(x, eps=0.2, kind="gaussian", seed=4))
    np.testing.assert_array_equal(noise(x + 0.5, eps=0.0, seed=1), x + 0.5)


# ----------------------------------------------------------------------------- bad input
def _fresh():
    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])


ATTACKS = {
    "cw": lambda m, x, y, **kw: cw_l2(m, x, y, verbose=0, **kw),
    "deepfool": lambda m, x, y, **kw: deepfool(m, x, y, **kw),
    "noise": lambda m, x, y, **kw: noise(x, model=m, **{"eps": 0.1, **kw}),
}
GOOD = np.full((4, 28, 28, 1), 0.5, np.float32)
BAD = {
    "wrong shape": (dict(x=np.zeros((4, 28, 28), np.float32)), ValueError, r"shape \(4, 28, 28\).*expects"),
    "outside clip": (dict(x=GOOD + 1.0), ValueError, "outside the clip range"),
    "label out of range": (dict(y=np.array([0, 1, 2, 10])), ValueError, r"labels must be in \[0, 10\)"),
    "one-hot labels": (dict(y=np.eye(10)[:4]), ValueError, "one-hot"),
    "negative eps": (dict(eps=-0.1), ValueError, "eps must be a finite number >= 0"),
    "negative confidence": (dict(confidence=-1.0), ValueError, "confidence must be"),
    "zero learning rate": (dict(learning_rate=0.0), ValueError, "learning_rate must be > 0"),
    "no box": (dict(clip=None), ValueError, "needs a finite box"),
    "one candidate": (dict(num_candidates=1), ValueError, "num_candidates must be >= 2"),
    "unknown norm": (dict(norm=1), ValueError, "norm must be"),
    "unknown kind": (dict(kind="salt"), ValueError, "kind must be one of"),
}
APPLIES = {
    "cw": ["wrong shape", "outside clip", "label out of range", "one-hot labels", "negative confidence",
           "zero learning rate", "no box"],
    "deepfool": ["wrong shape", "outside clip", "label out of range", "one-hot labels", "negative eps",
                 "one candidate", "unknown norm"],
    "noise": ["wrong shape", "outside clip", "negative eps", "unknown kind"],
}


@pytest.mark.parametrize("attack, case", [(a, c) for a, cases in APPLIES.items() for c in cases])
def test_bad_input_raises_a_clear_error_before_computing(attack, case):
    model = _fresh()
    changes, error, match = BAD[case]
    args = {"x": GOOD, "y": None}
    options = {k: v for k, v in changes.items() if k not in args}
    args.update({k: v for k, v in changes.items() if k in args})
    with pytest.raises(error, match=match):
        ATTACKS[attack](model, args["x"], args["y"], **options)
    assert model not in _common._COMPILED  # nothing was traced

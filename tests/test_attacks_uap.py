"""Universal adversarial perturbations: uap, sgd_uap / targeted_uap, ensemble_uap, transfer matrix."""

import json
import warnings

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust.attacks.uap import (
    TransferMatrix,
    UAPResult,
    ensemble_uap,
    fooling_rate,
    sgd_uap,
    targeted_uap,
    uap,
    uap_transfer_matrix,
)

keras = kq.keras
tf = kq.tf
EPS = {"inf": 0.1, "2": 2.0}


@pytest.fixture(scope="module")
def craft(fashion_slice):
    (x, _), _ = fashion_slice
    return x[:256]


@pytest.fixture(scope="module")
def held_out(fashion_slice):
    _, (x, y) = fashion_slice
    return x, y


@pytest.fixture(scope="module")
def w4a4(trained_cnn, craft):
    return kq.RobustQuantizer(4, 4).quantize(trained_cnn, craft)


def predict(model, x):
    return np.asarray(model(x, training=False)).argmax(-1)


def norm_of(v, norm):
    return np.abs(v).max() if norm == "inf" else np.linalg.norm(v.ravel())


# ----------------------------------------------------------------------------- constraints
@pytest.mark.parametrize("norm", ["inf", "2"])
@pytest.mark.parametrize("method", ["uap", "uap-steps", "sgd_uap", "ensemble_uap"])
def test_perturbation_stays_in_the_ball_and_inputs_in_the_box(trained_cnn, craft, norm, method):
    eps = EPS[norm]
    x = craft[:96]
    if method == "uap":
        result = uap(trained_cnn, x, eps=eps, norm=norm, max_passes=2, seed=0, verbose=0)
    elif method == "uap-steps":
        result = uap(trained_cnn, x, eps=eps, norm=norm, aggregate="steps", step_size=eps, max_passes=2,
                     seed=0, verbose=0)
    elif method == "sgd_uap":
        result = sgd_uap(trained_cnn, x, eps=eps, norm=norm, epochs=3, batch_size=32, seed=0, verbose=0)
    else:
        result = ensemble_uap([trained_cnn, trained_cnn], x, eps=eps, norm=norm, max_passes=2, seed=0,
                              verbose=0)
    v = np.asarray(result)
    assert v.shape == x.shape[1:] and v.dtype == np.float32
    assert norm_of(v, norm) <= eps * (1 + 1e-5)
    assert norm_of(v, norm) > 0.5 * eps  # it did move
    adv = result.apply(x)
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert np.all(np.abs(adv - x) <= np.abs(v) + 1e-6)  # clipping only shrinks the change


def test_result_fields_and_reported_fooling_rate_equal_the_recomputed_one(trained_cnn, craft):
    result = uap(trained_cnn, craft, eps=0.1, max_passes=3, patience=None, seed=0, verbose=0)
    assert isinstance(result, UAPResult) and result.method == "uap-fgsm"
    assert result.passes == len(result.history) <= 3
    assert result.seconds > 0 and result.eps == 0.1 and result.norm == "inf"
    assert result.fooling_rate == max(result.history)  # the best pass is returned
    assert result.fooling_rate == fooling_rate(trained_cnn, craft, result.perturbation)
    assert result.fooling_rate == fooling_rate(trained_cnn, craft, result)  # __array__
    clean, adv = predict(trained_cnn, craft), predict(trained_cnn, result.apply(craft))
    assert result.fooling_rate == pytest.approx(np.mean(clean != adv))
    assert fooling_rate(trained_cnn, craft, np.zeros((28, 28, 1))) == 0.0


def test_fooling_rate_is_against_clean_predictions_not_labels(trained_cnn, held_out):
    x, y = held_out
    v = np.full((28, 28, 1), 0.3, np.float32)
    clean, adv = predict(trained_cnn, x), predict(trained_cnn, np.clip(x + v, 0, 1))
    expected = np.mean(clean != adv)
    assert expected != pytest.approx(np.mean(adv != y))  # the two notions differ here
    assert fooling_rate(trained_cnn, x, v) == pytest.approx(expected)
    assert fooling_rate(trained_cnn, x, v[None], batch_size=7) == pytest.approx(expected)


# ----------------------------------------------------------------------------- strength
def uniform_noise(eps, seed=0):
    return np.random.default_rng(seed).uniform(-eps, eps, (28, 28, 1)).astype(np.float32)


def test_uap_fools_clearly_more_than_random_noise_on_held_out_data(trained_cnn, fashion_slice, held_out):
    (x_train, _), _ = fashion_slice
    x_test, _ = held_out
    eps = 0.1
    result = uap(trained_cnn, x_train, eps=eps, seed=0, verbose=0)  # indirect: craft on train
    noise = fooling_rate(trained_cnn, x_test, uniform_noise(eps))
    corners = eps * np.random.default_rng(1).choice([-1.0, 1.0], (28, 28, 1)).astype(np.float32)
    held = fooling_rate(trained_cnn, x_test, result)
    assert held > 3 * noise and held > noise + 0.08, (held, noise)
    assert held > fooling_rate(trained_cnn, x_test, corners) + 0.05


def test_sgd_uap_fools_held_out_data(trained_cnn, craft, held_out):
    x_test, _ = held_out
    result = sgd_uap(trained_cnn, craft, eps=0.15, epochs=4, batch_size=64, loss_clip=5.0, seed=0, verbose=0)
    assert result.method == "sgd_uap" and result.epochs == 4 and len(result.history) == 4
    assert result.fooling_rate == fooling_rate(trained_cnn, craft, result)
    noise = fooling_rate(trained_cnn, x_test, uniform_noise(0.15))
    assert fooling_rate(trained_cnn, x_test, result) > noise + 0.12


def test_targeted_uap_pushes_predictions_to_the_target(trained_cnn, craft, held_out):
    x_test, _ = held_out
    target = 8
    clean_share = np.mean(predict(trained_cnn, x_test) == target)
    result = targeted_uap(trained_cnn, craft, target, eps=0.15, epochs=4, batch_size=64, seed=0, verbose=0)
    assert result.method == "targeted_uap"
    assert result.target_rate == pytest.approx(np.mean(predict(trained_cnn, result.apply(craft)) == target))
    held_share = np.mean(predict(trained_cnn, result.apply(x_test)) == target)
    assert held_share > clean_share + 0.15, (held_share, clean_share)
    same = sgd_uap(trained_cnn, craft, eps=0.15, epochs=4, batch_size=64, targeted_class=target, seed=0,
                   verbose=0)
    np.testing.assert_array_equal(same.perturbation, result.perturbation)


# ----------------------------------------------------------------------------- algorithm
def test_same_seed_same_perturbation_other_seed_differs(trained_cnn, craft):
    x = craft[:128]
    runs = [uap(trained_cnn, x, eps=0.1, max_passes=2, seed=s, verbose=0).perturbation for s in (3, 3, 4)]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    sgd = [sgd_uap(trained_cnn, x, eps=0.1, epochs=2, batch_size=32, seed=s, verbose=0).perturbation
           for s in (3, 3, 4)]
    np.testing.assert_array_equal(sgd[0], sgd[1])
    assert not np.array_equal(sgd[0], sgd[2])


def sequential_uap(model, x, *, eps, alpha, passes, seed):
    """Moosavi-Dezfooli 2017 Algorithm 1 with an FGSM inner step, one input at a time (eager)."""
    clean = predict(model, x)
    rng = np.random.default_rng(seed)
    v = np.zeros(x.shape[1:], np.float32)
    best = (-1.0, v)
    for _ in range(passes):
        for i in rng.permutation(len(x)):
            point = tf.constant(x[i:i + 1] + v)
            with tf.GradientTape() as tape:
                tape.watch(point)
                logits = model(tf.clip_by_value(point, 0.0, 1.0), training=False)
                loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=clean[i:i + 1], logits=logits)
            if int(np.argmax(logits[0])) == clean[i]:  # not fooled yet: step
                v = np.clip(v + alpha * np.sign(tape.gradient(loss, point).numpy()[0]), -eps, eps)
        rate = np.mean(predict(model, np.clip(x + v, 0, 1)) != clean)
        if rate > best[0]:
            best = (rate, v)
    return best


def test_batch_size_one_is_the_sequential_algorithm(trained_cnn, craft):
    x = craft[:12]
    result = uap(trained_cnn, x, eps=0.1, step_size=0.03, batch_size=1, max_passes=2, patience=None,
                 target_fooling=1.0, seed=5, verbose=0)
    rate, v = sequential_uap(trained_cnn, x, eps=0.1, alpha=0.03, passes=result.passes, seed=5)
    np.testing.assert_allclose(result.perturbation, v, atol=1e-6)
    assert result.fooling_rate == pytest.approx(rate)


def test_progress_bar_runs(trained_cnn, craft, capsys):
    uap(trained_cnn, craft[:16], eps=0.1, batch_size=8, max_passes=1, seed=0, verbose=1)
    sgd_uap(trained_cnn, craft[:16], eps=0.1, batch_size=8, epochs=1, seed=0, verbose=1)
    assert "uap-fgsm" in capsys.readouterr().err


def test_stops_at_target_fooling_and_on_a_plateau(trained_cnn, craft):
    x = craft[:64]
    easy = uap(trained_cnn, x, eps=0.3, batch_size=8, max_passes=5, target_fooling=0.2, seed=0, verbose=0)
    assert easy.passes == 1 and easy.fooling_rate >= 0.2
    plateau = uap(trained_cnn, x, eps=0.0, max_passes=5, patience=2, seed=0, verbose=0)
    assert plateau.passes == 3 and plateau.fooling_rate == 0.0
    assert not np.any(plateau.perturbation)


def test_deepfool_inner_attack(trained_cnn, craft):
    x = craft[:64]
    result = uap(trained_cnn, x, eps=0.1, inner="deepfool", batch_size=8, max_passes=1, seed=0, verbose=0,
                 deepfool={"steps": 10, "num_candidates": 4})
    assert result.method == "uap-deepfool"
    assert np.abs(result.perturbation).max() <= 0.1 + 1e-6
    assert result.fooling_rate == fooling_rate(trained_cnn, x, result) > 0.05
    l2 = uap(trained_cnn, x, eps=2.0, norm="2", inner="deepfool", batch_size=8, max_passes=1, seed=0,
             verbose=0, deepfool={"steps": 10, "num_candidates": 4})
    assert np.linalg.norm(l2.perturbation) <= 2.0 * (1 + 1e-5)
    assert l2.fooling_rate > 0.05


# ----------------------------------------------------------------------------- quantized / ensemble
def test_quantized_model_gives_straight_through_gradients(w4a4, craft):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a None gradient would warn
        result = uap(w4a4, craft[:96], eps=0.1, batch_size=8, max_passes=1, seed=0, verbose=0)
        sgd = sgd_uap(w4a4, craft[:96], eps=0.1, epochs=2, batch_size=32, step_size=0.05, seed=0, verbose=0)
    assert result.fooling_rate > 0.1 and sgd.fooling_rate > 0.1


def test_model_without_input_gradient_warns_instead_of_crashing(craft):
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Lambda(tf.round),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    with pytest.warns(UserWarning, match="no gradient"):
        result = uap(model, craft[:16], eps=0.1, max_passes=1, seed=0, verbose=0)
    assert not np.any(result.perturbation)


@pytest.mark.parametrize("sampling", ["step", "pass"])
def test_ensemble_uap_fools_the_float_model_and_its_w4a4_copy(trained_cnn, w4a4, craft, held_out, sampling):
    x_test, _ = held_out
    models = [trained_cnn, w4a4]
    result = ensemble_uap(models, craft, eps=0.15, step_size=0.03, aggregate="gradient", sampling=sampling,
                          max_passes=3, seed=0, verbose=0)
    assert result.method == "ensemble_uap" and len(result.model_fooling_rates) == 2
    recomputed = [fooling_rate(m, craft, result) for m in models]
    assert list(result.model_fooling_rates) == recomputed
    assert result.fooling_rate == pytest.approx(np.mean(recomputed))
    for model in models:
        held, noise = fooling_rate(model, x_test, result), fooling_rate(model, x_test, uniform_noise(0.15))
        assert held > noise + 0.08, (model.name, held, noise)


def test_ensemble_defaults_run_and_are_reproducible(trained_cnn, w4a4, craft):
    runs = [ensemble_uap([trained_cnn, w4a4], craft[:96], eps=0.1, max_passes=2, seed=1, verbose=0)
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0].perturbation, runs[1].perturbation)
    assert np.abs(runs[0].perturbation).max() <= 0.1 + 1e-6
    assert runs[0].fooling_rate > 0


# ----------------------------------------------------------------------------- transfer matrix
def test_transfer_matrix(trained_cnn, w4a4, craft, held_out):
    x_eval, y_eval = held_out
    matrix = uap_transfer_matrix({"fp32": trained_cnn, "w4a4": w4a4}, craft[:128], x_eval[:256], y_eval[:256],
                                 eps=0.2, seed=0, verbose=0, max_passes=2)
    assert isinstance(matrix, TransferMatrix) and matrix.names == ["fp32", "w4a4"]
    assert matrix.accuracy.shape == matrix.fooling_rate.shape == (2, 2)
    assert matrix.clean_accuracy.shape == (2,)
    clean = [np.mean(predict(m, x_eval[:256]) == y_eval[:256]) for m in (trained_cnn, w4a4)]
    np.testing.assert_allclose(matrix.clean_accuracy, clean)
    for i, name in enumerate(matrix.names):
        assert matrix.accuracy[i, i] < matrix.clean_accuracy[i] - 0.1  # white-box diagonal hurts
        assert matrix.fooling_rate[i, i] > 0.15
        assert matrix.perturbations[name].shape == (28, 28, 1)
    adv = np.clip(x_eval[:256] + matrix.perturbations["fp32"], 0, 1)
    assert matrix.accuracy[0, 1] == pytest.approx(np.mean(predict(w4a4, adv) == y_eval[:256]))
    data = json.loads(json.dumps(matrix.to_dict(perturbations=True)))
    assert data["accuracy"] == matrix.accuracy.tolist() and data["method"] == "uap"
    assert data["clean_accuracy"] == matrix.clean_accuracy.tolist() and data["names"] == ["fp32", "w4a4"]
    assert np.array(data["perturbations"]["w4a4"]).shape == (28, 28, 1)
    markdown = matrix.to_markdown()
    assert "fp32" in markdown and "w4a4" in markdown and markdown.count("\n|") >= 3
    listed = uap_transfer_matrix([trained_cnn, trained_cnn], craft[:64], x_eval[:64], y_eval[:64], eps=0.1,
                                 method="sgd_uap", seed=0, verbose=0, epochs=1)
    assert listed.names == [trained_cnn.name, f"{trained_cnn.name}_2"] and listed.method == "sgd_uap"
    np.testing.assert_allclose(listed.accuracy[0], listed.accuracy[1])  # the same model twice


# ----------------------------------------------------------------------------- errors
def test_errors_name_the_fix(trained_cnn, craft, held_out):
    x_eval, y_eval = held_out
    x = craft[:8]
    with pytest.raises(ValueError, match="eps must be"):
        uap(trained_cnn, x, eps=-0.1, verbose=0)
    with pytest.raises(ValueError, match="eps must be"):
        sgd_uap(trained_cnn, x, eps=-1, verbose=0)
    with pytest.raises(ValueError, match="eps must be"):
        ensemble_uap([trained_cnn], x, eps=-0.1, verbose=0)
    with pytest.raises(ValueError, match="models is empty"):
        ensemble_uap([], x, eps=0.1, verbose=0)
    with pytest.raises(ValueError, match="models is empty"):
        uap_transfer_matrix({}, x, x_eval, y_eval, eps=0.1, verbose=0)
    small = keras.Sequential([keras.Input((14, 14, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="same input shape"):
        ensemble_uap([trained_cnn, small], x, eps=0.1, verbose=0)
    with pytest.raises(ValueError, match=r"expects \(N, 28, 28, 1\)"):
        uap(trained_cnn, x[..., 0], eps=0.1, verbose=0)
    with pytest.raises(ValueError, match="outside the clip range"):
        uap(trained_cnn, x * 255.0, eps=0.1, verbose=0)
    with pytest.raises(ValueError, match="labels must be in"):
        uap_transfer_matrix([trained_cnn], x, x_eval[:8], y_eval[:8] + 10, eps=0.1, verbose=0)
    with pytest.raises(ValueError, match="target class must be in"):
        targeted_uap(trained_cnn, x, 10, eps=0.1, verbose=0)
    with pytest.raises(ValueError, match="shaped like one input"):
        fooling_rate(trained_cnn, x, np.zeros((28, 28)))
    with pytest.raises(ValueError, match="inner must be"):
        uap(trained_cnn, x, eps=0.1, inner="pgd", verbose=0)
    with pytest.raises(ValueError, match="sampling must be"):
        ensemble_uap([trained_cnn], x, eps=0.1, sampling="epoch", verbose=0)
    with pytest.raises(ValueError, match="max_passes must be"):
        uap(trained_cnn, x, eps=0.1, max_passes=0, verbose=0)
    with pytest.raises(ValueError, match="target_fooling must be"):
        uap(trained_cnn, x, eps=0.1, target_fooling=1.5, verbose=0)
    with pytest.raises(ValueError, match="loss_clip must be"):
        sgd_uap(trained_cnn, x, eps=0.1, loss_clip=0.0, verbose=0)
    with pytest.raises(ValueError, match="method must be"):
        uap_transfer_matrix([trained_cnn], x, x_eval[:8], y_eval[:8], eps=0.1, method="pgd", verbose=0)

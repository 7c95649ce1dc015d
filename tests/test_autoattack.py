"""AutoAttack runner, evaluation integrity (zero / missing gradients) and the attack registry."""

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust import cli
from keras_qrobust.attacks import autoattack, get_attack, gradient_status
from keras_qrobust.attacks.registry import PER_MODEL_KINDS, attack_names, check_budget

tf = kq._keras.tf
keras = kq.keras
EPS = 0.1


@pytest.fixture(scope="module")
def test_set(fashion_slice):
    _, (x, y) = fashion_slice
    return x[:100], y[:100]


@pytest.fixture(scope="module")
def fast_result(trained_cnn, test_set):
    x, y = test_set
    return autoattack(trained_cnn, x, y, eps=EPS, version="fast", seed=0, verbose=0)


def _masked(model):
    """``model`` behind a stop_gradient: the same predictions, no input gradient at all."""
    inputs = keras.Input(model.input_shape[1:])
    return keras.Model(inputs, model(keras.layers.Lambda(tf.stop_gradient)(inputs)), name="masked")


def _dead_relu_model():
    """Two classes; logits (s, −s), s = relu(x₀ + x₁ − 1): every input is class 0 (ties go to
    the first class), and where s = 0 the input gradient is exactly zero."""
    inputs = keras.Input((2,))
    s = keras.layers.Dense(1, activation="relu", kernel_initializer="ones",
                           bias_initializer=keras.initializers.Constant(-1.0))(inputs)
    return keras.Model(inputs, keras.layers.Concatenate()([s, keras.layers.Lambda(lambda t: -t)(s)]), name="dead")


# ---------------------------------------------------------------------------- the runner
def test_result_is_the_per_input_worst_case(fast_result, trained_cnn, test_set):
    x, y = test_set
    r = fast_result
    assert r.n == 100 and r.attacks == ("apgd-ce", "apgd-t") and r.version == "fast"
    assert not np.any(r.robust & ~r.clean_correct)
    # the returned points score exactly the reported robust accuracy, and stay in the ball and box
    assert kq.metrics.accuracy(trained_cnn, r.x_adv, y) == pytest.approx(r.robust_accuracy)
    assert np.abs(r.x_adv - x).max() <= EPS + 1e-6 and 0.0 <= r.x_adv.min() and r.x_adv.max() <= 1.0
    np.testing.assert_array_equal(r.x_adv[r.robust], x[r.robust])
    # who broke what: clean mistakes, then each attack on what the previous ones left
    assert set(r.broken_by[~r.clean_correct]) <= {"clean"}
    counts = r.broken_counts()
    assert sum(counts.values()) == int(r.clean_correct.sum() - r.robust.sum())
    after = [r.accuracy_after[k] for k in ("clean", "apgd-ce", "apgd-t")]
    assert after == sorted(after, reverse=True) and after[-1] == pytest.approx(r.robust_accuracy)
    low, high = r.interval()
    assert low <= r.robust_accuracy <= high and 0 < high - low < 0.25
    assert r.robust_accuracy < r.clean_accuracy


def test_result_summary_and_json(fast_result):
    data = fast_result.to_dict()
    assert data["n"] == 100 and data["attacks"] == ["apgd-ce", "apgd-t"]
    assert data["settings"]["apgd-t"]["target_classes"] == 3
    assert set(data["seconds"]) == {"clean", "apgd-ce", "apgd-t"}
    text = str(fast_result)
    assert "AutoAttack (fast" in text and "95% CI" in text and "after apgd-t" in text


def test_an_attack_list_and_options_make_a_custom_run(trained_cnn, test_set):
    x, y = test_set
    r = autoattack(trained_cnn, x[:40], y[:40], eps=EPS, attacks=["apgd-dlr"], options={"apgd-dlr": {"steps": 10}},
                   verbose=0)
    assert r.version == "custom" and r.attacks == ("apgd-dlr",) and r.settings["apgd-dlr"]["steps"] == 10


@pytest.mark.parametrize("kwargs, match", [
    (dict(version="plus"), "version must be one of"),
    (dict(attacks=["pgd"]), "attacks must be names from"),
    (dict(version="fast", options={"square": {"queries": 10}}), "not among the attacks run"),
    (dict(eps=-0.1), "eps must be a finite number"),
    (dict(norm="l1"), "norm must be"),
])
def test_bad_arguments_raise(trained_cnn, test_set, kwargs, match):
    x, y = test_set
    with pytest.raises(ValueError, match=match):
        autoattack(trained_cnn, x[:4], y[:4], **{"eps": EPS, **kwargs})


def test_targets_are_capped_and_dlr_skipped_for_few_classes():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)], name="three")
    x = np.random.default_rng(0).uniform(0, 1, (20, 6)).astype(np.float32)
    y = model.predict(x, verbose=0).argmax(1)
    r = autoattack(model, x, y, eps=0.05, version="fast", verbose=0)
    assert r.attacks == ("apgd-ce",)
    assert any("apgd-t skipped" in f for f in r.findings)


# --------------------------------------------------------------- bfloat16 search
def test_bfloat16_search_finds_what_float32_finds_and_keeps_float32_verdicts(trained_cnn, test_set, fast_result):
    x, y = test_set
    r = autoattack(trained_cnn, x, y, eps=EPS, version="fast", seed=0, verbose=0, search_precision="bfloat16")
    assert r.search_precision == "bfloat16" and set(r.reattacked) == {"apgd-ce", "apgd-t"}
    # every verdict is the float32 model's: the returned points score the reported accuracy
    assert kq.metrics.accuracy(trained_cnn, r.x_adv, y) == pytest.approx(r.robust_accuracy)
    assert np.abs(r.x_adv - x).max() <= EPS + 1e-6
    # as strong as the float32 search on these 100 inputs, up to two inputs either way
    assert abs(int(r.robust.sum()) - int(fast_result.robust.sum())) <= 2
    assert r.to_dict()["search_precision"] == "bfloat16" and "searched in bfloat16" in str(r)


def _lying_twin(model):
    """``model`` followed by a fixed cyclic shift of its logits: it calls every input the
    float model gets right misclassified (as the next class)."""
    shift = keras.layers.Dense(10, use_bias=False, trainable=False, name="shift")
    out = shift(model.output)
    shift.set_weights([np.roll(np.eye(10, dtype=np.float32), 1, axis=1)])
    return keras.Model(model.inputs, out, name="lying")


def test_a_twin_verdict_the_float32_model_rejects_is_attacked_again_in_float32(trained_cnn, test_set, monkeypatch):
    import sys

    x, y = test_set
    module = sys.modules["keras_qrobust.attacks.autoattack"]
    monkeypatch.setattr(module, "bfloat16_twin", _lying_twin)
    r = autoattack(trained_cnn, x[:40], y[:40], eps=EPS, attacks=["apgd-ce"], seed=0, verbose=0,
                   search_precision="bfloat16")
    # the twin "breaks" every input at once; the float32 model disagrees on each one the twin's
    # point does not really break, and those are attacked again in float32
    assert r.reattacked["apgd-ce"] >= int(r.clean_correct.sum()) - int((r.broken_by == "apgd-ce").sum())
    assert r.reattacked["apgd-ce"] > 0
    assert kq.metrics.accuracy(trained_cnn, r.x_adv, y[:40]) == pytest.approx(r.robust_accuracy)
    reference = autoattack(trained_cnn, x[:40], y[:40], eps=EPS, attacks=["apgd-ce"], seed=0, verbose=0)
    assert abs(int(r.robust.sum()) - int(reference.robust.sum())) <= 1


@pytest.mark.parametrize("kind", ["quantized", "deployed", "unknown"])
def test_bfloat16_search_refuses_what_it_cannot_search(kind, trained_cnn, test_set, tmp_path):
    x, y = test_set
    if kind == "quantized":
        model, precision, match = kq.RobustQuantizer(4, 4).quantize(trained_cnn, x), "bfloat16", "needs a float model"
    elif kind == "deployed":
        model = kq.export.load(kq.export.tflite(trained_cnn, tmp_path / "m.tflite", precision="float32"))
        precision, match = "bfloat16", "deployed artifact"
    else:
        model, precision, match = trained_cnn, "float16", "search_precision must be one of"
    with pytest.raises(ValueError, match=match):
        autoattack(model, x[:4], y[:4], eps=EPS, attacks=["square"], search_precision=precision, verbose=0)


# ------------------------------------------------------------------------- integrity
def test_a_model_without_gradient_is_flagged_not_reported_robust(trained_cnn, test_set):
    x, y = test_set
    masked = _masked(trained_cnn)
    assert set(gradient_status(masked, x[:10], y[:10])) == {"no gradient"}
    with pytest.warns(UserWarning, match="gives no gradient"):
        r = autoattack(masked, x, y, eps=EPS, version="fast", verbose=0)
    assert r.robust_accuracy == 0.0
    # a random start may land on a mistake; every other input is unverified, not robust
    verdicts = r.broken_by[r.clean_correct]
    assert set(verdicts) <= {"apgd-ce", "apgd-t", "unverified: no gradient"}
    assert np.mean(verdicts == "unverified: no gradient") > 0.5
    assert any("no usable gradient" in f for f in r.findings)
    trusted = autoattack(masked, x, y, eps=EPS, version="fast", trust_flagged=True, verbose=0)
    assert trusted.robust_accuracy > 0.5  # what a stalled attack would have claimed


def test_zero_gradients_are_found_per_input():
    model = _dead_relu_model()
    x = np.array([[0.1, 0.2], [0.9, 0.8], [0.0, 0.0], [0.7, 0.6]], np.float32)
    status = gradient_status(model, x, np.zeros(4, np.int64))
    assert list(status) == ["zero gradient", "ok", "zero gradient", "ok"]


def test_evaluate_never_counts_an_input_without_gradient_as_robust(trained_cnn, test_set):
    x, y = test_set
    with pytest.warns(UserWarning, match="gives no gradient"):
        report = kq.evaluate({"masked": _masked(trained_cnn)}, (x[:50], y[:50]), attacks=["pgd", "gaussian"],
                             eps=[0.0, EPS], verbose=0)
    assert report.accuracy["masked"]["pgd"][1] == 0.0
    assert report.accuracy["masked"]["gaussian"][1] > 0.5  # noise is not a gradient attack
    assert "zero or non-finite input gradient" in report.provenance["integrity"]["masked"]


SPSA_FAST = {"spsa": {"steps": 20, "samples": 32}}


def test_masking_checks_flag_a_masked_model_and_pass_a_plain_one(trained_cnn, test_set):
    x, y = test_set
    x, y = x[:60], y[:60]
    with pytest.warns(UserWarning, match="gives no gradient"):
        masked = kq.attacks.masking_checks(_masked(trained_cnn), x, y, eps=EPS, white_box=("pgd",),
                                           gradient_free=("spsa",), surrogate=trained_cnn, options=SPSA_FAST)
    assert masked.suspect
    assert {"spsa vs white-box", "transfer PGD-20 vs white-box", "PGD-50 at ε = 0.5"} <= set(masked.flagged)
    plain = kq.attacks.masking_checks(trained_cnn, x, y, eps=EPS, white_box=("pgd",), gradient_free=("spsa",),
                                      options=SPSA_FAST)
    assert not plain.suspect, str(plain)
    data = plain.to_dict()
    assert data["white_box"]["pgd"] <= 1.0 and len(data["checks"]) == 2
    assert "2 binomial SE" in data["checks"][0]["rule"]


def test_binomial_margin_is_two_standard_errors():
    from keras_qrobust.attacks.integrity import binomial_margin

    assert binomial_margin(0.75, 1000) == pytest.approx(2 * np.sqrt(0.75 * 0.25 / 1000))
    assert binomial_margin(1.0, 100) == pytest.approx(2 * np.sqrt(0.01 * 0.99 / 100))


# -------------------------------------------------------------------------- registry
def test_every_attack_is_registered_once_with_its_kind():
    names = attack_names()
    assert len(names) == len(set(names))
    for name in ("fgsm", "pgd", "apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", "spsa", "uap", "autoattack"):
        assert name in names
    assert get_attack("apgd_ce").name == "apgd-ce" and get_attack("APGD-T").name == "apgd-t"
    assert get_attack("square").kind == "gradient-free" and not get_attack("square").needs_gradient
    assert set(attack_names("white-box")) >= {"fgsm", "pgd", "apgd-ce", "fab-t"}
    assert "transfer" not in attack_names(*PER_MODEL_KINDS)
    assert get_attack("pgd").description(steps=10).startswith("PGD-10")


@pytest.mark.parametrize("call, match", [
    (lambda: get_attack("nope"), "unknown attack 'nope'; choose one of fgsm, pgd"),
    (lambda: get_attack("transfer", *PER_MODEL_KINDS), "unknown attack 'transfer'"),
    (lambda: get_attack("pgd").settings(stpes=3), "has no option 'stpes'; its options: loss, restarts, steps"),
    (lambda: get_attack("cw_l2")(None, None, None, eps=1.0, norm="inf"), "works in L2, not L∞"),
    (lambda: check_budget(1.5), "larger than the input range"),
    (lambda: check_budget(float("nan")), "finite number"),
    (lambda: check_budget(0.0, allow_zero=False), "> 0"),
])
def test_registry_errors_name_the_fix(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_the_registry_drives_the_cli_choices(tiny_case, capsys):
    model, data = tiny_case
    code = cli.main(["attack", "--model", str(model), "--dataset", str(data), "--attack", "pgdd", "--eps", "0.1"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown attack 'pgdd'; choose one of" in err and "autoattack" in err
    code = cli.main(["evaluate", "--model", str(model), "--dataset", str(data), "--attacks", "fgsm,nope",
                     "--out", "unused"])
    assert code == 2 and "unknown attack 'nope'" in capsys.readouterr().err


def test_cli_attack_autoattack_prints_the_interval(tiny_case, tmp_path, capsys):
    model, data = tiny_case
    out = tmp_path / "aa.json"
    assert cli.main(["attack", "--model", str(model), "--dataset", str(data), "--attack", "autoattack",
                     "--autoattack-version", "fast", "--eps", "0.05", "--test-samples", "40", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "AutoAttack fast" in printed and "95% CI" in printed
    import json

    result = json.loads(out.read_text())["results"][0]
    assert result["n"] == 40 and result["attacks"] == ["apgd-ce", "apgd-t"]
    low, high = result["robust_interval95"]
    assert low <= result["robust_accuracy"] <= high

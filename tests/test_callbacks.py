import csv
import math

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust.analysis import quantization_lipschitz
from keras_qrobust.attacks import fooling_rate
from keras_qrobust.defenses import FeedbackLearning, LipschitzMonitor, UAPMonitor
from keras_qrobust.defenses.feedback import class_margins

keras = kq.keras
layers = keras.layers
FEEDBACK_KEYS = [f"margin_class_{c}" for c in range(10)] + ["margin_mean", "feedback_examples", "feedback_loss"]
UAP_METRICS = ("fooling_rate", "accuracy", "clean_accuracy")


@pytest.fixture(scope="module")
def digits():
    x, y = kq.datasets.load("digits", "train")
    xv, yv = kq.datasets.load("digits", "test")
    return (x[:300], y[:300]), (xv[:120], yv[:120])


def tiny_cnn():
    return keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(8, 3, activation="relu", name="conv"),
                             layers.Flatten(name="flatten"), layers.Dense(10, name="logits")])


@pytest.fixture(scope="module")
def pretrained(digits):
    (x, y), _ = digits
    kq.defenses.set_seed(0)
    model = tiny_cnn()
    kq.defenses.compile_classifier(model, learning_rate=1e-2)
    model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    return model.get_weights()


@pytest.fixture
def fresh(pretrained):
    """A new compiled copy of the pretrained tiny CNN (its optimizer at iteration 0)."""

    def make(compile_it: bool = True):
        kq.defenses.set_seed(0)
        model = tiny_cnn()
        model.set_weights(pretrained)
        if compile_it:
            kq.defenses.compile_classifier(model, learning_rate=1e-2)
        return model

    return make


def test_callbacks_write_their_keys_into_history_and_csv_logger(digits, fresh, tmp_path):
    (x, y), (xv, yv) = digits
    callbacks = [
        LipschitzMonitor(4),
        FeedbackLearning((x[:150], y[:150]), t_max=0.5, directions=2, seed=0),
        UAPMonitor((xv, yv), eps=0.1, every=2, quantize=("w4a4",), attack_options={"max_passes": 1}),
        keras.callbacks.CSVLogger(str(tmp_path / "log.csv")),
    ]
    logs = fresh().fit(x, y, epochs=2, batch_size=32, verbose=0, validation_data=(xv, yv),
                       callbacks=callbacks).history
    uap_keys = [f"uap_{m}{s}" for s in ("", "_w4a4") for m in UAP_METRICS]
    lipschitz_keys = ["lipschitz_conv", "lipschitz_logits", "lipschitz_max", "lipschitz_amplifying"]
    for key in FEEDBACK_KEYS + uap_keys + lipschitz_keys:
        assert len(logs[key]) == 2, key
    for key in FEEDBACK_KEYS + lipschitz_keys:
        assert np.all(np.isfinite(logs[key])), key
    for key in uap_keys:  # every=2: measured after the second epoch only
        assert math.isnan(logs[key][0]) and 0.0 <= logs[key][1] <= 1.0, key
    assert all(0 < logs[f"margin_class_{c}"][1] <= 0.5 for c in range(10))
    assert logs["feedback_examples"] == [75, 75]
    assert logs["lipschitz_max"] == [max(a, b) for a, b in zip(logs["lipschitz_conv"], logs["lipschitz_logits"])]
    with open(tmp_path / "log.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for key in FEEDBACK_KEYS + uap_keys + lipschitz_keys:
        np.testing.assert_allclose([float(r[key]) for r in rows], logs[key], rtol=1e-6, err_msg=key)


def test_feedback_learning_logs_the_margins_of_the_trained_model(digits, fresh):
    (x, y), _ = digits
    model = fresh()
    monitor = FeedbackLearning((x[:100], y[:100]), t_max=0.5, directions=3, rounds=0, seed=4)
    logs = model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[monitor]).history
    margins = class_margins(model, x[:100], y[:100], t_max=0.5, directions=3, seed=4)
    np.testing.assert_allclose([logs[f"margin_class_{c}"][0] for c in range(10)], margins, rtol=1e-6)
    assert logs["margin_mean"][0] == pytest.approx(np.nanmean(margins))
    assert math.isnan(logs["feedback_examples"][0]) and monitor.rounds_done == 0


def test_feedback_learning_fine_tunes_between_epochs_at_the_scaled_learning_rate(digits, fresh):
    (x, y), _ = digits
    model = fresh()
    seen = []
    original = model.train_on_batch

    def spy(*args, **kwargs):
        seen.append(float(keras.backend.get_value(model.optimizer.learning_rate)))
        return original(*args, **kwargs)

    model.train_on_batch = spy
    monitor = FeedbackLearning((x[:150], y[:150]), t_max=0.5, directions=2, rounds=1, epochs=2, lr_scale=0.1,
                               batch_size=32, seed=0)
    logs = model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[monitor]).history
    # 2 epochs of 300/32 -> 10 batches each; one round: 2 passes over 150 + 75 examples -> 8 batches each
    assert len(seen) == 16 and seen == pytest.approx([1e-3] * 16)
    assert int(model.optimizer.iterations.numpy()) == 20 + 16
    assert float(keras.backend.get_value(model.optimizer.learning_rate)) == pytest.approx(1e-2)
    assert logs["feedback_examples"][0] == 75 and math.isnan(logs["feedback_examples"][1])
    assert np.isfinite(logs["margin_mean"]).all() and monitor.rounds_done == 1
    examples = monitor.last_examples
    assert examples.counts.sum() == 75 and examples.x.min() >= 0 and examples.x.max() <= 1
    assert np.abs(examples.x - x[:150][examples.source]).max() <= 0.5 + 1e-6


def test_feedback_learning_skips_an_epoch_with_nothing_classified_correctly(digits, fresh):
    (x, y), _ = digits
    model = fresh()
    wrong = (kq.metrics.predict_labels(model, x[:40]) + 1) % 10
    monitor = FeedbackLearning((x[:40], wrong), t_max=0.5, directions=1, seed=0)
    monitor.set_model(model)
    monitor.on_train_begin()
    logs = {}
    with pytest.warns(UserWarning, match="classifies none of its data correctly"):
        monitor.on_epoch_end(0, logs)
    assert all(math.isnan(logs[key]) for key in FEEDBACK_KEYS) and monitor.rounds_done == 0


def test_all_callbacks_work_on_an_adversarial_model(digits, fresh):
    (x, y), (xv, yv) = digits
    robust = kq.defenses.AdversarialModel(fresh(compile_it=False), attack="fgsm_rs", eps=0.05)
    kq.defenses.compile_classifier(robust, learning_rate=1e-2)
    callbacks = [FeedbackLearning((x[:80], y[:80]), t_max=0.5, directions=2, seed=0), LipschitzMonitor(4),
                 UAPMonitor((xv[:60], yv[:60]), eps=0.1, quantize=(), attack_options={"max_passes": 1})]
    logs = robust.fit(x[:128], y[:128], epochs=1, batch_size=32, verbose=0, callbacks=callbacks).history
    for key in ("adv_loss", "feedback_loss", "margin_mean", "lipschitz_logits", "uap_fooling_rate", "uap_accuracy"):
        assert np.isfinite(logs[key][0]), key
    assert callbacks[0].rounds_done == 1
    assert logs["lipschitz_logits"][0] == pytest.approx(quantization_lipschitz(robust.model, 4)[1]["sigma_max"])


def test_uap_monitor_is_seeded_and_logs_what_the_perturbation_does(digits, fresh):
    _, (xv, yv) = digits
    model = fresh()
    mu_law = kq.RobustQuantizer(4, 4, mu_law_last=1)
    monitor = UAPMonitor((xv, yv), eps=0.15, quantize="w8a8", models=lambda m: {"mu law": mu_law.quantize(m, xv)},
                         attack_options={"max_passes": 2}, seed=3)
    assert len(monitor.x_craft) == 60 and len(monitor.x_eval) == 60
    monitor.set_model(model)
    monitor.on_train_begin()
    first, second = {}, {}
    monitor.on_epoch_end(0, first)
    v = monitor.last_result.perturbation
    monitor.on_epoch_end(0, second)
    assert first == second and np.array_equal(v, monitor.last_result.perturbation)
    assert set(first) == {f"uap_{m}{s}" for s in ("", "_w8a8", "_mu_law") for m in UAP_METRICS}
    assert np.abs(v).max() <= 0.15 + 1e-6
    assert first["uap_fooling_rate"] == pytest.approx(fooling_rate(model, monitor.x_eval, v))
    attacked = np.clip(monitor.x_eval + v, 0, 1)
    assert first["uap_accuracy"] == pytest.approx(kq.metrics.accuracy(model, attacked, monitor.y_eval))
    assert first["uap_clean_accuracy"] == pytest.approx(kq.metrics.accuracy(model, monitor.x_eval, monitor.y_eval))
    assert first["uap_fooling_rate"] > 0  # the perturbation does something on held-out data


def test_lipschitz_monitor_logs_quantization_lipschitz(digits, fresh):
    (x, y), _ = digits
    model = fresh()
    logs = model.fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[LipschitzMonitor(3, every=2)]).history
    rows = quantization_lipschitz(model, 3)
    assert math.isnan(logs["lipschitz_conv"][0]) and math.isnan(logs["lipschitz_max"][0])
    assert logs["lipschitz_conv"][1] == pytest.approx(rows[0]["sigma_max"])
    assert logs["lipschitz_logits"][1] == pytest.approx(rows[1]["sigma_max"])
    assert logs["lipschitz_max"][1] == pytest.approx(max(r["sigma_max"] for r in rows))
    assert logs["lipschitz_amplifying"][1] == sum(r["amplifying"] for r in rows)


def test_bad_arguments_fail_at_construction(digits):
    (x, y), (xv, yv) = digits
    with pytest.raises(ValueError, match="FeedbackLearning data: x lies in .* outside the clip range"):
        FeedbackLearning((x * 2, y), t_max=0.3)
    with pytest.raises(TypeError, match="tuple"):
        FeedbackLearning(x, t_max=0.3)
    with pytest.raises(ValueError, match="300 inputs but y has 299 labels"):
        FeedbackLearning((x, y[:-1]), t_max=0.3)
    with pytest.raises(ValueError, match="t_max must be > 0"):
        FeedbackLearning((x, y), t_max=0.0)
    with pytest.raises(ValueError, match="must be a non-empty batch"):
        UAPMonitor((np.zeros(5), y[:5]), eps=0.1)
    with pytest.raises(ValueError, match="craft_fraction must be in"):
        UAPMonitor((xv, yv), eps=0.1, craft_fraction=1.0)
    with pytest.raises(ValueError, match="too few to split"):
        UAPMonitor((xv[:1], yv[:1]), eps=0.1)
    with pytest.raises(ValueError, match="Cannot parse quantization setting"):
        UAPMonitor((xv, yv), eps=0.1, quantize=("w4x4",))
    with pytest.raises(TypeError, match=r"attack_options \['bogus'\]"):
        UAPMonitor((xv, yv), eps=0.1, attack_options={"bogus": 1})
    with pytest.raises(TypeError, match=r"attack_options \['eps'\]"):
        UAPMonitor((xv, yv), eps=0.1, quantize=(), attack_options={"eps": 1})
    with pytest.raises(ValueError, match="bits must be in"):
        LipschitzMonitor(0)
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        LipschitzMonitor(4, every=0)


def assert_fails_before_training(model, callback, x, y, error, match):
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(error, match=match):
        model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[callback])
    assert int(model.optimizer.iterations.numpy()) == 0
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))


def test_model_mismatches_fail_in_on_train_begin_before_any_batch(digits, fresh):
    (x, y), (xv, yv) = digits
    big = np.zeros((20, 28, 28, 1), np.float32)
    assert_fails_before_training(fresh(), FeedbackLearning((big, y[:20]), t_max=0.3), x, y, ValueError,
                                 r"expects \(N, 8, 8, 1\)")
    assert_fails_before_training(fresh(), FeedbackLearning((x, y + 5), t_max=0.3), x, y, ValueError,
                                 r"labels must be in \[0, 10\)")
    assert_fails_before_training(fresh(), UAPMonitor((big, yv[:20]), eps=0.1), x, y, ValueError,
                                 r"expects \(N, 8, 8, 1\)")
    scheduled = fresh(compile_it=False)
    scheduled.compile(optimizer=keras.optimizers.Adam(keras.optimizers.schedules.ExponentialDecay(1e-2, 10, 0.9)),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert_fails_before_training(scheduled, FeedbackLearning((x, y), t_max=0.3), x, y, ValueError,
                                 "ExponentialDecay schedule")

    conv1d = keras.Sequential([keras.Input((8, 8)), layers.Conv1D(10, 3), layers.GlobalAveragePooling1D()])
    kq.defenses.compile_classifier(conv1d)
    assert_fails_before_training(conv1d, LipschitzMonitor(4), x[..., 0], y, ValueError,
                                 "LipschitzMonitor: .* no Dense, Conv2D, DepthwiseConv2D or SeparableConv2D layer")

    normed = keras.Sequential([keras.Input((8, 8, 1)), layers.Flatten(), layers.Dense(16), layers.LayerNormalization(),
                               layers.Dense(10)])
    kq.defenses.compile_classifier(normed)
    assert_fails_before_training(normed, UAPMonitor((xv, yv), eps=0.1), x, y,
                                 kq.transforms.UnsupportedModelError, "cannot quantize layer .*LayerNormalization")


def test_configs_rebuild_the_callbacks(digits):
    (x, y), (xv, yv) = digits
    feedback = FeedbackLearning((x, y), t_max=0.3, every=2, rounds=3, norm=2, seed=None)
    assert FeedbackLearning((x, y), **feedback.get_config()).get_config() == feedback.get_config()
    assert feedback.get_config()["norm"] == "2" and isinstance(feedback.get_config()["seed"], int)
    mu_law = kq.RobustQuantizer(4, 4, mu_law_last=1)
    monitor = UAPMonitor((xv, yv), eps=0.1, quantize=("w8a8", mu_law), attack_options={"max_passes": 2})
    rebuilt = UAPMonitor((xv, yv), **monitor.get_config())
    assert rebuilt.get_config() == monitor.get_config() and rebuilt.quantizers["w4a4"] == mu_law
    assert monitor.get_config()["quantize"][0] == "w8a8"
    with pytest.raises(ValueError, match="names the setting 'w4a4' twice"):
        UAPMonitor((xv, yv), eps=0.1, quantize=("w4a4", mu_law))
    lipschitz = LipschitzMonitor(5, every=3, per_axis=False)
    assert LipschitzMonitor.from_config(lipschitz.get_config()).get_config() == lipschitz.get_config()
    for cls in (FeedbackLearning, UAPMonitor, LipschitzMonitor):
        assert keras.utils.get_registered_object(f"keras_qrobust>{cls.__name__}") is cls

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import keras_qrobust as kq
from keras_qrobust.defenses import AdversarialModel

keras = kq.keras
tf = kq.tf
ATTACKS = ["pgd", "fgsm_rs", "trades"]


def cross_entropy(model, x, y):
    return float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x, training=False))))


@pytest.mark.parametrize("attack", ATTACKS)
def test_train_step_perturbs_and_logs_clean_and_adversarial_metrics(attack, fashion_slice):
    (x, y), (xt, yt) = fashion_slice
    kq.defenses.set_seed(0)
    robust = AdversarialModel(kq.zoo.cnn_small(), attack=attack, eps=0.1, steps=3)
    kq.defenses.compile_classifier(robust)
    history = robust.fit(x[:256], y[:256], epochs=2, batch_size=64, verbose=0, validation_data=(xt[:64], yt[:64]))
    logs = history.history
    for key in ("loss", "accuracy", "clean_loss", "adv_loss", "adv_accuracy", "val_loss", "val_accuracy"):
        assert key in logs and np.all(np.isfinite(logs[key])), key
    assert not any(k.startswith("val_adv") for k in logs)
    assert all(a <= c for a, c in zip(logs["adv_accuracy"], logs["accuracy"]))
    if attack == "trades":  # objective = CE(clean) + beta * KL(clean || adversarial)
        np.testing.assert_allclose(logs["loss"], np.array(logs["clean_loss"]) + 6.0 * np.array(logs["adv_loss"]),
                                   rtol=1e-4)
    else:
        assert all(a > c for a, c in zip(logs["adv_loss"], logs["clean_loss"]))
        np.testing.assert_allclose(logs["loss"], logs["adv_loss"], rtol=1e-5)
    x_adv = robust.adversarial_examples(x[:64], y[:64]).numpy()
    assert np.abs(x_adv - x[:64]).max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    if attack != "trades":
        assert cross_entropy(robust.model, x_adv, y[:64]) > cross_entropy(robust.model, x[:64], y[:64])


def test_adversarial_training_makes_pgd_less_effective(fashion_slice):
    (x, y), (xt, yt) = fashion_slice
    models = {}
    for name, wrap in (("standard", False), ("pgd_at", True)):
        kq.defenses.set_seed(0)
        model = kq.zoo.cnn_small()
        trainer = AdversarialModel(model, attack="pgd", eps=0.1, steps=3) if wrap else model
        kq.defenses.compile_classifier(trainer)
        trainer.fit(x, y, epochs=4, batch_size=64, verbose=0)
        models[name] = model
    robust = {name: kq.metrics.accuracy(m, kq.attacks.pgd(m, xt, yt, eps=0.1, steps=10, seed=0, verbose=0), yt)
              for name, m in models.items()}
    assert robust["pgd_at"] > robust["standard"] + 0.08, robust


def test_works_on_tfmot_qat_and_robustquantizer_models(fashion_slice):
    (x, y), _ = fashion_slice
    tfq = tfmot.quantization.keras
    qat = tfq.quantize_apply(tfq.quantize_annotate_model(kq.zoo.cnn_small()), scheme=kq.WXAYScheme(4, 4))
    ptq = kq.RobustQuantizer(4, 4).quantize(kq.zoo.cnn_small(), x[:128])
    for model in (qat, ptq):
        robust = AdversarialModel(model, attack="fgsm_rs", eps=0.1)
        kq.defenses.compile_classifier(robust)
        before = [w.numpy().copy() for w in model.trainable_weights]
        logs = robust.fit(x[:128], y[:128], epochs=1, batch_size=64, verbose=0).history
        assert np.isfinite(logs["adv_loss"][0]) and logs["adv_loss"][0] > logs["clean_loss"][0]
        assert any(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))


def test_save_load_and_evaluate(tmp_path, fashion_slice):
    (x, y), (xt, yt) = fashion_slice
    robust = AdversarialModel(kq.zoo.cnn_small(), attack="trades", eps=0.05, steps=2, beta=3.0)
    kq.defenses.compile_classifier(robust)
    robust.fit(x[:64], y[:64], epochs=1, batch_size=32, verbose=0)
    robust.save(tmp_path / "robust.keras")
    loaded = keras.models.load_model(tmp_path / "robust.keras")
    assert isinstance(loaded, AdversarialModel) and (loaded.attack, loaded.beta, loaded.steps) == ("trades", 3.0, 2)
    np.testing.assert_array_equal(loaded.predict(xt[:16], verbose=0), robust.predict(xt[:16], verbose=0))
    results = robust.evaluate(xt[:64], yt[:64], verbose=0, return_dict=True)
    assert set(results) == {"loss", "accuracy"}
    assert results["accuracy"] == pytest.approx(kq.metrics.accuracy(robust.model, xt[:64], yt[:64]))


@pytest.mark.parametrize("attack", ["pgd", "fgsm_rs"])
def test_clean_weight_mixes_clean_and_adversarial_loss(attack, tmp_path, fashion_slice):
    (x, y), _ = fashion_slice
    kq.defenses.set_seed(0)
    robust = AdversarialModel(kq.zoo.cnn_small(), attack=attack, eps=0.1, steps=2, clean_weight=0.3)
    kq.defenses.compile_classifier(robust)
    logs = robust.fit(x[:128], y[:128], epochs=1, batch_size=64, verbose=0).history
    np.testing.assert_allclose(logs["loss"], 0.3 * np.array(logs["clean_loss"]) + 0.7 * np.array(logs["adv_loss"]),
                               rtol=1e-5)
    assert logs["loss"][0] < logs["adv_loss"][0]
    robust.save(tmp_path / "mixed.keras")
    assert keras.models.load_model(tmp_path / "mixed.keras").clean_weight == pytest.approx(0.3)


def test_fgsm_rs_takes_one_step_of_1_25_eps():
    robust = AdversarialModel(kq.zoo.cnn_small(), attack="fgsm_rs", eps=0.08, steps=7)
    assert robust.steps == 1 and robust.step_size == pytest.approx(0.1)
    pgd = AdversarialModel(kq.zoo.cnn_small(), attack="pgd", eps=0.1, steps=10)
    assert pgd.step_size == pytest.approx(0.025)


@pytest.mark.parametrize("kwargs, match", [
    ({"attack": "cw"}, "attack must be one of"),
    ({"eps": -1.0}, "eps must be a finite number >= 0"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"norm": 1}, "norm must be 'inf' or 2"),
    ({"clean_weight": 1.0}, r"clean_weight must be in \[0, 1\)"),
    ({"clean_weight": -0.1}, r"clean_weight must be in \[0, 1\)"),
    ({"attack": "trades", "clean_weight": 0.5}, "TRADES weighs its clean term against beta"),
    ({"awp_gamma": -0.01}, "awp_gamma must be a finite number >= 0"),
    ({"awp_warmup": -1}, "awp_warmup must be an integer >= 0"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdversarialModel(kq.zoo.cnn_small(), **kwargs)


def test_weight_averaging_ends_fit_on_the_averaged_weights(fashion_slice):
    (x, y), _ = fashion_slice

    def fit(ema):
        kq.defenses.set_seed(0)
        model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
        trainer = AdversarialModel(model, attack="trades", eps=0.1, steps=2)
        kq.defenses.compile_classifier(trainer, 1e-2, ema_momentum=ema)
        trainer.fit(x[:256], y[:256], epochs=2, batch_size=64, verbose=0, shuffle=False)
        return model, trainer.optimizer

    plain, _ = fit(None)
    averaged, optimizer = fit(0.9)
    # fit wrote the moving average (w̄ ← 0.9·w̄ + 0.1·w per step) into the model
    for weight, average in zip(averaged.weights, optimizer._model_variables_moving_average):
        np.testing.assert_allclose(weight.numpy(), average.numpy())
    assert not np.allclose(plain.get_weights()[0], averaged.get_weights()[0])
    with pytest.raises(ValueError, match="ema_momentum must be in"):
        kq.defenses.compile_classifier(keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)]), ema_momentum=1)


def _dense_classifier(seed: int = 0):
    kq.defenses.set_seed(seed)
    return keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(16, "relu"),
                             keras.layers.Dense(10)])


def _cross_entropy_and_gradients(model, x, y):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x, training=True)))
    return float(loss), tape.gradient(loss, model.trainable_variables)


@pytest.mark.parametrize("attack", ATTACKS)
def test_awp_perturbs_each_kernel_by_gamma_of_its_norm_uphill(attack, fashion_slice):
    (x, y), _ = fashion_slice
    x, y = tf.constant(x[:64]), tf.constant(y[:64])
    robust = AdversarialModel(_dense_classifier(), attack=attack, eps=0.1, steps=2, awp_gamma=0.01)
    kq.defenses.compile_classifier(robust)
    x_adv = robust.adversarial_examples(x, y)
    pairs = robust.weight_perturbation(x, x_adv, y)
    assert [w.name for w, _ in pairs] == [w.name for w in robust.model.trainable_variables if w.shape.rank == 2]
    for weight, delta in pairs:  # ‖v_l‖ = γ‖w_l‖ (Wu et al. 2020, Algorithm 1)
        np.testing.assert_allclose(np.linalg.norm(delta), 0.01 * np.linalg.norm(weight.numpy()), rtol=1e-4)
    before = float(robust._objective(x, x_adv, y, None)[0])
    for weight, delta in pairs:
        weight.assign_add(delta)
    assert float(robust._objective(x, x_adv, y, None)[0]) > before  # an ascent step on the objective
    robust._epoch.value.assign(0)
    warming = AdversarialModel(robust.model, attack=attack, eps=0.1, steps=2, awp_gamma=0.01, awp_warmup=1)
    assert all(not np.any(delta.numpy()) for _, delta in warming.weight_perturbation(x, x_adv, y))


def test_awp_step_starts_from_w_with_the_gradient_at_w_plus_v(fashion_slice):
    (x, y), _ = fashion_slice
    x, y = tf.constant(x[:64]), tf.constant(y[:64])
    gamma, rate = 0.02, 0.1
    # eps = 0: the adversarial examples are the inputs, so the step can be computed by hand
    robust = AdversarialModel(_dense_classifier(), attack="pgd", eps=0.0, steps=1, awp_gamma=gamma)
    robust.compile(optimizer=keras.optimizers.SGD(rate),
                   loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    reference = _dense_classifier()
    _, gradients = _cross_entropy_and_gradients(reference, x, y)
    for weight, gradient in zip(reference.trainable_variables, gradients):
        if weight.shape.rank >= 2:
            weight.assign_add(gamma * tf.norm(weight) / tf.norm(gradient) * gradient)
    _, gradients_at_perturbed = _cross_entropy_and_gradients(reference, x, y)
    start = [w.numpy() for w in robust.model.trainable_variables]
    robust.fit(x, y, epochs=1, batch_size=64, verbose=0, shuffle=False)
    for before, after, gradient in zip(start, robust.model.trainable_variables, gradients_at_perturbed):
        np.testing.assert_allclose(after.numpy(), before - rate * gradient.numpy(), rtol=1e-4, atol=1e-6)


def test_awp_warmup_epochs_train_as_without_awp(fashion_slice, tmp_path):
    (x, y), _ = fashion_slice

    def trained(**awp):
        robust = AdversarialModel(_dense_classifier(), attack="pgd", eps=0.0, steps=1, **awp)
        robust.compile(optimizer=keras.optimizers.SGD(0.1),
                       loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        robust.fit(x[:128], y[:128], epochs=1, batch_size=64, verbose=0, shuffle=False)
        return robust

    plain = trained().model.get_weights()
    warming = trained(awp_gamma=0.02, awp_warmup=1)
    for a, b in zip(plain, warming.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    perturbed = trained(awp_gamma=0.02).model.get_weights()
    assert not np.allclose(plain[0], perturbed[0])
    warming.save(tmp_path / "awp.keras")
    loaded = keras.models.load_model(tmp_path / "awp.keras")
    assert (loaded.awp_gamma, loaded.awp_warmup) == (0.02, 1)
    assert len(loaded.weights) == len(warming.weights)  # the epoch counter is not a weight


def _kl(p_logits, q_logits):
    p = tf.nn.softmax(p_logits)
    return tf.reduce_sum(p * (tf.nn.log_softmax(p_logits) - tf.nn.log_softmax(q_logits)), axis=-1)


def test_a_teacher_is_the_target_of_the_trades_term(fashion_slice):
    (x, y), _ = fashion_slice
    x, y = tf.constant(x[:64]), tf.constant(y[:64])
    teacher, student = _dense_classifier(1), _dense_classifier(2)
    beta, rate = 3.0, 0.1
    distilled = AdversarialModel(student, attack="trades", eps=0.1, steps=3, beta=beta, teacher=teacher)
    distilled.compile(optimizer=keras.optimizers.SGD(rate),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    kq.defenses.set_seed(0)
    x_adv = distilled.adversarial_examples(x, y)
    # the attack climbs KL(p_T(x) ‖ p_S(x')), not the student's own KL(p_S(x) ‖ p_S(x'))
    toward_teacher = float(tf.reduce_mean(_kl(teacher(x), student(x_adv))))
    assert toward_teacher > float(tf.reduce_mean(_kl(teacher(x), student(x)))) + 1e-3
    # the objective: CE(f(x), y) + β·KL(p_T(x) ‖ p_S(x')) (Goldblum 2020, eq. 2 at temperature 1)
    with tf.GradientTape() as tape:
        ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, student(x, training=True)))
        by_hand = ce + beta * tf.reduce_mean(_kl(teacher(x), student(x_adv, training=True)))
    gradients = tape.gradient(by_hand, student.trainable_variables)
    np.testing.assert_allclose(float(distilled._objective(x, x_adv, y, None)[0]), float(by_hand), rtol=1e-5)
    without = AdversarialModel(_dense_classifier(2), attack="trades", eps=0.1, steps=3, beta=beta)
    without.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert abs(float(without._objective(x, x_adv, y, None)[0]) - float(by_hand)) > 1e-3
    # one SGD step on that objective; the teacher is not trained
    start, teacher_weights = [w.numpy() for w in student.trainable_variables], teacher.get_weights()
    distilled.train_on_batch(x, y)  # attacks the batch afresh: same weights, compare the teacher only
    for before, after in zip(teacher_weights, teacher.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert any(not np.allclose(b, a.numpy()) for b, a in zip(start, student.trainable_variables))
    assert all(g is not None for g in gradients)


def test_a_teacher_is_saved_with_the_wrapper(tmp_path, fashion_slice):
    (x, y), _ = fashion_slice
    teacher = _dense_classifier(1)
    distilled = AdversarialModel(_dense_classifier(2), attack="trades", eps=0.1, steps=2, teacher=teacher)
    kq.defenses.compile_classifier(distilled)
    path = tmp_path / "distilled.keras"
    distilled.save(path)
    loaded = kq.keras.models.load_model(path)
    assert isinstance(loaded, AdversarialModel) and loaded.teacher is not None
    np.testing.assert_allclose(loaded.teacher.predict(x[:8], verbose=0), teacher.predict(x[:8], verbose=0), rtol=1e-6)


@pytest.mark.parametrize("kwargs, teacher, match", [
    ({"attack": "pgd"}, "dense", "a teacher sets the target of TRADES' KL term"),
    ({"attack": "trades"}, "itself", "the teacher is the model being trained"),
    ({"attack": "trades"}, "five classes", "they must match"),
    ({"attack": "trades"}, "softmax", "ends in a softmax"),
])
def test_bad_teachers(kwargs, teacher, match):
    student = _dense_classifier(2)
    teachers = {
        "dense": _dense_classifier(1), "itself": student,
        "five classes": keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(5)]),
        "softmax": keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                                     keras.layers.Dense(10, activation="softmax")]),
    }
    with pytest.raises(ValueError, match=match):
        AdversarialModel(student, teacher=teachers[teacher], **kwargs)

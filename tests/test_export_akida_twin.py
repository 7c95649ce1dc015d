"""The Akida twin: the quantizeml model a .fbz is converted from, on the model's [0, 1] inputs."""

import subprocess
import sys

import numpy as np
import pytest

REASON = "Akida export needs cnn2snn and akida: pip install 'keras-qrobust[akida]'"
pytest.importorskip("cnn2snn", reason=REASON)
pytest.importorskip("akida", reason=REASON)

import keras_qrobust as kq  # noqa: E402
from keras_qrobust.export import akida, akida_twin, load, quantize_for_akida  # noqa: E402
from keras_qrobust.guard.attacking import attacked_model  # noqa: E402

N_TEST = 300


@pytest.fixture(scope="module")
def robust_w4a4(trained_cnn, fashion_slice):
    """trained_cnn quantized by RobustQuantizer at w4a4, as guard quantizes for --target akida."""
    (x, _), _ = fashion_slice
    return kq.RobustQuantizer.from_setting("w4a4", input_weight_bits=8, quantize_output=False).quantize(
        trained_cnn, x[:256])


@pytest.fixture(scope="module")
def carried(robust_w4a4, fashion_slice, tmp_path_factory):
    """The w4a4 model's .fbz (its grids carried) and its twin, checked against that file."""
    (x, _), _ = fashion_slice
    path = akida(robust_w4a4, tmp_path_factory.mktemp("twin") / "w4a4.fbz", x[:256])
    return path, akida_twin(robust_w4a4, x[:256], file=path)


def test_twin_computes_the_file(carried, robust_w4a4, fashion_slice):
    path, twin = carried
    _, (x_test, _) = fashion_slice
    assert twin.exact and twin.runtime == "akida", twin.approximated
    x = np.clip(x_test[:N_TEST] + np.random.default_rng(0).uniform(-0.1, 0.1, x_test[:N_TEST].shape), 0, 1)
    x = x.astype(np.float32)
    file_scores = load(path).predict(x)
    np.testing.assert_array_equal(twin.model.predict(x, verbose=0), file_scores)
    # the RobustQuantizer model it came from sums in float: it parts from the file on a few inputs
    # (98-99.7% top-1, benchmarks/akida_fidelity.py); the twin never does
    keras_scores = robust_w4a4.predict(x, verbose=0)
    assert not np.array_equal(keras_scores, file_scores)


def test_twin_has_gradients_and_attacks_reach_the_file(carried, fashion_slice):
    path, twin = carried
    _, (x_test, y_test) = fashion_slice
    x, y = x_test[:100], y_test[:100]
    x_tensor = kq.tf.constant(x)
    with kq.tf.GradientTape() as tape:
        tape.watch(x_tensor)
        loss = kq.keras.losses.sparse_categorical_crossentropy(y, twin.model(x_tensor), from_logits=True)
    gradient = tape.gradient(loss, x_tensor).numpy()
    assert np.isfinite(gradient).all()
    assert np.all(np.abs(gradient).reshape(len(x), -1).max(axis=1) > 0)  # every input has a gradient
    x_adv = np.asarray(kq.attacks.pgd(twin.model, x, y, eps=0.1, steps=10, seed=0, verbose=0))
    assert np.abs(x_adv - x).max() <= 0.1 + 1e-6
    on_twin = np.mean(twin.model.predict(x_adv, verbose=0).argmax(1) == y)
    assert on_twin < np.mean(twin.model.predict(x, verbose=0).argmax(1) == y) - 0.3  # the attack works
    assert np.mean(load(path).predict(x_adv).argmax(1) == y) == on_twin  # and means the same on the file
    # the attacks compile without autograph (a UAP's labels): quantizeml's Python len() on tensors still runs
    compiled = kq.tf.function(lambda inputs: twin.model(inputs), autograph=False)
    np.testing.assert_array_equal(compiled(x_tensor).numpy(), twin.model.predict(x, verbose=0))
    uap = kq.attacks.uap(twin.model, x, eps=0.1, max_passes=1, seed=0, verbose=0)
    assert np.abs(uap.perturbation).max() <= 0.1 + 1e-6


def test_another_file_shows_as_differing_outputs(robust_w4a4, trained_cnn, fashion_slice, tmp_path):
    (x, _), _ = fashion_slice
    requantized = akida(trained_cnn, tmp_path / "float.fbz", x[:256])  # quantizeml's own w4a4 grids
    twin = akida_twin(robust_w4a4, x[:256], file=requantized, probes=64)
    assert not twin.exact
    assert "probe inputs" in twin.approximated[0] and "of 128 probe inputs" in twin.approximated[0]
    with pytest.raises(ValueError, match="is not a .fbz file"):
        akida_twin(robust_w4a4, file=tmp_path / "missing.fbz")


def test_a_float_models_twin_takes_the_exports_bits(trained_cnn, fashion_slice, tmp_path):
    # a float model is quantized by quantizeml at the bits given to the export; the twin takes the same
    (x, _), _ = fashion_slice
    w8a8 = akida(trained_cnn, tmp_path / "w8a8.fbz", x[:256], weight_bits=8, activation_bits=8)
    same = akida_twin(trained_cnn, x[:256], file=w8a8, probes=64, weight_bits=8, activation_bits=8)
    assert same.exact, same.approximated
    assert not akida_twin(trained_cnn, x[:256], file=w8a8, probes=64).exact  # the default w4a4 is another function
    # quantize_for_akida's output (what guard keeps as a candidate) is taken as it is, by the twin and the export
    quantized = quantize_for_akida(trained_cnn, x[:256], weight_bits=8, activation_bits=8)
    assert akida_twin(quantized, x[:256], file=w8a8, probes=64).exact
    again = akida(quantized, tmp_path / "again.fbz")
    np.testing.assert_array_equal(load(again).predict(x[:64]), load(w8a8).predict(x[:64]))
    with pytest.raises(ValueError, match="already quantized"):
        akida(quantized, tmp_path / "bits.fbz", weight_bits=4)


def test_guard_attacks_the_akida_twin(robust_w4a4, trained_cnn):
    model, twin = attacked_model(robust_w4a4, "akida")
    assert twin.runtime == "akida" and model is twin.model and twin.exact
    assert attacked_model(robust_w4a4, "akida")[1] is twin  # built once per model and process
    assert attacked_model(trained_cnn, "akida") == (trained_cnn, None)  # the float model is attacked as it is


def test_autoattack_runs_on_the_file_through_bpda_and_on_the_twin(carried, robust_w4a4, fashion_slice):
    """APGD keeps its batch shape static through its loop: neither the .fbz's scores (a
    py_function's, batch size unknown) nor the twin's quantizeml call may take it away."""
    path, twin = carried
    _, (x_test, y_test) = fashion_slice
    twin.model.predict(x_test[:40], batch_size=32, verbose=0)  # traced for batches of 32 and 8 first
    correct = np.flatnonzero(twin.model.predict(x_test, verbose=0).argmax(1) == y_test)[:1]
    # one input (a batch of 1 broadcasts against an unknown batch size and keeps it unknown) and an ε
    # too small to break it: APGD-T, after APGD-CE, runs its loop on it
    x, y = x_test[correct], y_test[correct]
    eps = 0.002
    through = kq.attacks.autoattack(kq.attacks.bpda(load(path), robust_w4a4), x, y, eps=eps, version="fast",
                                    seed=0, verbose=0)
    own = kq.attacks.autoattack(twin.model, x, y, eps=eps, version="fast", seed=0, verbose=0)
    for result in (through, own):
        assert np.abs(result.x_adv - x).max() <= eps + 1e-6 and result.robust.all()


def test_adversarially_trained_twin_exports_as_it_is(robust_w4a4, fashion_slice, tmp_path):
    # the other route to a robust .fbz: train the file's own function (the twin's
    # quantizeml weights) with an adversarial objective, then convert what was trained
    (x, y), (x_test, _) = fashion_slice
    twin = akida_twin(robust_w4a4, x[:256])
    before = [w.numpy().copy() for w in twin.model.trainable_weights]
    assert before, "the twin has no trainable weights"
    kq.defenses.set_seed(0)
    trainer = kq.defenses.compile_classifier(
        kq.defenses.AdversarialModel(twin.model, attack="trades", eps=0.1, steps=2, beta=3.0), 1e-3)
    trainer.fit(x[:256], y[:256], epochs=1, batch_size=64, verbose=0)
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(before, twin.model.trainable_weights))
    path = akida(twin.quantized, tmp_path / "trained.fbz")
    probe = x_test[:N_TEST]
    np.testing.assert_array_equal(load(path).predict(probe), twin.model.predict(probe, verbose=0))


def test_a_cached_quantizeml_model_loads_in_a_fresh_process(trained_cnn, fashion_slice, tmp_path):
    # a process that never imported quantizeml (a benchmark loading a fine-tuned twin it cached)
    # must register its classes before Keras deserializes them
    (x, _), _ = fashion_slice
    quantized = quantize_for_akida(trained_cnn, x[:256], weight_bits=4, activation_bits=4)
    path, probe, out = tmp_path / "quantized.keras", tmp_path / "probe.npy", tmp_path / "out.npy"
    kq.bench.save_cached(quantized, path)
    np.save(probe, x[:32])
    code = ("import sys, numpy as np, keras_qrobust as kq; model, _ = kq.bench.load_cached(sys.argv[1]); "
            "np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))")
    subprocess.run([sys.executable, "-c", code, str(path), str(probe), str(out)], check=True, capture_output=True)
    np.testing.assert_array_equal(np.load(out), quantized.predict(x[:32], verbose=0))

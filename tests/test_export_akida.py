"""Akida export: quantizeml + cnn2snn to .fbz, run in the Akida software backend."""

import dataclasses
import importlib
import json
import shutil

import numpy as np
import pytest

REASON = "Akida export needs cnn2snn and akida: pip install 'keras-qrobust[akida]'"
pytest.importorskip("cnn2snn", reason=REASON)
pytest.importorskip("akida", reason=REASON)

import keras_qrobust as kq  # noqa: E402
akida_export = importlib.import_module("keras_qrobust.export.akida")  # the module (export.akida is the function)
akida_grids = importlib.import_module("keras_qrobust.export.akida_grids")
from keras_qrobust.export.akida import AkidaModel, akida, check_akida_compatible, quantize_for_akida  # noqa: E402
from keras_qrobust.export.runtime import load  # noqa: E402
from keras_qrobust.transforms import UnsupportedModelError  # noqa: E402

layers = kq.keras.layers
N_TEST = 200


@pytest.fixture(scope="module")
def exported(trained_cnn, fashion_slice, tmp_path_factory):
    """trained_cnn exported at w4a4 and w8a8, calibrated on 256 training images."""
    (x, _), _ = fashion_slice
    folder = tmp_path_factory.mktemp("akida")
    return {
        bits: akida(trained_cnn, folder / f"cnn_w{bits}a{bits}.fbz", x[:256], weight_bits=bits, activation_bits=bits)
        for bits in (4, 8)
    }


@pytest.fixture
def no_quantization(monkeypatch):
    """Fail the test if the slow quantization step starts."""
    def refuse(*args, **kwargs):
        raise AssertionError("quantization started although the export should have stopped before it")

    monkeypatch.setattr(akida_export, "_quantize", refuse)


def test_w4a4_matches_the_quantizeml_model(exported, trained_cnn, fashion_slice):
    (x, _), (x_test, y_test) = fashion_slice
    x_test, y_test = x_test[:N_TEST], y_test[:N_TEST]
    deployed = load(exported[4])
    assert isinstance(deployed, AkidaModel) and deployed.format == "akida"
    assert deployed.input_shape == (28, 28, 1)
    scores = deployed.predict(x_test)
    assert scores.shape == (N_TEST, 10) and scores.dtype == np.float32

    qmodel = quantize_for_akida(trained_cnn, x[:256], weight_bits=4, activation_bits=4)
    q_scores = qmodel.predict(np.round(x_test * 255), verbose=0)
    # Akida runs the integer arithmetic quantizeml simulates: measured 200/200 top-1 agreement
    # and identical scores (max |diff| 0.0). A wrong input scaling (e.g. feeding x instead of
    # x*255) drops agreement to chance, so both checks can fail.
    assert np.mean(scores.argmax(1) == q_scores.argmax(1)) >= 0.99
    np.testing.assert_allclose(scores, q_scores, rtol=1e-5, atol=1e-5)
    # Against the float model, 4-bit quantization moves some decisions: measured 0.92.
    float_top1 = trained_cnn.predict(x_test, verbose=0).argmax(1)
    assert np.mean(scores.argmax(1) == float_top1) >= 0.85
    assert np.mean(scores.argmax(1) == y_test) >= np.mean(float_top1 == y_test) - 0.08

    np.testing.assert_array_equal(deployed.predict(x_test, batch_size=7), scores)
    with pytest.raises(ValueError, match="shape"):
        deployed.predict(x_test[:, :14])


def test_w8a8_agrees_with_the_float_model(exported, trained_cnn, fashion_slice):
    _, (x_test, _) = fashion_slice
    scores = load(exported[8]).predict(x_test[:N_TEST])
    float_top1 = trained_cnn.predict(x_test[:N_TEST], verbose=0).argmax(1)
    # measured 0.985 (197/200); 8-bit weights and activations barely move the decisions
    assert np.mean(scores.argmax(1) == float_top1) >= 0.95
    assert exported[8].read_bytes() != exported[4].read_bytes()


def test_overwrite_protection(exported, trained_cnn, fashion_slice, tmp_path, monkeypatch):
    (x, _), (x_test, _) = fashion_slice
    target = tmp_path / "model.fbz"
    shutil.copy(exported[8], target)
    before = target.read_bytes()
    with monkeypatch.context() as patch:
        patch.setattr(akida_export, "_quantize", lambda *a, **k: pytest.fail("quantization started"))
        with pytest.raises(FileExistsError, match="overwrite=True"):
            akida(trained_cnn, target, x[:64])
    assert target.read_bytes() == before

    assert akida(trained_cnn, target, x[:64], overwrite=True) == target
    assert target.read_bytes() != before  # the w8a8 file was replaced by a w4a4 one
    assert load(target).predict(x_test[:5]).shape == (5, 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.fbz"]  # no temporary left behind


def _lstm_model():
    return kq.keras.Sequential(
        [kq.keras.Input((28, 28)), layers.LSTM(8, name="lstm"), layers.Dense(10, activation="softmax", name="probs")],
        name="lstm_model",
    )


def test_incompatible_model_lists_every_reason_before_any_work(tmp_path, no_quantization):
    target = tmp_path / "lstm.fbz"
    with pytest.raises(UnsupportedModelError) as error:
        akida(_lstm_model(), target, np.zeros((4, 28, 28), np.float32))
    message = str(error.value)
    assert "4 problems" in message
    for expected in ("LSTM layer 'lstm'", "'probs' (Dense) uses the activation 'softmax'", "not an image",
                     "Conv2D"):
        assert expected in message
    assert not target.exists() and list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def robust_w4a4(trained_cnn, fashion_slice):
    """trained_cnn quantized by RobustQuantizer at w4a4, as guard quantizes for --target akida."""
    (x, _), _ = fashion_slice
    return kq.RobustQuantizer.from_setting("w4a4", quantize_output=False).quantize(trained_cnn, x[:256])


def test_robust_quantizer_model_keeps_its_grids(robust_w4a4, exported, fashion_slice, tmp_path):
    (x, _), (x_test, _) = fashion_slice
    path = akida(robust_w4a4, tmp_path / "carried.fbz", x[:256])
    scores = load(path).predict(x_test)
    keras_scores = robust_w4a4.predict(x_test, verbose=0)
    carried = np.mean(scores.argmax(1) == keras_scores.argmax(1))
    requantized = np.mean(load(exported[4]).predict(x_test).argmax(1) == keras_scores.argmax(1))
    # measured on these 500 test images: 98.2% top-1 agreement carrying the grids, 94.0% when
    # quantizeml requantizes the float model; the scores (up to 9.3) differ by 0.039 in the median,
    # 0.31 at most, where Akida's integer arithmetic rounds a code the other way
    assert carried >= 0.97 and carried > requantized
    assert np.median(np.abs(scores - keras_scores)) < 0.08
    np.testing.assert_allclose(quantize_for_akida(robust_w4a4, x[:256]).predict(np.round(x_test * 255), verbose=0),
                               scores, rtol=1e-5, atol=1e-5)


def test_carried_codes_are_checked(robust_w4a4, fashion_slice):
    (x, _), _ = fashion_slice
    grids = akida_grids.carried_grids(robust_w4a4)
    assert (grids.weight_bits, grids.input_weight_bits, grids.activation_bits) == (4, 8, 4)
    qmodel = akida_export._quantize(grids.model, x[:64], grids, 4, 4, 8)  # applies and checks the grids
    for relu in grids.relus:  # calibration's ranges and cross-layer equalization undone
        quantizer = qmodel.get_layer(relu).out_quantizer
        assert np.all(quantizer.range_max.numpy() == 15.0) and np.all(quantizer.rescaling_rate.numpy() == 1.0)
    for layer, kernel in grids.kernels.items():
        np.testing.assert_array_equal(qmodel.get_layer(layer).get_weights()[0], kernel)
    name = "fc1"
    kernel = grids.kernels[name]
    shifted = dataclasses.replace(grids, kernels={**grids.kernels, name: kernel + 0.3 * np.abs(kernel).max() / 7})
    with pytest.raises(UnsupportedModelError, match=f"weights of '{name}' onto another grid"):
        akida_grids.apply_grids(qmodel, shifted)


def test_quantized_models_akida_cannot_compute_are_refused(fashion_slice, trained_cnn, tmp_path, no_quantization):
    (x, _), _ = fashion_slice
    cases = {
        "3-bit weights": (kq.RobustQuantizer(3, 4), "'conv2' has 3-bit weights"),
        "per-tensor": (kq.RobustQuantizer(4, 4, per_axis=False), "per-tensor weight steps"),
        "mu-law": (kq.RobustQuantizer(4, 4, mu_law_last=1), "'logits' has mu_law(4"),
    }
    for name, (quantizer, expected) in cases.items():
        (reason,) = check_akida_compatible(quantizer.quantize(trained_cnn, x[:64]))
        assert expected in reason, name
    residual = kq.RobustQuantizer(4, 4).quantize(kq.zoo.resnet_small(), x[:64])
    (reason,) = check_akida_compatible(residual)
    assert "'block1_conv2' feeds block1_conv2_quantizer" in reason and "Export the float model" in reason
    with pytest.raises(ValueError, match="keeps its bits: weight_bits=8"):
        akida(kq.RobustQuantizer(4, 4).quantize(trained_cnn, x[:64]), tmp_path / "q.fbz", x[:64], weight_bits=8)
    assert list(tmp_path.iterdir()) == []


def test_keras3_models_are_rejected(tmp_path, no_quantization):
    import keras as keras3

    model3 = keras3.Sequential([keras3.Input((28, 28, 1)), keras3.layers.Conv2D(2, 3)])
    (reason,) = check_akida_compatible(model3)
    assert "Keras 3" in reason and "tf_keras" in reason
    with pytest.raises(UnsupportedModelError, match="Keras 3"):
        akida(model3, tmp_path / "k3.fbz")
    assert list(tmp_path.iterdir()) == []


def test_check_akida_compatible_on_zoo_models():
    assert check_akida_compatible(kq.zoo.cnn_small()) == []
    assert check_akida_compatible(kq.zoo.resnet_small()) == []  # converts (checked by hand, slow)
    (reason,) = check_akida_compatible(kq.zoo.mlp_gorsline())
    assert "'flatten' (Flatten)" in reason and "Conv2D" in reason
    reasons = check_akida_compatible(kq.zoo.ds_cnn())  # 'same' convolutions, 'valid' pooling
    assert [r.split("'")[1] for r in reasons] == ["pool1", "pool2", "pool3"]
    assert all("same padding" in r for r in reasons)
    subclassed = type("Net", (kq.keras.Model,), {"call": lambda self, x: x})()
    (reason,) = check_akida_compatible(subclassed)
    assert "subclassed" in reason


def test_cnn2snn_failure_is_reported(tmp_path):
    # passes the pre-check, but Akida 2 has no SeparableConv2D + MaxPooling2D block
    model = kq.keras.Sequential([
        kq.keras.Input((8, 8, 1)),
        layers.Conv2D(4, 3, padding="same", activation="relu"),
        layers.SeparableConv2D(4, 3, padding="same"),
        layers.MaxPooling2D(padding="same"),
        layers.ReLU(),
        layers.Flatten(),
        layers.Dense(2),
    ], name="sep_pool")
    assert check_akida_compatible(model) == []
    target = tmp_path / "sep.fbz"
    rng = np.random.default_rng(0)
    with pytest.raises(UnsupportedModelError, match="(?s)cnn2snn could not convert 'sep_pool'.*SeparableConv2D"):
        akida(model, target, rng.uniform(0, 1, (32, 8, 8, 1)))
    assert not target.exists()


def test_argument_errors(trained_cnn, tmp_path):
    x = np.zeros((4, 28, 28, 1), np.float32)
    with pytest.raises(ValueError, match="weight_bits"):
        akida(trained_cnn, tmp_path / "m.fbz", x, weight_bits=2)
    with pytest.raises(ValueError, match=r"\.fbz"):
        akida(trained_cnn, tmp_path / "m.h5", x)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        akida(trained_cnn, tmp_path / "m.fbz", x + 255)
    with pytest.raises(ValueError, match="shape"):
        akida(trained_cnn, tmp_path / "m.fbz", x[..., 0])
    assert list(tmp_path.iterdir()) == []


def test_missing_akida_says_how_to_install(trained_cnn, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "cnn2snn", None)  # makes `import cnn2snn` fail
    with pytest.raises(ImportError, match=r"pip install 'keras-qrobust\[akida\]'"):
        akida(trained_cnn, tmp_path / "m.fbz")


def test_truncated_file_is_a_clear_error(exported, tmp_path):
    broken = tmp_path / "broken.fbz"
    broken.write_bytes(exported[4].read_bytes()[:100])  # akida itself segfaults on this
    with pytest.raises(ValueError, match="could not be loaded by the akida runtime"):
        load(broken)


def test_cli_exports_a_quantized_model_with_its_grids(tiny_case, tmp_path, capsys):
    from keras_qrobust import cli

    model_file, data_file = tiny_case
    model = kq.keras.models.load_model(model_file)
    quantizer = kq.RobustQuantizer.from_setting("w4a4", quantize_output=False)
    quantized = quantizer.quantize(model, np.load(data_file)["x_train"])
    quantized.save(tmp_path / "tiny_w4a4.keras")
    code = cli.main(["export", "--model", str(tmp_path / "tiny_w4a4.keras"), "--dataset", str(data_file),
                     "--target", "akida", "--output", str(tmp_path / "tiny.fbz")])
    out = capsys.readouterr().out
    assert code == 0 and (tmp_path / "tiny.fbz").exists()
    agreement = float(out.split("top-1 agreement ")[1].split("%")[0])
    x_test = np.load(data_file)["x_test"]
    ours = np.mean(quantized.predict(x_test, verbose=0).argmax(1)
                   == load(tmp_path / "tiny.fbz").predict(x_test).argmax(1))
    assert agreement == pytest.approx(100 * ours, abs=0.01), out  # the CLI reports what the file computes
    # ≤ 4 of 80: the model trains differently on each CPU (float summation order), and Akida
    # rounds a few codes the other way (an AVX2 host: 3 near-ties, Keras margins 0.002-0.07
    # against a median of 0.21); benchmarks/akida_fidelity.py measures it on 10,000 images
    assert agreement >= 95.0, out
    code = cli.main(["export", "--model", str(tmp_path / "tiny_w4a4.keras"), "--dataset", str(data_file),
                     "--target", "akida", "--weight-bits", "8", "--output", str(tmp_path / "other.fbz")])
    assert code == 2 and "--weight-bits: " in (err := capsys.readouterr().err) and "is already quantized" in err, err
    assert not (tmp_path / "other.fbz").exists()


def test_a_relu_without_its_weight_layer_is_refused(fashion_slice, no_quantization):
    (x, _), _ = fashion_slice
    model = kq.keras.Sequential([kq.keras.Input((28, 28, 1)), layers.Conv2D(4, 3, activation="relu", name="conv"),
                                 layers.ReLU(name="second_relu"), layers.Flatten(), layers.Dense(10, name="scores")])
    quantized = kq.RobustQuantizer(4, 4).quantize(model, x[:64])
    first, second = quantized.get_layer("conv_relu"), quantized.get_layer("second_relu")
    second.set_range(0.5 * float(first.activation_max.numpy()))  # its own grid: a requantization Akida lacks
    (reason,) = check_akida_compatible(quantized)
    assert "'second_relu' does not follow a weight layer" in reason


def test_a_model_cnn2snn_converts_only_in_part_is_refused(tmp_path):
    # on a 7×7 input, ZeroPadding2D((0, 1)) + a 'valid' strided depthwise is no 'same' padding:
    # quantizeml leaves them in float behind a Dequantizer, and cnn2snn converts only the layers
    # before it (quantizeml names the stem's ReLU 'stem_activ'), so the file would output the
    # 7×7×8 stem features, not the 3 scores
    model = kq.keras.Sequential([
        kq.keras.Input((14, 14, 1)),
        layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="stem"),
        layers.ZeroPadding2D(((0, 1), (0, 1)), name="pad"),
        layers.DepthwiseConv2D(3, strides=2, padding="valid", name="strided"),
        layers.ReLU(name="strided_relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(3, name="scores"),
    ], name="padded")
    assert check_akida_compatible(model) == []
    target = tmp_path / "padded.fbz"
    x = np.random.default_rng(0).uniform(0, 1, (32, 14, 14, 1)).astype(np.float32)
    with pytest.raises(UnsupportedModelError, match=r"only up to layer 'stem_activ'.*output 392 values, not the "
                                                    r"model's 3.*'pad' \(ZeroPadding2D\)"):
        akida(model, target, x)
    assert not target.exists()


@pytest.fixture(scope="module")
def residual_model(tiny_case, tmp_path_factory):
    """A tiny model with a residual sum (trained on the tiny case): its float model converts to
    Akida, its RobustQuantizer copies cannot carry their grids (Akida requantizes the sum)."""
    (x, y) = (np.load(tiny_case[1])[k] for k in ("x_train", "y_train"))
    inputs = kq.keras.Input((28, 28, 1))
    h = layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="stem")(inputs)
    branch = layers.Conv2D(4, 3, padding="same", name="branch")(h)
    h = layers.ReLU(name="sum_relu")(layers.Add(name="sum")([h, branch]))
    outputs = layers.Dense(10, name="scores")(layers.GlobalAveragePooling2D()(h))
    model = kq.keras.Model(inputs, outputs, name="residual")
    kq.defenses.train_classifier(model, x, y, epochs=10, batch_size=32, seed=0)
    path = tmp_path_factory.mktemp("residual") / "residual.keras"
    model.save(path)
    return path


def test_guard_akida_quantizes_a_model_whose_grids_cannot_be_carried_with_quantizeml(residual_model, tiny_case,
                                                                                      tmp_path, capsys):
    from keras_qrobust import cli
    from keras_qrobust.model_files import load_model

    data_file = tiny_case[1]
    assert check_akida_compatible(kq.keras.models.load_model(residual_model)) == []  # the float model converts
    common = ["guard", "--model", str(residual_model), "--dataset", str(data_file), "--target", "akida", "--force"]
    # quantizeml takes 4- or 8-bit weights only: said before any work
    assert cli.main([*common, "--candidates", "w2a2", "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "cannot carry their grids to Akida" in err and "drop w2a2 from --candidates" in err, err
    assert not (tmp_path / "refused").exists()

    out = tmp_path / "run"
    code = cli.main([*common, "--candidates", "w4a4", "--floor", "0", "--no-train", "--surrogate-epochs", "1",
                     "--train-samples", "200", "--test-samples", "40", "--pgd-steps", "3", "--uap-samples", "64",
                     "--autoattack", "fast", "--autoattack-samples", "20", "--square-queries", "50",
                     "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    candidate = load_model(out / "candidates" / "w4a4.keras")  # quantizeml's classes load without trust=True
    assert akida_export.is_akida_quantized(candidate)
    assert "w4a4: Akida cannot hold the RobustQuantizer grids" in err and "attacking its Akida twin" in err, err
    state = json.loads((out / "guard_state.json").read_text())
    remeasured = state["stages"]["remeasure"]["summary"]
    # the .fbz computes the quantizeml model guard attacked: the same labels on every test input
    assert remeasured["runtime"] == "akida" and remeasured["agreement"] == 1.0, remeasured
    report = (out / "report.md").read_text()
    assert "quantizeml quantized the float model at the same bits" in report
    assert "quantizeml's w4a4 quantization of the float model" in report

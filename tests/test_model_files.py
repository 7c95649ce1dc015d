"""Safe loading: malicious model files are refused without running their code, real models
(zoo, RobustQuantizer, tfmot QAT, keras.applications) load in every format."""

import json
import os
import shutil
import zipfile

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust import model_files
from keras_qrobust.model_files import ModelFileError, UntrustedModelError

keras = kq.keras


def _lambda_model(marker):
    # the marker path is a constant inside the lambda's own bytecode, as an attacker's would be
    touch = eval(f"lambda t: (__import__('pathlib').Path({str(marker)!r}).touch(), t)[1]")  # noqa: S307
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Lambda(touch)(inputs)))


def _keras_naming_a_module(path, marker, monkeypatch):
    """A .keras file whose model entry names a module outside Keras: tf_keras imports that
    module on load (safe_mode does not stop it)."""
    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(2, activation="relu")(inputs)).save(path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    config["module"] = "_untrusted_code"
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    monkeypatch.setenv("KQ_TEST_MARKER", str(marker))


def _malicious(kind, tmp_path, monkeypatch):
    marker = tmp_path / "marker"
    if kind == "keras-module":
        path = tmp_path / "m.keras"
        _keras_naming_a_module(path, marker, monkeypatch)
    else:
        path = tmp_path / ("m.h5" if kind == "h5-lambda" else "saved_model")
        _lambda_model(marker).save(path)
    if marker.exists():
        marker.unlink()  # building and saving the model called the lambda
    return path, marker


@pytest.mark.parametrize("kind", ["h5-lambda", "savedmodel-lambda", "keras-module"])
def test_malicious_file_is_refused_without_running_its_code(kind, tmp_path, monkeypatch):
    path, marker = _malicious(kind, tmp_path, monkeypatch)
    with pytest.raises(UntrustedModelError, match=r"was not loaded: it holds .*--trust-model") as error:
        model_files.load_model(path)
    assert "\n" not in str(error.value)
    assert not marker.exists(), "the file's code ran although the load was refused"
    # the fixture is armed: plain tf_keras runs the code (its safe_mode covers none of these)
    monkeypatch.syspath_prepend(os.path.dirname(__file__))
    try:
        keras.models.load_model(str(path), compile=False)
    except Exception:  # noqa: BLE001 - a loader may fail after the code ran; the marker decides
        pass
    assert marker.exists(), "fixture not armed: tf_keras did not run the file's code either"


def test_trust_loads_a_lambda_model(tmp_path):
    path, marker = tmp_path / "m.h5", tmp_path / "marker"
    _lambda_model(marker).save(path)
    marker.unlink()
    model = model_files.load_model(path, trust=True)
    assert model.predict(np.zeros((1, 4), np.float32), verbose=0).shape == (1, 2)


def test_savedmodel_graph_operations_are_scanned(tmp_path):
    import tensorflow as tf

    target = str(tmp_path / "written")

    class Writer(keras.layers.Layer):
        def call(self, t):
            with tf.control_dependencies([tf.io.write_file(target, tf.strings.as_string(t[0, 0]))]):
                return tf.identity(t)

    inputs = keras.Input((4,))
    keras.Model(inputs, Writer()(inputs)).save(tmp_path / "sm")
    assert "WriteFile" in model_files._saved_model_ops(tmp_path / "sm")
    with pytest.raises(UntrustedModelError, match=r"the class 'Writer'.*\(and 1 more\)"):
        model_files.load_model(tmp_path / "sm")


def _tf_op_model():
    """What keras.applications' MobileNetV3 does: TFOpLambda entries (x + 3, tf.nn.relu6, * 1/6)."""
    import tensorflow as tf

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3)(inputs)
    x = x * tf.nn.relu6(x + 3.0) * (1.0 / 6.0)
    return keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(x)))


@pytest.mark.parametrize("suffix", [".keras", ".h5", ""])
def test_real_models_load_in_every_format(suffix, tmp_path, rng):
    import tensorflow_model_optimization as tfmot

    x = rng.random((16, 32, 32, 3), dtype=np.float32)
    cnn = kq.zoo.cnn_small((32, 32, 3), dropout=0.0)
    qat = tfmot.quantization.keras.quantize_apply(tfmot.quantization.keras.quantize_annotate_model(cnn),
                                                 kq.WXAYScheme(4, 4))
    models = {"tf_ops": _tf_op_model(), "w4a4": kq.RobustQuantizer(4, 4).quantize(cnn, x)}
    if suffix != ".keras":  # tf_keras itself cannot reload a tfmot QAT model from .keras (variable count)
        models["qat"] = qat
    for name, model in models.items():
        path = tmp_path / f"{name}{suffix}"
        model.save(path)
        loaded = model_files.load_model(path)
        np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_keras_applications_configs_are_allowed():
    """keras.applications MobileNetV2/V3 configs (the models users bring) pass the inspection."""
    for build in (keras.applications.MobileNetV3Small, keras.applications.MobileNetV2):
        model = build(input_shape=(32, 32, 3), weights=None, classes=10, alpha=0.35 if build is
                      keras.applications.MobileNetV2 else 0.75)
        config = json.loads(json.dumps({"class_name": "Functional", "config": model.get_config()}, default=str))
        assert model_files.untrusted_entries(config) == []
        assert any(layer["class_name"] == "TFOpLambda" for layer in config["config"]["layers"]) or \
            build is keras.applications.MobileNetV2


@pytest.mark.parametrize("case, error, match", [
    ("missing", ModelFileError, "does not exist"),
    ("weights-only", ModelFileError, "no model configuration"),
    ("not-zip", ModelFileError, "not a readable .keras"),
    ("plain-folder", ModelFileError, "not a tf_keras SavedModel"),
    ("custom-class", UntrustedModelError, "the class 'MyLayer'"),
])
def test_bad_files_get_one_line(case, error, match, tmp_path):
    path = tmp_path / "m.h5"
    if case == "weights-only":
        kq.zoo.cnn_small().save_weights(path)
    elif case == "not-zip":
        path = tmp_path / "m.keras"
        path.write_text("not a zip")
    elif case == "plain-folder":
        path = tmp_path / "folder"
        path.mkdir()
    elif case == "custom-class":
        class MyLayer(keras.layers.Layer):
            def call(self, t):
                return t

        inputs = keras.Input((4,))
        keras.Model(inputs, MyLayer()(inputs)).save(path)
    with pytest.raises(error, match=match) as raised:
        model_files.load_model(path)
    assert "\n" not in str(raised.value)
    if path.is_dir():
        shutil.rmtree(path)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_a_custom_loss_blocks_only_a_compiled_load(suffix, tmp_path):
    def my_loss(y_true, y_pred):  # the user's own function: its code is not in the file's allow-list
        return keras.losses.mean_squared_error(y_true, y_pred)

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="adam", loss=my_loss)
    path = tmp_path / f"m{suffix}"
    model.save(path)
    assert model_files.load_model(path).output_shape == (None, 2)  # uncompiled: the loss is never loaded
    if suffix == ".keras":  # .h5 keeps its training config outside model_config
        with pytest.raises(UntrustedModelError, match="my_loss"):
            model_files.load_model(path, compile=True)

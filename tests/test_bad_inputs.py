"""Bad input, across the CLI and the API, in one table: each answered by one line that names
the problem and the fix (CLI: exit 2), before any work, leaving no file behind."""

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust import cli

# ---------------------------------------------------------------- CLI: (argv, expected fragment)
# {model}, {data}, {tmp}: the tiny case's model and .npz, and the test's empty folder
CLI_CASES = {
    "guard eps 0": (["guard", "--model", "{model}", "--dataset", "{data}", "--eps", "0", "--out", "{tmp}/o"],
                    "give an L∞ budget in (0, 1]"),
    "guard seed negative": (["guard", "--dataset", "{data}", "--seed", "-1", "--out", "{tmp}/o"],
                            "give an integer in [0, 2**32)"),
    "guard test-samples 0": (["guard", "--model", "{model}", "--dataset", "{data}", "--test-samples", "0",
                              "--out", "{tmp}/o"], "--test-samples must be >= 1"),
    "guard unknown autoattack": (["guard", "--dataset", "{data}", "--autoattack", "slow", "--out", "{tmp}/o"],
                                 "choose one of standard, fast"),
    "guard candidates 9 bits": (["guard", "--dataset", "{data}", "--candidates", "w9a9", "--out", "{tmp}/o"],
                                "use settings from w8a8 down to w1a1"),
    "guard candidates twice": (["guard", "--dataset", "{data}", "--candidates", "w4a4,w4a4", "--out", "{tmp}/o"],
                               "list each once"),
    "guard akida 3-bit weights": (["guard", "--dataset", "{data}", "--target", "akida", "--candidates", "w3a3",
                                   "--out", "{tmp}/o"], "not a sub-grid of Akida"),
    "guard out is a file": (["guard", "--model", "{model}", "--dataset", "{data}", "--out", "{data}"],
                            "pass a folder"),
    "guard dataset missing": (["guard", "--dataset", "{tmp}/none.npz", "--out", "{tmp}/o"], "pass an .npz file"),
    "guard unknown dataset": (["guard", "--dataset", "no_such_dataset", "--out", "{tmp}/o"], "Local datasets"),
    "attack unknown attack": (["attack", "--model", "{model}", "--dataset", "{data}", "--attack", "nope"],
                              "choose one of"),
    "attack eps > 1": (["attack", "--model", "{model}", "--dataset", "{data}", "--eps", "1.5"], "(0, 1]"),
    "attack eps not a number": (["attack", "--model", "{model}", "--dataset", "{data}", "--eps", "x"],
                                "expected comma-separated numbers"),
    "attack json suffix": (["attack", "--model", "{model}", "--dataset", "{data}", "--json", "{tmp}/r.txt"],
                           "needs a .json file name"),
    "attack model missing": (["attack", "--model", "{tmp}/none.keras", "--dataset", "{data}"],
                             "pass the path of a saved tf_keras model"),
    "attack seed too large": (["attack", "--model", "{model}", "--dataset", "{data}", "--seed", str(2**32)],
                              "give an integer in [0, 2**32)"),
    "attack test-samples negative": (["attack", "--model", "{model}", "--dataset", "{data}", "--test-samples",
                                      "-60"], "--test-samples must be >= 1"),
    "evaluate eps descending": (["evaluate", "--model", "{model}", "--dataset", "{data}", "--eps", "0.1,0",
                                 "--out", "{tmp}/o"], "must be ascending"),
    "evaluate empty attacks": (["evaluate", "--model", "{model}", "--dataset", "{data}", "--attacks", ",",
                                "--out", "{tmp}/o"], "choose from"),
    "evaluate shard size 0": (["evaluate", "--model", "{model}", "--dataset", "{data}", "--shard-size", "0",
                               "--out", "{tmp}/o"], "--shard-size must be >= 1"),
    "evaluate same model name": (["evaluate", "--model", "{model}", "--model", "{model}", "--dataset", "{data}",
                                  "--out", "{tmp}/o"], "rename or copy one"),
    "export unknown target": (["export", "--model", "{model}", "--dataset", "{data}", "--target", "tpu",
                               "--output", "{tmp}/m.tflite"], "choose one of tflite-int8, onnx, akida"),
    "export output is a folder": (["export", "--model", "{model}", "--dataset", "{data}", "--target", "onnx",
                                   "--output", "{tmp}"], "needs a .onnx file name"),
    "export representative 0": (["export", "--model", "{model}", "--dataset", "{data}", "--target", "onnx",
                                 "--output", "{tmp}/m.onnx", "--representative-samples", "0"],
                                "--representative-samples must be >= 1"),
    "quantize unknown setting": (["quantize", "--settings", "w4x4"], "write it as wXaY"),
    "quantize epochs 0": (["quantize", "--epochs", "0"], "--epochs must be >= 1"),
    "quantize model and zoo": (["quantize", "--model", "{model}", "--zoo", "ds_cnn"], "not allowed with"),
    "report missing": (["report", "{tmp}/none.json"], "pass the report.json a guard or evaluate run wrote"),
    "report not a report": (["report", "{data}"], "is not a keras_qrobust report.json"),
    "unknown subcommand": (["frobnicate"], "invalid choice"),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_bad_input(case, tiny_case, tmp_path, capsys):
    model, data = tiny_case
    argv, fragment = CLI_CASES[case]
    args = [a.format(model=model, data=data, tmp=tmp_path) for a in argv]
    assert cli.main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert fragment in err[0], err[0]
    assert not any(tmp_path.iterdir()), "a bad input left a file behind"


# ---------------------------------------------------------------- API: (call, error type, fragment)
def _api_cases():
    model = kq.zoo.cnn_small(dropout=0.0)
    x = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    y = np.arange(8) % 10
    return {
        "quantize without samples": (lambda: kq.RobustQuantizer(4, 4).quantize(model), ValueError,
                                     "samples=x_train[:1024]"),
        "quantize wrong shape": (lambda: kq.RobustQuantizer(4, 4).quantize(model, x[:, :10]), ValueError,
                                 "expects (N, 28, 28, 1)"),
        "quantize NaN samples": (lambda: kq.RobustQuantizer(4, 4).quantize(model, np.full_like(x, np.nan)),
                                 ValueError, "drop or repair those inputs"),
        "quantize 0 bits": (lambda: kq.RobustQuantizer(0, 4), ValueError, "must be in [1, 16]"),
        "setting typo": (lambda: kq.parse_setting("w4x4"), ValueError, "write it as wXaY"),
        "pgd negative eps": (lambda: kq.attacks.pgd(model, x, y, eps=-0.1), ValueError, ">= 0"),
        "pgd 0..255 images": (lambda: kq.attacks.pgd(model, 255 * x, y, eps=0.1), ValueError, "scale the inputs"),
        "pgd labels out of range": (lambda: kq.attacks.pgd(model, x, y + 20, eps=0.1), ValueError, "in [0, 10)"),
        "pgd 0 steps": (lambda: kq.attacks.pgd(model, x, y, eps=0.1, steps=0), ValueError, "integer >= 1"),
        "autoattack unknown version": (lambda: kq.attacks.autoattack(model, x, y, eps=0.1, version="slow"),
                                       ValueError, "must be one of ['fast', 'standard']"),
        "autoattack unknown norm": (lambda: kq.attacks.autoattack(model, x, y, eps=0.1, norm="l3"), ValueError,
                                    "'inf' or 2"),
        "square 0 queries": (lambda: kq.attacks.square(model, x, y, eps=0.1, queries=0), ValueError,
                             "integer >= 2"),
        "evaluate unknown attack": (lambda: kq.evaluate({"m": model}, (x, y), attacks=["nope"], eps=[0.0, 0.1]),
                                    ValueError, "choose one of"),
        "evaluate descending eps": (lambda: kq.evaluate({"m": model}, (x, y), attacks=["fgsm"], eps=[0.1, 0.0]),
                                    ValueError, "ascending values in [0, 1]"),
        "accuracy NaN labels": (lambda: kq.metrics.accuracy(model, x, np.where(y > 4, np.nan, y)), ValueError,
                                "drop those inputs or fix the labels"),
        "accuracy labels out of range": (lambda: kq.metrics.accuracy(model, x, y + 10), ValueError,
                                         "pass the labels of the data the model was trained for"),
        "accuracy fractional labels": (lambda: kq.metrics.accuracy(model, x, y + 0.5), ValueError,
                                       "pass integer class indices"),
        "accuracy one-hot labels": (lambda: kq.metrics.accuracy(model, x, np.eye(10)[y]), ValueError,
                                    "pass y.argmax(-1)"),
        "accuracy NaN inputs": (lambda: kq.metrics.accuracy(model, np.full_like(x, np.nan), y), ValueError,
                                "clean the inputs"),
        "tflite wrong suffix": (lambda: kq.export.tflite(model, "m.onnx", representative=x), ValueError,
                                "needs a .tflite file name"),
        "onnx NaN representative": (lambda: kq.export.onnx(model, "m.onnx", representative=np.full_like(x, np.nan)),
                                    ValueError, "pass finite model inputs"),
        "load_model missing file": (lambda: kq.load_model("no_such_model.keras"), ValueError,
                                    "pass the path of a saved tf_keras model"),
        "runtime missing file": (lambda: kq.export.load("no_such_model.tflite"), FileNotFoundError,
                                 "export it first"),
        "unknown dataset": (lambda: kq.datasets.load("no_such_dataset", "train"), kq.datasets.DatasetError,
                            "offline, copy a prepared TFDS folder"),
        "unknown split": (lambda: kq.datasets.load("fashion_mnist", "dev"), ValueError,
                          "'train', 'test', 'fit' or 'validation'"),
        "unknown zoo model": (lambda: kq.zoo.get("resnet1000"), ValueError, "choose one of"),
        "not a tf_keras model": (lambda: kq.RobustQuantizer(4, 4).quantize(object(), x), TypeError,
                                 "Build it with `keras_qrobust.keras`"),
    }


API_CASES = sorted(_api_cases())


@pytest.mark.parametrize("case", API_CASES)
def test_api_bad_input(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    call, error, fragment = _api_cases()[case]
    with pytest.raises(error) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message and fragment in message, message
    assert not any(tmp_path.iterdir()), "a bad input left a file behind"


def test_the_table_covers_at_least_40_bad_inputs():
    assert len(CLI_CASES) + len(API_CASES) >= 40

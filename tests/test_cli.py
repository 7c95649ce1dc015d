import json
import os
import subprocess
import sys

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust import cli

SUBCOMMANDS = ("guard", "quantize", "attack", "evaluate", "export", "report")


def test_quantize_command_prints_the_accuracy_table(tmp_path, capsys):
    out_json = tmp_path / "r.json"
    code = cli.main(["quantize", "--epochs", "1", "--train-samples", "600", "--test-samples", "200",
                     "--settings", "w8a8,w3", "--calibration-samples", "128", "--json", str(out_json),
                     "--save-dir", str(tmp_path / "models")])
    assert code == 0
    table = capsys.readouterr().out
    assert "| fp32" in table and "| w8a8" in table and "| w3 " in table
    results = json.loads(out_json.read_text())["results"]
    assert [r["setting"] for r in results] == ["fp32", "w8a8", "w3"]
    assert abs(results[1]["accuracy"] - results[0]["accuracy"]) <= 0.02
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "cnn_small.keras", "cnn_small_w3.keras", "cnn_small_w8a8.keras"]
    # a second run refuses to overwrite the saved models
    code = cli.main(["quantize", "--epochs", "1", "--train-samples", "200", "--test-samples", "50",
                     "--settings", "w8a8", "--save-dir", str(tmp_path / "models")])
    assert code == 2
    assert "exists; pass --overwrite to replace it" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--settings", "w4x4"], "Cannot parse quantization setting 'w4x4'"),
    (["--epochs", "0"], "--epochs must be >= 1"),
])
def test_bad_quantize_arguments(args, message, capsys):
    assert cli.main(["quantize", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_of_every_subcommand(command, capsys):
    assert cli.main([command, "--help"]) == 0
    assert f"usage: keras-qrobust {command}" in capsys.readouterr().out


def test_help_of_the_program_lists_every_subcommand(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(command in out for command in SUBCOMMANDS)


# ----------------------------------------------------------------------------- guard: bad input
@pytest.fixture(scope="module")
def keras3_model(tmp_path_factory):
    """A .keras file saved by Keras 3 (plain ``import keras``, no TF_USE_LEGACY_KERAS)."""
    path = tmp_path_factory.mktemp("keras3") / "k3.keras"
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    code = ("import keras; m = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), "
            f"keras.layers.Dense(10)]); m.save({str(path)!r})")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, timeout=300)
    return path


def _npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.uniform(0, 1, (20, 28, 28, 1)).astype(np.float32), "y_train": rng.integers(0, 10, 20),
              "x_test": rng.uniform(0, 1, (10, 28, 28, 1)).astype(np.float32), "y_test": rng.integers(0, 10, 10)}
    arrays.update(overrides)
    np.savez(path, **arrays)
    return path


def _bad_inputs(tmp_path, model, data, keras3):
    rng = np.random.default_rng(1)
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(b"PK\x03\x04 this is not a zip archive")
    small = rng.uniform(0, 1, (10, 8, 8, 1)).astype(np.float32)
    return {
        "missing model": (["--model", str(tmp_path / "nope.keras")], "does not exist"),
        "corrupt model": (["--model", str(corrupt)], "not a readable .keras file"),
        "keras 3 model": (["--model", str(keras3)], "is a Keras 3 model file"),
        "input shape": (["--dataset", str(_npz(tmp_path / "shape.npz", x_train=small[:10].repeat(2, 0),
                                               x_test=small))], "takes inputs of shape (28, 28, 1)"),
        "labels out of range": (["--dataset", str(_npz(tmp_path / "labels.npz", y_test=np.full(10, 12)))],
                                "labels up to 12 but --model scores 10 classes"),
        "negative label": (["--dataset", str(_npz(tmp_path / "negative.npz", y_train=np.full(20, -1)))],
                           "negative label"),
        "x/y length": (["--dataset", str(_npz(tmp_path / "length.npz", y_train=np.zeros(19, np.int64)))],
                       "x_train has 20 inputs but y_train has 19 labels"),
        "not [0, 1]": (["--dataset", str(_npz(tmp_path / "range.npz", x_test=np.full((10, 28, 28, 1), 255.0)))],
                       "scale them"),
        "eps 0": (["--eps", "0"], "--eps 0 is out of range"),
        "eps > 1": (["--eps", "1.5"], "--eps 1.5 is out of range"),
        "target": (["--target", "tpu"], "unknown --target 'tpu'"),
        "candidates": (["--candidates", "w4x4"], "Cannot parse quantization setting"),
        "floor": (["--floor", "1.2"], "--floor 1.2 is out of range"),
        "no-train without a model": (["--model", "", "--no-train"], "--no-train needs --model"),
        "sigmoid head": (["--model", str(_saved(tmp_path / "sigmoid.keras", 1, "sigmoid"))],
                         "ends in 1 unit(s) with activation sigmoid (a binary or multi-label head)"),
        "untrained model": (["--model", str(_saved(tmp_path / "untrained.keras", 10, None))],
                            "is near chance on --dataset data.npz"),
        "lambda layer": (["--model", str(_saved(tmp_path / "lambda.h5", 10, None, lambda_layer=True))],
                         "a Lambda layer"),
        "unsupported layer": (["--model", str(_unsupported(tmp_path / "lstm.keras"))],
                              "RobustQuantizer cannot quantize layer"),
    }


def _unsupported(path):
    keras = kq.keras
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.LSTM(4)(keras.layers.Reshape((28, 28))(inputs))
    keras.Model(inputs, keras.layers.Dense(10)(x)).save(path)
    return path


def _saved(path, units, activation, lambda_layer=False):
    keras = kq.keras
    kq.defenses.set_seed(0)
    inputs = keras.Input((28, 28, 1))
    flat = keras.layers.Flatten()(keras.layers.Lambda(lambda t: t)(inputs) if lambda_layer else inputs)
    keras.Model(inputs, keras.layers.Dense(units, activation=activation, kernel_initializer="zeros")(flat)).save(path)
    return path


BAD_INPUTS = ("missing model", "corrupt model", "keras 3 model", "input shape", "labels out of range",
              "negative label", "x/y length", "not [0, 1]", "eps 0", "eps > 1", "target", "candidates", "floor",
              "no-train without a model", "sigmoid head", "untrained model", "lambda layer",
              "unsupported layer")


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_guard_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, tiny_case, keras3_model, capsys):
    model, data = tiny_case
    args, message = _bad_inputs(tmp_path, model, data, keras3_model)[case]
    out = tmp_path / "out"
    base = ["guard", "--model", str(model), "--dataset", str(data), "--out", str(out)]
    if args[:2] == ["--model", ""]:
        base, args = ["guard", "--dataset", str(data), "--out", str(out)], args[2:]
    assert cli.main([*base, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert message in err
    assert not out.exists()


def test_guard_refuses_an_output_folder_with_other_files(tmp_path, tiny_case, capsys):
    model, data = tiny_case
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert cli.main(["guard", "--model", str(model), "--dataset", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already holds other files (notes.txt)" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_a_usage_error_is_one_line(capsys):
    assert cli.main(["guard", "--eps", "abc"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "invalid float value: 'abc'" in err


# ----------------------------------------------------------------------------- the other subcommands
def test_attack_prints_clean_and_attacked_accuracy(tiny_case, tmp_path, capsys):
    model, data = tiny_case
    out = tmp_path / "attack.json"
    assert cli.main(["attack", "--model", str(model), "--dataset", str(data), "--attack", "fgsm", "--eps", "0.05,0.2",
                     "--json", str(out)]) == 0
    assert "| fgsm" in capsys.readouterr().out
    results = json.loads(out.read_text())["results"]
    assert [r["eps"] for r in results] == [0.05, 0.2]
    assert results[0]["clean"] > 0.3 and results[1]["attacked"] < results[0]["clean"]


def test_evaluate_then_report_rerenders_the_same_markdown(tiny_case, tmp_path, capsys):
    model, data = tiny_case
    out = tmp_path / "eval"
    assert cli.main(["evaluate", "--model", str(model), "--dataset", str(data), "--attacks", "fgsm,uniform",
                     "--eps", "0,0.1", "--out", str(out)]) == 0
    assert {"report.html", "report.md", "report.json", "plots"} <= {p.name for p in out.iterdir()}
    assert list((out / "plots").glob("*.png"))
    capsys.readouterr()
    copy = tmp_path / "copy"
    assert cli.main(["report", str(out / "report.json"), "--out", str(copy)]) == 0
    assert capsys.readouterr().out.strip() == (out / "report.md").read_text().strip()
    assert (copy / "report.md").read_text() == (out / "report.md").read_text()
    # the evaluate folder is not overwritten, and a broken report.json is bad input
    assert cli.main(["evaluate", "--model", str(model), "--dataset", str(data), "--out", str(out)]) == 2
    (tmp_path / "bad.json").write_text('{"schema_version": "1.0"}')
    assert cli.main(["report", str(tmp_path / "bad.json")]) == 2
    assert "missing required key" in capsys.readouterr().err


def test_export_writes_the_file_and_remeasures_it(tiny_case, tmp_path, capsys):
    model, data = tiny_case
    out = tmp_path / "tiny.tflite"
    assert cli.main(["export", "--model", str(model), "--target", "tflite-int8", "--output", str(out),
                     "--dataset", str(data), "--representative-samples", "64"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "tflite runtime" in printed and "top-1 agreement" in printed
    agreement = float(printed.rsplit("agreement ", 1)[1].rstrip("%\n"))
    assert agreement >= 90.0
    assert cli.main(["export", "--model", str(model), "--target", "onnx", "--output", str(tmp_path / "x.tflite"),
                     "--dataset", str(data)]) == 2
    assert "needs a .onnx file name" in capsys.readouterr().err


def test_force_goes_on_with_a_model_near_chance(tiny_case, tmp_path, capsys):
    _, data = tiny_case
    model = _saved(tmp_path / "untrained.keras", 10, None)
    args = ["attack", "--model", str(model), "--dataset", str(data), "--attack", "fgsm", "--test-samples", "20"]
    assert cli.main(args) == 2
    assert "pass --force to go on" in capsys.readouterr().err
    assert cli.main([*args, "--force"]) == 0
    assert "warning: --model is near chance" in capsys.readouterr().err


@pytest.mark.parametrize("command, message", [
    (["attack", "--test-samples", "-60"], "--test-samples must be >= 1, got -60"),
    (["export", "--target", "onnx", "--output", "{tmp}/m.onnx", "--representative-samples", "0"],
     "--representative-samples must be >= 1, got 0"),
    (["evaluate", "--model", "{model}", "--out", "{tmp}/report"], "two --model files are named tiny"),
])
def test_subcommand_bad_counts_and_names_are_one_line(command, message, tiny_case, tmp_path, capsys):
    model, data = tiny_case
    args = [part.format(tmp=tmp_path, model=model) for part in command]
    assert cli.main([args[0], "--model", str(model), "--dataset", str(data), *args[1:]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not any(tmp_path.iterdir())


_OUTPUTS = {  # subcommand -> (arguments with {out}, what --out is)
    "quantize": (["quantize", "--epochs", "1", "--json", "{out}"], "file"),
    "attack": (["attack", "--model", "{model}", "--dataset", "{data}", "--json", "{out}"], "file"),
    "evaluate": (["evaluate", "--model", "{model}", "--dataset", "{data}", "--out", "{out}"], "folder"),
    "export": (["export", "--model", "{model}", "--dataset", "{data}", "--target", "onnx", "--output", "{out}"],
               "file"),
    "report": (["report", "{report}", "--out", "{out}"], "folder"),
}


@pytest.mark.parametrize("command", sorted(_OUTPUTS))
@pytest.mark.parametrize("case", ["exists", "unwritable"])
def test_every_subcommand_checks_its_output_before_any_work(command, case, tiny_case, tmp_path, capsys):
    model, data = tiny_case
    template, kind = _OUTPUTS[command]
    suffix = ".onnx" if command == "export" else ".json" if kind == "file" else ""
    report = tmp_path / "given.json"
    report.write_text("{}")
    if case == "exists":
        out = tmp_path / f"mine{suffix}"
        if kind == "folder":
            out.mkdir()
            (out / "report.html").write_text("mine")
        else:
            out.write_text("mine")
        expected = "pass --overwrite"
    else:
        blocker = tmp_path / "a_file"
        blocker.write_text("x")
        out = blocker / f"inside{suffix}"  # a path under a file cannot be written
        expected = "cannot write in"
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    args = [a.format(model=model, data=data, out=out, report=report) for a in template]
    if command == "report":  # a valid report.json to re-render
        from keras_qrobust.report import RobustnessReport

        RobustnessReport.build(accuracy={"m": {"pgd": [0.9, 0.5]}}, eps=[0.0, 0.1], attacks=["pgd"],
                               provenance={"attacks": {}, "eps": [0.0, 0.1], "samples": 1, "seed": 0}).save(
            tmp_path / "r", overwrite=False)
        args[1] = str(tmp_path / "r" / "report.json")
        before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_the_terminal_shows_no_native_log_lines(tiny_case, tmp_path):
    """TFLite conversion and LiteRT print to file descriptor 2 directly (absl W/I lines,
    "fully_quantize: ...", "INFO: Created TensorFlow Lite XNNPACK delegate"): hidden unless
    --verbose."""
    model, data = tiny_case
    command = [sys.executable, "-m", "keras_qrobust.cli", "export", "--model", str(model), "--dataset", str(data),
               "--target", "tflite-int8", "--representative-samples", "32"]
    quiet = subprocess.run([*command, "--output", str(tmp_path / "a.tflite")], capture_output=True, text=True,
                           timeout=600)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stderr == "" and "top-1 agreement" in quiet.stdout
    verbose = subprocess.run([*command, "--output", str(tmp_path / "b.tflite"), "--verbose"], capture_output=True,
                             text=True, timeout=600)
    assert verbose.returncode == 0 and "XNNPACK" in verbose.stderr  # the lines exist; quiet hid them

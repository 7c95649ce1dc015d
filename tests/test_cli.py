import json

import pytest

from keras_qrobust import cli


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
    assert "exists; pass overwrite=True" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--settings", "w4x4"], "Cannot parse quantization setting 'w4x4'"),
    (["--epochs", "0"], "--epochs must be >= 1"),
])
def test_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as error:
        cli.main(["quantize", *args])
    assert message in str(error.value)

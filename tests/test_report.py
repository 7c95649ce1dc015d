"""kq.evaluate and the RobustnessReport (JSON schema, Markdown, HTML with every plot)."""

import json
import re

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust.attacks import TransferMatrix
from keras_qrobust.report import RobustnessReport, validate


@pytest.fixture(scope="module")
def report(fashion_slice, trained_cnn):
    (x_train, _), (x, y) = fashion_slice
    models = {"cnn fp32": trained_cnn}
    for setting in ("w8a8", "w4a4", "w2a2"):
        models[f"cnn {setting}"] = kq.RobustQuantizer.from_setting(setting).quantize(trained_cnn, x_train[:256])
    names = list(models)
    matrix = TransferMatrix(names=names, accuracy=np.full((4, 4), 0.5), clean_accuracy=np.full(4, 0.8),
                            fooling_rate=np.full((4, 4), 0.3), perturbations={}, eps=0.1, method="uap")
    return kq.evaluate(models, (x[:200], y[:200]), attacks=["fgsm", "gaussian"], eps=[0.0, 0.05, 0.1, 0.2],
                       lipschitz_bits=4, transfer_matrix=matrix, verbose=0)


def test_grid_has_clean_accuracy_at_zero_and_falls_with_eps(report, trained_cnn, fashion_slice):
    _, (x, y) = fashion_slice
    fgsm = report.accuracy["cnn fp32"]["fgsm"]
    assert fgsm[0] == pytest.approx(kq.metrics.accuracy(trained_cnn, x[:200], y[:200]))
    assert fgsm[0] > fgsm[1] > fgsm[3]
    assert report.bits == {"cnn w8a8": 8, "cnn w4a4": 4, "cnn w2a2": 2}
    assert report.critical is not None and report.critical["eps"] in report.eps


def test_json_follows_the_versioned_schema(report):
    data = json.loads(report.to_json())
    validate(data)
    assert data["schema_version"] == "1.0" and data["provenance"]["samples"] == 200
    assert "PGD" not in data["provenance"]["attacks"]["fgsm"] and data["provenance"]["seed"] == 0
    broken = dict(data, accuracy={"m": {"fgsm": ["high"]}})
    with pytest.raises(ValueError, match=r"\$\.accuracy\.m\.fgsm\[0\]"):
        validate(broken)
    with pytest.raises(ValueError, match="missing required key 'eps'"):
        validate({k: v for k, v in data.items() if k != "eps"})


@pytest.mark.parametrize("data", [
    {"eps": [0.0, 0.05], "accuracy": {"m": {"fgsm": [0.9, 0.5]}}, "rows": [{"a": [1, "x", None, True]}, []],
     "empty": {}, "text": "ε ≥ 0"},
    [[1, 2], {"k": []}],
    [0.1, 0.2],
])
def test_results_json_keeps_every_value_and_lists_of_scalars_on_one_line(data):
    from keras_qrobust._io import dumps_json

    text = dumps_json(data)
    assert json.loads(text) == data
    lines = text.splitlines()
    # a list of scalars is one line; the structure around it is indented as json.dumps(indent=2)
    assert not any(line.strip() in ("0.05", "0.5", '"x",', "0.2") for line in lines)
    assert len(lines) < len(json.dumps(data, indent=2).splitlines())


def test_html_is_self_contained_and_holds_every_plot(report, tmp_path):
    paths = report.save(tmp_path)
    page = paths["html"].read_text()
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    titles = [title for title, _ in images]
    assert titles == ["Accuracy vs ε (Zhou 2022, Fig. 6-10)", "Accuracy vs weight bits (Gorsline 2021, Fig. 3)",
                      "Relative accuracy vs the lower bound (Gorsline 2021, Fig. 4/7)",
                      "Lipschitz constant of the quantization error (Song 2020, Fig. 3-4)", "UAP transfer matrix"]
    import base64
    for _, data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http" not in page.replace("https://json-schema.org", "")  # nothing fetched from elsewhere
    assert "<table>" in page and "Accuracy must fall as ε grows" in page
    assert "| cnn w4a4 |" in paths["md"].read_text()
    with pytest.raises(FileExistsError):
        report.save(tmp_path)


def test_rising_accuracy_is_flagged_as_suspect():
    report = RobustnessReport.build(accuracy={"m": {"pgd": [0.9, 0.5, 0.7]}}, eps=[0.0, 0.1, 0.2], attacks=["pgd"],
                                    provenance={"attacks": {"pgd": "PGD-20"}, "eps": [0.0, 0.1, 0.2],
                                                "samples": 10, "seed": 0})
    assert report.suspect and "m / pgd" in report.suspect[0]
    assert "accuracy rises with ε" in report.to_markdown()


def test_evaluate_rejects_bad_input(trained_cnn, fashion_slice):
    _, (x, y) = fashion_slice
    with pytest.raises(ValueError, match="attacks"):
        kq.evaluate(trained_cnn, (x, y), attacks=["cw"], verbose=0)
    with pytest.raises(ValueError, match="ascending"):
        kq.evaluate(trained_cnn, (x, y), eps=[0.1, 0.0], verbose=0)
    with pytest.raises(ValueError, match="labels"):
        kq.evaluate(trained_cnn, (x, y[:5]), verbose=0)
    with pytest.raises(ValueError, match="empty"):
        kq.evaluate({}, (x, y), verbose=0)


def test_a_long_eps_sweep_keeps_the_bits_legend_short_and_names_the_critical_strength():
    from keras_qrobust.report.figures import _legend_indices

    assert _legend_indices(5) == {0, 1, 2, 3, 4}
    labelled = _legend_indices(101, keep=[55])
    assert {0, 100, 55} <= labelled and len(labelled) <= 13
    eps = [round(0.005 * i, 3) for i in range(101)]
    accuracy = {f"m w{b}": {"fgsm": [max(0.0, 0.9 - b * e) for e in eps]} for b in (1, 4, 8)}
    report = RobustnessReport.build(accuracy=accuracy, eps=eps, attacks=["fgsm"],
                                    provenance={"attacks": {"fgsm": "FGSM"}, "eps": eps, "samples": 10, "seed": 0},
                                    bits={"m w1": 1, "m w4": 4, "m w8": 8})
    assert "Accuracy vs weight bits (Gorsline 2021, Fig. 3)" in report.figures()


@pytest.mark.parametrize("w4, shown", [([0.9, 0.2, 0.1], "not reported"), ([0.6, 0.5, 0.1], "ε* = 0.05")])
def test_a_degenerate_critical_strength_is_omitted_with_its_reason(w4, shown):
    accuracy = {"w8a8": {"fgsm": [0.9, 0.5, 0.1]}, "w4a4": {"fgsm": w4}}
    report = RobustnessReport.build(accuracy=accuracy, eps=[0.0, 0.05, 0.1], attacks=["fgsm"], bits={"w8a8": 8,
                                    "w4a4": 4}, provenance={"attacks": {}, "eps": [0.0, 0.05, 0.1], "samples": 10,
                                                            "seed": 0})
    markdown = report.to_markdown()
    assert shown in markdown
    assert ("ε* = 0\n" in markdown) is False


def test_lead_sections_open_the_report_and_render_inline_markup():
    report = RobustnessReport.build(accuracy={"m": {"pgd": [0.9, 0.5]}}, eps=[0.0, 0.1], attacks=["pgd"],
                                    provenance={"attacks": {}, "eps": [0.0, 0.1], "samples": 1, "seed": 0},
                                    sections=[{"title": "Detail", "markdown": "later"},
                                              {"title": "Decision", "markdown": "**Chosen: m** `m.tflite`",
                                               "lead": True}],
                                    tradeoff=[{"name": "m", "bytes": 10, "robust": 0.5, "low": 0.4, "high": 0.6,
                                               "chosen": True}])
    markdown = report.to_markdown()
    assert markdown.index("## Decision") < markdown.index("1 inputs, seed 0") < markdown.index("## Detail")
    html = report.to_html()
    assert html.index("<strong>Chosen: m</strong> <code>m.tflite</code>") < html.index("<h2>Plots</h2>")
    assert list(report.figures())[0] == "Size vs robust accuracy"
    assert RobustnessReport.from_dict(json.loads(report.to_json())).tradeoff == report.tradeoff


def test_tradeoff_plot_takes_points_at_0_and_100_percent():
    # Wilson bounds at 0 of 40 and 40 of 40 lie a rounding error inside the point (6.9e-18 above 0)
    points = []
    for name, (robust, n) in {"broken": (0, 40), "perfect": (40, 40)}.items():
        low, high = kq.metrics.wilson_interval(robust, n)
        points.append({"name": name, "bytes": 10, "robust": robust / n, "low": low, "high": high})
    report = RobustnessReport.build(accuracy={"m": {"pgd": [0.9, 0.5]}}, eps=[0.0, 0.1], attacks=["pgd"],
                                    provenance={"attacks": {}, "eps": [0.0, 0.1], "samples": 1, "seed": 0},
                                    tradeoff=points)
    assert "Size vs robust accuracy" in report.figures()

"""The HTML reports of a ``guard`` run (the main job's output) and of an ``evaluate`` run
render in headless Chromium: a non-blank screenshot, and every plot an image the browser
decoded (not a broken link)."""

import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust import cli

# on window load, write each <img>'s decoded size into a <pre> that --dump-dom prints
PROBE = ("<script>window.addEventListener('load', function () {"
         "var sizes = Array.prototype.map.call(document.images, function (i) {"
         "return [i.complete, i.naturalWidth, i.naturalHeight]; });"
         "var out = document.createElement('pre'); out.id = 'kq-image-sizes';"
         "out.textContent = JSON.stringify(sizes); document.body.appendChild(out); });</script>")


def chromium() -> str:
    candidates = [os.environ.get("KQ_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                  shutil.which("chromium-browser")]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    message = "no Chromium executable (set KQ_CHROMIUM or install chromium)"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must have it (run.sh installs it)")
    pytest.skip(message)


def run_chromium(executable: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]
    return subprocess.run([executable, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def evaluate_report(tiny_case, tmp_path_factory):
    """An evaluate run over the tiny model at w8a8 and w4a4 (so the bits plots are drawn)."""
    model_path, data_path = tiny_case
    folder = tmp_path_factory.mktemp("render")
    model = kq.keras.models.load_model(model_path, compile=False)
    samples = np.load(data_path)["x_train"][:128]
    paths = []
    for setting in ("w8a8", "w4a4"):
        path = folder / f"{setting}.keras"
        kq.RobustQuantizer.from_setting(setting).quantize(model, samples).save(path)
        paths += ["--model", str(path)]
    out = folder / "report"
    assert cli.main(["evaluate", *paths, "--dataset", str(data_path), "--attacks", "fgsm,uap", "--eps", "0,0.05,0.1",
                     "--test-samples", "60", "--out", str(out)]) == 0
    return out


@pytest.fixture(params=["guard", "evaluate"])
def report_folder(request):
    """The output folder of a finished guard run, or of an evaluate run."""
    if request.param == "guard":
        return request.getfixturevalue("guard_runs")["straight"]
    return request.getfixturevalue("evaluate_report")


def test_the_report_screenshot_is_not_blank(report_folder, tmp_path):
    from PIL import Image

    executable = chromium()
    shot = tmp_path / "shot.png"
    result = run_chromium(executable, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1200,1600",
                          "--hide-scrollbars", (report_folder / "report.html").as_uri())
    assert shot.is_file(), result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("L"), dtype=np.float32)
    assert pixels.shape == (1600, 1200)
    assert pixels.std() > 5.0 and (pixels < 128).mean() > 0.005  # text and plots, not one flat colour


def test_every_plot_decodes_in_the_browser(report_folder, tmp_path):
    executable = chromium()
    html = (report_folder / "report.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    result = run_chromium(executable, tmp_path / "profile", "--dump-dom", "--virtual-time-budget=5000",
                          probed.as_uri())
    found = re.search(r'<pre id="kq-image-sizes">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the probe did not run: {result.stdout[-500:]} {result.stderr[-1500:]}"
    sizes = json.loads(found.group(1))
    plots = sorted((report_folder / "plots").glob("*.png"))
    assert len(sizes) == html.count("<img ") == len(plots) >= 3
    for complete, width, height in sizes:
        assert complete and width > 100 and height > 100


FOLD_PROBE = """<script>
const box = document.getElementById('decision').getBoundingClientRect();
const pre = document.createElement('pre'); pre.id = 'kq-fold';
pre.textContent = JSON.stringify([box.top, box.bottom, window.innerHeight, box.height]);
document.body.appendChild(pre);
</script>"""


def test_the_guard_report_opens_with_the_decision_above_the_fold(guard_runs, tmp_path):
    """At a laptop's 1280x800 window the decision block (chosen setting, its table against float
    and the other candidates) is on the first screen, and the screenshot shows it there."""
    from PIL import Image

    executable = chromium()
    html = (guard_runs["straight"] / "report.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", FOLD_PROBE + "</body>"))
    result = run_chromium(executable, tmp_path / "profile", "--dump-dom", "--window-size=1280,800", probed.as_uri())
    found = re.search(r'<pre id="kq-fold">(.*?)</pre>', result.stdout, re.S)
    assert found, f"the probe did not run: {result.stderr[-1500:]}"
    top, bottom, height, box_height = json.loads(found.group(1))
    assert 0 <= top < bottom <= height and box_height > 100
    shot = tmp_path / "shot.png"
    run_chromium(executable, tmp_path / "profile2", f"--screenshot={shot}", "--window-size=1280,800",
                 "--hide-scrollbars", (guard_runs["straight"] / "report.html").as_uri())
    pixels = np.asarray(Image.open(io.BytesIO(shot.read_bytes())).convert("RGB"), dtype=np.int16)
    tint = np.all(np.abs(pixels - np.array([0xF4, 0xF8, 0xFB])) <= 2, axis=-1)  # the block's background
    assert tint[: int(bottom)].mean() > 0.2

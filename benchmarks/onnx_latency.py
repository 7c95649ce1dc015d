"""ONNX latency per architecture: the int8 ONNX file against the int8 TFLite file and float ONNX (issue 20).

The coverage benchmark's seven models (zoo cnn_small, ds_cnn, resnet_small, MobileNetV2- and
MobileNetV3-small at 28×28×1; keras.applications MobileNetV2 α 0.35 and MobileNetV3Small α 0.75
at 32×32×3; trained 5 epochs, cached in benchmarks/.cache and trained there when missing), each
quantized by RobustQuantizer at w8a8 and w4a4 (calibrated on 1,024 training images), exported
as shipped: the full-integer TFLite file (LiteRT, its default XNNPACK delegate) and the ONNX
file (onnxruntime, CPU provider, default session: every graph optimization, one thread per
core; INT4 weights at w4a4, decoded to the same kernels when loaded), and the float model as
float32 ONNX (tf2onnx, opset 13).

Latency: ``predict`` on one batch of 1 and of 32 test images, the three files of a setting
timed in turn for ``--rounds`` rounds (the order rotating) after one untimed round, each round
the mean of ``--repeats`` runs after 2 untimed ones; the median round is reported. Timings need an idle
machine: nothing else should run meanwhile.

Target (issue 20, "fast ONNX"): at both batch sizes, the int8 ONNX file at most 1.5× the int8
TFLite file's time and faster than float ONNX.

    ./run.sh bench onnx_latency            # writes benchmarks/results/onnx_latency.{json,md}
    ./run.sh bench onnx_latency --quick    # cnn_small only, 3 rounds: a smoke run
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

import numpy as np

import keras_qrobust as kq
from _common import machine, publish
from _models import trained_model
from coverage import APPLICATIONS, ZOO, applications_model, rgb32
from export import float_onnx
from keras_qrobust.bench import log, run_description, targets_table

SETTINGS = ("w8a8", "w4a4")
BATCHES = (1, 32)
TARGET_RATIO = 1.5


def timed(files: dict, x: np.ndarray, batch: int, rounds: int, repeats: int) -> dict:
    """Median over ``rounds`` of each file's mean ms per ``predict`` of ``batch`` inputs."""
    inputs = x[:batch]
    times: dict = {name: [] for name in files}
    names = list(files)
    for r in range(-1, rounds):  # round -1 untimed: thread pools and caches of every file warmed
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate who goes first
            model = files[name]
            for _ in range(2):
                model.predict(inputs, batch_size=batch)
            start = time.perf_counter()
            for _ in range(repeats):
                model.predict(inputs, batch_size=batch)
            if r >= 0:
                times[name].append(1000 * (time.perf_counter() - start) / repeats)
    return {name: round(float(np.median(values)), 4) for name, values in times.items()}


def score_architecture(name: str, model, x_train, x_test, args, folder: Path) -> list[dict]:
    rows = []
    float_file = kq.export.load(float_onnx(model, folder / f"{name}_float.onnx"))
    for setting in SETTINGS:
        qmodel = kq.RobustQuantizer.from_setting(setting).quantize(model, x_train[:1024])
        onnx_path = kq.export.onnx(qmodel, folder / f"{name}_{setting}.onnx", overwrite=True)
        tflite_path = kq.export.tflite(qmodel, folder / f"{name}_{setting}.tflite", overwrite=True)
        files = {"onnx int8": kq.export.load(onnx_path), "tflite int8": kq.export.load(tflite_path),
                 "float onnx": float_file}
        ms = {str(batch): timed(files, x_test, batch, args.rounds, args.repeats) for batch in BATCHES}
        ops = collections.Counter(node.op_type for node in files["onnx int8"].optimized_graph().node)
        rows.append({"architecture": name, "setting": setting, "ms": ms, "onnx_ops": dict(ops.most_common())})
        log(f"{name} {setting}: " + "; ".join(f"batch {b}: " + ", ".join(f"{k} {v:.3f}" for k, v in t.items())
                                              for b, t in ms.items()))
    return rows


def meets(ms: dict) -> tuple[bool, bool]:
    """Whether the int8 ONNX time ``ms`` is within the target ratio of TFLite's, and below float ONNX's."""
    return ms["onnx int8"] / ms["tflite int8"] <= TARGET_RATIO, ms["onnx int8"] < ms["float onnx"]


def checks(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        for batch, ms in row["ms"].items():
            ratio = ms["onnx int8"] / ms["tflite int8"]
            out.append({"check": f"{row['architecture']} {row['setting']}, batch {batch}: int8 ONNX ≤ {TARGET_RATIO}× "
                                 "int8 TFLite and faster than float ONNX",
                        "value": f"{ms['onnx int8']:.3f} ms vs {ms['tflite int8']:.3f} ms ({ratio:.2f}×), float "
                                 f"{ms['float onnx']:.3f} ms",
                        "passed": all(meets(ms))})
    return out


def _cpu(machine_entry: dict) -> str:
    cpu = machine_entry.get("cpu") or {}
    return f"{cpu.get('model') or 'unknown'} ({', '.join(cpu.get('flags') or []) or 'flags unknown'})"


def markdown(data: dict) -> str:
    lines = ["# ONNX latency per architecture", "",
             f"{run_description(data)} CPU: {_cpu(data['machine'])}. Code {data['machine'].get('code', 'unknown')}. "
             f"Median of {data['rounds']} "
             f"rounds, each the mean of {data['repeats']} `predict` calls on one batch; the three files of a "
             "setting timed in turn. ONNX: onnxruntime's default session (all graph optimizations, one thread per "
             "core); TFLite: LiteRT with XNNPACK.", "",
             "| architecture | setting | batch | int8 ONNX ms | int8 TFLite ms | ONNX / TFLite | float ONNX ms |",
             "|---|---|---|---|---|---|---|"]
    for row in data["rows"]:
        for batch, ms in row["ms"].items():
            lines.append(f"| {row['architecture']} | {row['setting']} | {batch} | {ms['onnx int8']:.3f} | "
                         f"{ms['tflite int8']:.3f} | {ms['onnx int8'] / ms['tflite int8']:.2f}× | "
                         f"{ms['float onnx']:.3f} |")
    lines += ["", "What onnxruntime runs for each int8 file (its optimized graph, op counts):", ""]
    lines += [f"- {row['architecture']} {row['setting']}: " + ", ".join(f"{k} {v}" for k, v in row["onnx_ops"].items())
              for row in data["rows"]]
    cells = [meets(ms) for row in data["rows"] for ms in row["ms"].values()]
    lines += ["", f"Of {len(cells)} cells, the int8 ONNX file is within {TARGET_RATIO}× of the int8 TFLite file in "
              f"{sum(a for a, _ in cells)}, faster than float ONNX in {sum(b for _, b in cells)}, both in "
              f"{sum(a and b for a, b in cells)}. Sub-millisecond times on this shared machine vary between runs: "
              "compare within a row (timed in turn) rather than across runs.", "", *targets_table(data["checks"])]
    return "\n".join(lines) + "\n"


def _count(text: str) -> int:
    """An argparse type: a positive whole number."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive count")
    return int(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=_count, default=15, help="timed rounds per file and batch (default: 15)")
    parser.add_argument("--repeats", type=_count, default=20, help="predict calls per round (default: 20)")
    parser.add_argument("--epochs", type=_count, default=5, help="training epochs of the coverage models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="cnn_small only, 3 rounds of 5: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.repeats = 3, 5
    x_train, _ = kq.datasets.load("fashion_mnist", "train")
    x_test, _ = kq.datasets.load("fashion_mnist", "test")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for name in ZOO[:1] if args.quick else ZOO:
            model, _ = trained_model(name, args.epochs, args.seed)
            rows += score_architecture(name, model, x_train, x_test[:32], args, folder)
        for name in () if args.quick else APPLICATIONS:
            model, _ = applications_model(name, args.epochs, args.seed)
            rows += score_architecture(name, model, rgb32(x_train), rgb32(x_test[:32]), args, folder)
    command = "./run.sh bench onnx_latency" + (" --quick" if args.quick else "")
    data = {"command": command, "machine": machine(), "rounds": args.rounds, "repeats": args.repeats,
            "epochs": args.epochs, "rows": rows, "checks": checks(rows)}
    publish("onnx_latency", args.quick, data, markdown(data))


if __name__ == "__main__":
    main()

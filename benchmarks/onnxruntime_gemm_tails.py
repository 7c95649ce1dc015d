"""onnxruntime's int8 convolution on this CPU: which filter counts compute wrong sums (issue 20).

onnxruntime 1.23 runs int8 GEMMs on CPUs with AMX-INT8 through a kernel that errs in the last,
partly filled block of 32 output channels (microsoft/onnxruntime#26324). This script measures
it on the machine it runs on, and what the ONNX export does about it
(:mod:`keras_qrobust.export.onnx_gemm_tiles`):

* one ``QLinearConv`` (1×1, 64 input channels, 7×7 maps, 64 images, uint8 input codes) for
  every filter count 1–96, with uint8 weights (zero point 128, as our files store them) and
  int8 weights, against the exact integer result: the counts that differ, the share of
  outputs off and the largest difference in output steps;
* the zoo's ``mobilenet_v2_small`` (untrained, BatchNormalization statistics of 256
  Fashion-MNIST training images; its projections have 24 filters) at w4a4, exported to ONNX
  with and without the padding rewrite: the share of 300 test images whose scores equal the
  TFLite file's (LiteRT computes the integer model exactly: ``integer_twin``).

    ./run.sh bench onnxruntime_gemm_tails    # writes benchmarks/results/onnxruntime_gemm_tails.{json,md}
"""

from __future__ import annotations

import argparse
import importlib
import tempfile
from pathlib import Path

import numpy as np

import keras_qrobust as kq
from _common import machine, publish
from keras_qrobust.bench import log, run_description

COUNTS = range(1, 97)


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx512_vnni", "avx_vnni", "amx", "avx2")))


def one_convolution(filters: int, signed: bool, rng) -> tuple[float, float]:
    """(share of outputs that differ from the exact result, largest difference in steps)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    channels, size, images = 64, 7, 64
    codes = rng.integers(-127, 128, size=(filters, channels))
    zero = 0 if signed else 128
    weights = (codes + zero).astype(np.int8 if signed else np.uint8).reshape(filters, channels, 1, 1)
    x = rng.integers(0, 256, size=(images, channels, size, size)).astype(np.uint8)
    x_scale, x_zero, w_scale, y_scale, y_zero = 0.02, 3, 0.01, 0.5, 128
    constants = {"xs": np.array(x_scale, np.float32), "xz": np.array(x_zero, np.uint8), "w": weights,
                 "ws": np.full(filters, w_scale, np.float32), "wz": np.array(zero, weights.dtype),
                 "ys": np.array(y_scale, np.float32), "yz": np.array(y_zero, np.uint8)}
    graph = helper.make_graph(
        [helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        [numpy_helper.from_array(value, name) for name, value in constants.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = session.run(None, {"x": x})[0].astype(np.int64)
    sums = np.einsum("nchw,kc->nkhw", x.astype(np.int64) - x_zero, codes)
    multiplier = np.float32(np.float32(np.float32(x_scale) * np.float32(w_scale)) / np.float32(y_scale))
    exact = np.clip(np.rint(sums.astype(np.float32) * multiplier) + y_zero, 0, 255)
    return float(np.mean(y != exact)), float(np.max(np.abs(y - exact)))


def mobilenet_agreement(folder: Path) -> dict:
    x_train, _ = kq.datasets.load("fashion_mnist", "train")
    x_test, _ = kq.datasets.load("fashion_mnist", "test")
    kq.keras.utils.set_random_seed(0)
    model = kq.zoo.get("mobilenet_v2_small")
    for layer in model.layers:
        if isinstance(layer, kq.keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(x_train[:256], training=True)
    qmodel = kq.RobustQuantizer.from_setting("w4a4").quantize(model, x_train[:512])
    x = x_test[:300]
    reference = kq.export.load(kq.export.tflite(qmodel, folder / "m.tflite")).predict(x)
    onnx_module = importlib.import_module("keras_qrobust.export.onnx")
    out = {}
    padding = onnx_module.pad_gemm_tails
    for name, rewrite in (("padded", padding), ("unpadded", lambda proto: [])):
        onnx_module.pad_gemm_tails = rewrite
        try:
            scores = kq.export.load(kq.export.onnx(qmodel, folder / f"{name}.onnx")).predict(x)
        finally:
            onnx_module.pad_gemm_tails = padding
        out[name] = float(np.mean(np.all(scores == reference, axis=1)))
    return out


def run(args) -> dict:
    import onnxruntime as ort

    rng = np.random.default_rng(args.seed)
    sweep = {}
    for signed in (False, True):
        rows = {n: one_convolution(n, signed, rng) for n in COUNTS}
        kind = "int8" if signed else "uint8"
        sweep[kind] = {
            "wrong_counts": [n for n, (share, _) in rows.items() if share > 0],
            "largest_share": max(share for share, _ in rows.values()),
            "largest_steps": max(steps for _, steps in rows.values()),
        }
        log(f"{kind} weights: wrong for {sweep[kind]['wrong_counts']}")
    with tempfile.TemporaryDirectory(prefix="kq_gemm_tails_") as folder:
        agreement = mobilenet_agreement(Path(folder))
    log(f"mobilenet_v2_small w4a4, rows equal to the TFLite file: {agreement}")
    return {"command": "./run.sh bench onnxruntime_gemm_tails", "machine": machine(), "cpu_flags": cpu_flags(),
            "onnxruntime": ort.__version__, "seed": args.seed, "sweep": sweep, "mobilenet_v2_small_w4a4": agreement}


def _ranges(counts: list[int]) -> str:
    if not counts:
        return "none"
    runs, start = [], counts[0]
    for previous, current in zip(counts, counts[1:] + [None]):
        if current != previous + 1:
            runs.append(f"{start}–{previous}" if previous != start else f"{start}")
            start = current
    return ", ".join(runs)


def markdown(data: dict) -> str:
    lines = ["# onnxruntime's int8 convolution: filter counts with wrong sums", "",
             f"{run_description(data)} Code {data['machine'].get('code', 'unknown')}. onnxruntime "
             f"{data['onnxruntime']}; CPU flags: {', '.join(data['cpu_flags']) or 'unknown'}. One 1×1 QLinearConv, "
             "64 input channels, 7×7 maps, 64 images, against the exact integer result, for 1–96 filters.", "",
             "| weights | filter counts with wrong outputs | largest share of outputs off | largest error (steps) |",
             "|---|---|---|---|"]
    for kind, row in data["sweep"].items():
        lines.append(f"| {kind} | {_ranges(row['wrong_counts'])} | {100 * row['largest_share']:.2f}% | "
                     f"{row['largest_steps']:.0f} |")
    agreement = data["mobilenet_v2_small_w4a4"]
    lines += ["", "zoo `mobilenet_v2_small` w4a4 (untrained, data BatchNormalization statistics), 300 test images "
              "whose ONNX scores equal the TFLite file's: "
              f"padded (`onnx_gemm_tiles`, the default) {100 * agreement['padded']:.2f}%, "
              f"unpadded {100 * agreement['unpadded']:.2f}%."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = run(args)
    publish("onnxruntime_gemm_tails", False, data, markdown(data))


if __name__ == "__main__":
    main()

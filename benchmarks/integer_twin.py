"""The integer twin against the TFLite file, for every coverage architecture (issue 20).

For the coverage benchmark's architectures (the zoo's five on Fashion-MNIST 28×28×1 and
keras.applications MobileNetV2 α 0.35 / MobileNetV3Small α 0.75 on 32×32×3, trained 5 epochs,
cached), quantized by RobustQuantizer at w8a8, w6a6, w4a4 and w2a2 and exported to full-integer
TFLite, run in LiteRT with its default delegate (XNNPACK), on the test images and on the test
images with every pixel moved by ±ε (ε = 0.1, between two input levels, where an attack's
points lie):

* ``kq.export.integer_twin``: output values that differ from the file's (bit for bit), top-1
  agreement, and what the twin reports it does not reproduce; and the same for
  ``integer_twin(runtime="onnx")`` against the QDQ ONNX file in ONNX Runtime;
* the RobustQuantizer model (float arithmetic on the same grids): top-1 agreement, scores
  within one output step, the largest difference in output steps;

    ./run.sh bench integer_twin           # writes benchmarks/results/integer_twin.{json,md}
    ./run.sh bench integer_twin --quick   # 2 architectures, 2 settings, 500 images
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import keras_qrobust as kq
from _common import machine, publish
from _models import trained_model
from coverage import APPLICATIONS, EPS, SETTINGS, ZOO, applications_model, rgb32
from keras_qrobust.bench import log, run_description
from onnxruntime_gemm_tails import cpu_flags

EPOCHS = 5


def score(qmodel, inputs: dict, folder: Path) -> dict:
    tflite = kq.export.tflite(qmodel, folder / "m.tflite", overwrite=True)
    onnx = kq.export.onnx(qmodel, folder / "m.onnx", overwrite=True)
    twin = kq.export.integer_twin(qmodel, file=tflite)
    onnx_twin = kq.export.integer_twin(qmodel, runtime="onnx", file=onnx)
    deployed, onnx_deployed = kq.export.load(tflite), kq.export.load(onnx)
    step = float(qmodel.get_layer("output_quantizer").step)
    out = {"twin_exact": twin.exact, "approximated": list(twin.approximated),
           "onnx_twin_exact": onnx_twin.exact, "onnx_approximated": list(onnx_twin.approximated)}
    for name, x in inputs.items():
        file_scores = deployed.predict(x)
        twin_scores = np.asarray(twin.model.predict(x, verbose=0, batch_size=256))
        keras_scores = np.asarray(qmodel.predict(x, verbose=0, batch_size=256))
        onnx_scores = onnx_deployed.predict(x)
        onnx_twin_scores = np.asarray(onnx_twin.model.predict(x, verbose=0, batch_size=256))
        difference = np.abs(keras_scores - file_scores) / step
        out[name] = {
            "twin_values_differing": int(np.sum(twin_scores != file_scores)),
            "twin_agreement": float(np.mean(twin_scores.argmax(1) == file_scores.argmax(1))),
            "keras_agreement": float(np.mean(keras_scores.argmax(1) == file_scores.argmax(1))),
            "keras_within_one_step": float(np.mean(difference <= 1.01)),
            "keras_max_steps": float(difference.max()),
            "onnx_twin_values_differing": int(np.sum(onnx_twin_scores != onnx_scores)),
            "keras_onnx_agreement": float(np.mean(keras_scores.argmax(1) == onnx_scores.argmax(1))),
        }
    return out


def run(args) -> dict:
    x_train, _ = kq.datasets.load("fashion_mnist", "train")
    x_test, _ = kq.datasets.load("fashion_mnist", "test")
    x_test = x_test[:args.images]
    architectures = list(ZOO) + list(APPLICATIONS)
    settings = list(SETTINGS)
    if args.quick:
        architectures, settings = [ZOO[0], list(APPLICATIONS)[1]], ["w8a8", "w4a4"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="kq_twin_bench_") as folder:
        for name in architectures:
            if name in APPLICATIONS:
                model, _ = applications_model(name, EPOCHS, 0)
                samples, x = rgb32(x_train[:1024]), rgb32(x_test)
            else:
                model, _ = trained_model(name, EPOCHS)
                samples, x = x_train[:1024], x_test
            signs = np.random.default_rng(0).choice([-1.0, 1.0], size=x.shape)
            perturbed = np.clip(x + EPS * signs, 0, 1).astype(np.float32)
            for setting in settings:
                qmodel = kq.RobustQuantizer.from_setting(setting).quantize(model, samples)
                result = score(qmodel, {"clean": x, "perturbed": perturbed}, Path(folder))
                rows.append({"architecture": name, "setting": setting, **result})
                log(f"{name} {setting}: twin differs in {result['clean']['twin_values_differing']} / "
                    f"{result['perturbed']['twin_values_differing']} values (ONNX twin "
                    f"{result['clean']['onnx_twin_values_differing']} / "
                    f"{result['perturbed']['onnx_twin_values_differing']}); RobustQuantizer model agreement "
                    f"{result['clean']['keras_agreement']:.4%} / {result['perturbed']['keras_agreement']:.4%}")
    command = "./run.sh bench integer_twin" + (" --quick" if args.quick else "") + \
        (f" --images {args.images}" if args.images != 10000 else "")
    return {"command": command, "machine": machine(), "cpu_flags": cpu_flags(), "images": len(x_test), "eps": EPS,
            "epochs": EPOCHS, "rows": rows}


def markdown(data: dict) -> str:
    values = data["images"] * 10
    lines = ["# The integer twins and the int8 files (TFLite in LiteRT with XNNPACK; ONNX in ONNX Runtime)", "",
             f"{run_description(data)} Code {data['machine'].get('code', 'unknown')}. {data['images']:,} test images "
             f"({values:,} output values), clean and with every pixel ±{data['eps']:g}. Twin: "
             "`kq.export.integer_twin` (forward = the file's integer arithmetic); RobustQuantizer model: the "
             "fake-quant model on the same grids in float arithmetic. Agreement: top-1 class equal to the file's.",
             "",
             "| architecture | setting | twin: values ≠ file, clean / ±ε | twin: agreement | RobustQuantizer model: "
             "agreement, clean / ±ε | within 1 step (clean) | max steps (clean / ±ε) | twin reports | "
             "ONNX twin: values ≠ ONNX file, clean / ±ε | RobustQuantizer model vs ONNX file: agreement, "
             "clean / ±ε | ONNX twin reports |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in data["rows"]:
        c, p = row["clean"], row["perturbed"]
        lines.append(
            f"| {row['architecture']} | {row['setting']} | {c['twin_values_differing']:,} / "
            f"{p['twin_values_differing']:,} | {100 * c['twin_agreement']:.2f}% / {100 * p['twin_agreement']:.2f}% | "
            f"{100 * c['keras_agreement']:.2f}% / {100 * p['keras_agreement']:.2f}% | "
            f"{100 * c['keras_within_one_step']:.2f}% | {c['keras_max_steps']:.0f} / {p['keras_max_steps']:.0f} | "
            f"{'exact' if row['twin_exact'] else '; '.join(row['approximated'])} | "
            f"{c['onnx_twin_values_differing']:,} / {p['onnx_twin_values_differing']:,} | "
            f"{100 * c['keras_onnx_agreement']:.2f}% / {100 * p['keras_onnx_agreement']:.2f}% | "
            f"{'exact' if row['onnx_twin_exact'] else '; '.join(row['onnx_approximated'])} |")
    exact = sum(r["clean"]["twin_values_differing"] == 0 and r["perturbed"]["twin_values_differing"] == 0
                for r in data["rows"])
    onnx_exact = sum(r["clean"]["onnx_twin_values_differing"] == 0 and r["perturbed"]["onnx_twin_values_differing"]
                     == 0 for r in data["rows"])
    lines += ["", f"The TFLite twin equals the TFLite file on every output value in {exact} of {len(data['rows'])} "
              f"architecture × setting cells; the ONNX twin equals the ONNX file in {onnx_exact} of "
              f"{len(data['rows'])}. CPU flags: {', '.join(data.get('cpu_flags', [])) or 'not recorded'} (ONNX Runtime "
              "picks its kernels by CPU)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--quick", action="store_true", help="2 architectures, 2 settings, 500 images")
    args = parser.parse_args()
    if args.quick and args.images == 10000:
        args.images = 500
    data = run(args)
    publish("integer_twin", args.quick, data, markdown(data))


if __name__ == "__main__":
    main()

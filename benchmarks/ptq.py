"""Post-training quantization on Fashion-MNIST: accuracy per wXaY setting and PTQ time.

Trains cnn_small and ds_cnn (seeds fixed, deterministic ops), then for each setting
quantizes with RobustQuantizer — its default (MSE calibration, 8-bit first layer as in
cnn2snn), max and percentile calibration, and every layer at the setting's bits — and,
where the setting exists there, with tfmot's DefaultNBitQuantizeScheme calibrated
post-training by keras_qrobust.calibrate_tfmot. Scores clean accuracy on the 10,000 test
images and times quantize + calibrate (1,024 calibration images).

    ./run.sh bench ptq            # writes benchmarks/results/ptq.{json,md}
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras.experimental.default_n_bit import (
    default_n_bit_quantize_scheme as nbit,
)

import keras_qrobust as kq
from _common import RESULTS, machine, write_results
from _models import trained_model
from keras_qrobust.bench import log

SETTINGS = ["w8a8", "w6a6", "w4a4", "w3a3", "w2a2", "w3"]
DEFAULT = "rq"
VARIANTS = {  # RobustQuantizer configurations; "rq" is the default one
    "rq": {},
    "rq_max": {"calibration": "max"},
    "rq_percentile": {"calibration": "percentile"},
    "rq_uniform": {"input_weight_bits": None},
}
TARGETS = {"w8a8": 0.005, "w4a4": 0.03}
TIME_TARGET_SECONDS = 5.0


def timed(repeats: int, fn, *args):
    """(result of the last call of ``fn(*args)``, wall seconds of each call)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        seconds.append(time.perf_counter() - start)
    return result, seconds


def tfmot_ptq(model, weight_bits, activation_bits, samples):
    tfq = tfmot.quantization.keras
    scheme = nbit.DefaultNBitQuantizeScheme(num_bits_weight=weight_bits, num_bits_activation=activation_bits)
    qmodel = tfq.quantize_apply(tfq.quantize_annotate_model(model), scheme=scheme)
    kq.calibrate_tfmot(qmodel, samples)
    return qmodel


def run_model(name, epochs, x_cal, x_test, y_test, repeats):
    model, training = trained_model(name, epochs)
    float_accuracy = kq.metrics.accuracy(model, x_test, y_test)
    log(f"{name}: float {100 * float_accuracy:.2f}%")
    rows = []
    for setting in SETTINGS:
        weight_bits, activation_bits = kq.parse_setting(setting)
        row = {"setting": setting}
        for key, kwargs in VARIANTS.items():
            quantizer = kq.RobustQuantizer(weight_bits, activation_bits, **kwargs)
            qmodel, seconds = timed(repeats if key == DEFAULT else 1, quantizer.quantize, model, x_cal)
            row[key] = {"accuracy": kq.metrics.accuracy(qmodel, x_test, y_test),
                        "seconds_median": statistics.median(seconds), "seconds_first": seconds[0],
                        "quantizer": str(quantizer)}
        if activation_bits is not None and weight_bits <= 8 and activation_bits <= 8:
            qmodel, seconds = timed(repeats, tfmot_ptq, model, weight_bits, activation_bits, x_cal)
            row["tfmot_nbit"] = {"accuracy": kq.metrics.accuracy(qmodel, x_test, y_test),
                                 "seconds_median": statistics.median(seconds), "seconds_first": seconds[0]}
        else:
            row["tfmot_nbit"] = None  # DefaultNBitQuantizeScheme always quantizes activations
        log(f"  {setting}: " + ", ".join(
            f"{k} {100 * v['accuracy']:.2f}% ({v['seconds_median']:.2f} s)" for k, v in row.items()
            if isinstance(v, dict)))
        rows.append(row)
    return {"model": name, "params": model.count_params(), "epochs": epochs, "training": training,
            "float_accuracy": float_accuracy, "settings": rows}


def check_targets(result) -> list[dict]:
    checks = []
    for row in result["settings"]:
        if row["setting"] in TARGETS:
            drop = result["float_accuracy"] - row[DEFAULT]["accuracy"]
            checks.append({"model": result["model"], "check": f"{row['setting']}: float minus PTQ "
                           f"accuracy <= {100 * TARGETS[row['setting']]:.1f} points",
                           "value": round(100 * drop, 2), "passed": drop <= TARGETS[row["setting"]]})
    if result["model"] == "cnn_small":
        worst = max(r[DEFAULT]["seconds_median"] for r in result["settings"])
        checks.append({"model": "cnn_small", "check": f"slowest quantize+calibrate (s) < {TIME_TARGET_SECONDS:.0f}",
                       "value": round(worst, 2), "passed": worst < TIME_TARGET_SECONDS})
    return checks


def markdown(data) -> str:
    def cell(entry):
        return "n/a" if entry is None else f"{100 * entry['accuracy']:.2f}"

    def secs(entry):
        return "" if entry is None else f"{entry['seconds_median']:.2f}"

    lines = ["# PTQ on Fashion-MNIST", "",
             f"Command: `{data['command']}`. Machine: {data['machine']['cpus']} CPUs, "
             f"{data['machine']['platform']}, TensorFlow {data['machine']['packages']['tensorflow']}. "
             f"{data['calibration_samples']} calibration images (seed {data['seed']}), accuracy on the "
             f"{data['test_images']} test images. Times are the median of {data['repeats']} runs of "
             "quantize + calibrate.", "",
             "Columns: **RQ** = RobustQuantizer defaults (MSE calibration, 8-bit first-layer weights "
             "as in cnn2snn); **max** / **p99.99** = the same with max / percentile calibration; "
             "**uniform** = MSE calibration with every layer at the setting's bits; **tfmot** = "
             "DefaultNBitQuantizeScheme + `calibrate_tfmot` (it also quantizes the input and the "
             "logits to the activation bits; n/a: it has no weight-only mode). Time: RQ's "
             "quantize + calibrate.", ""]
    for result in data["models"]:
        lines += [f"## {result['model']} ({result['params']:,} parameters, {result['epochs']} epochs): "
                  f"float {100 * result['float_accuracy']:.2f}%", "",
                  "| setting | RQ % | max % | p99.99 % | uniform % | tfmot % | RQ s | tfmot s |",
                  "|---|---|---|---|---|---|---|---|"]
        for row in result["settings"]:
            lines.append(f"| {row['setting']} | {cell(row['rq'])} | {cell(row['rq_max'])} | "
                         f"{cell(row['rq_percentile'])} | {cell(row['rq_uniform'])} | {cell(row['tfmot_nbit'])} | "
                         f"{secs(row['rq'])} | {secs(row['tfmot_nbit'])} |")
        lines.append("")
    lines += ["## Targets", "", "| model | check | measured | met |", "|---|---|---|---|"]
    lines += [f"| {c['model']} | {c['check']} | {c['value']} | {'yes' if c['passed'] else 'NO'} |"
              for c in data["checks"]]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="cnn_small,ds_cnn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite results/ptq.md (and the checks) from results/ptq.json")
    args = parser.parse_args()
    if args.render_only:
        data = json.loads((RESULTS / "ptq.json").read_text())
        data["checks"] = [c for r in data["models"] for c in check_targets(r)]
        write_results("ptq", data, markdown(data))
        print(markdown(data))
        return

    x_train, _ = kq.datasets.load("fashion_mnist", "train")
    x_test, y_test = kq.datasets.load("fashion_mnist", "test")
    rng = np.random.default_rng(args.seed)
    x_cal = x_train[rng.choice(len(x_train), 1024, replace=False)]
    results = [run_model(name, args.epochs, x_cal, x_test, y_test, args.repeats)
               for name in args.models.split(",")]
    data = {"benchmark": "ptq", "command": "./run.sh bench ptq", "machine": machine(), "seed": args.seed,
            "calibration_samples": len(x_cal), "test_images": len(x_test), "repeats": args.repeats,
            "models": results, "checks": [c for r in results for c in check_targets(r)]}
    paths = write_results("ptq", data, markdown(data))
    print(markdown(data))
    log(f"wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()

"""Akida: does the .fbz compute the quantized model that was attacked? (issue 20)

The deployed model of benchmarks/robustness.py — "AT-ft w4a4", the defenses' Adv. model
quantized by RobustQuantizer at w4a4 and fine-tuned with its objective through its fake
quantizers — is exported to Akida (cnn2snn 2.19, run by Akida's software backend) two ways:

* **carried**: ``kq.export.akida(w4a4_model)`` carries its weight codes and activation ranges
  into quantizeml (:mod:`keras_qrobust.export.akida_grids`);
* **requantized**: ``kq.export.akida(float_model, weight_bits=4, activation_bits=4)``, quantizeml's
  own post-training quantization of the float Adv. model (the only flow before).

Each file is scored against the Keras w4a4 model it should reproduce (with its 8-bit output
grid, as attacked in benchmarks/robustness.py): top-1 agreement and clean accuracy on the first
``--images`` test images; AutoAttack (``fast``: APGD-CE, APGD-T) crafted on the Keras model on
the first ``--attack-images`` test images and fed to the file (transfer, as an attacker without
the file would do); AutoAttack ``fast`` on the file itself through the Keras model's gradients
(BPDA, ``kq.attacks.bpda(file, keras_model)``: every step decided by the file's own outputs) on
the same images; AutoAttack ``fast`` white-box on the file's Akida twin
(:func:`keras_qrobust.export.akida_twin`, the quantizeml model the file is converted from, its
outputs checked against the file's on probe inputs), its points scored by the file; Square
(gradient-free) with ``--square-queries`` on the file itself and on the Keras model with the
same seed, on the first ``--square-images`` test images. L∞ ε = 0.1.

Targets (issue 20): clean accuracy of the file within 1 point of the Keras model; robust
accuracy within 2 points — per input on the Square slice, the file is robust when neither the
Keras model's AutoAttack point, nor AutoAttack through BPDA or on its Akida twin, nor Square on
the file fools it; the Keras model when neither AutoAttack nor Square on it does.

    ./run.sh bench akida_fidelity            # writes benchmarks/results/akida_fidelity.{json,md}
    ./run.sh bench akida_fidelity --quick    # 1,000 / 200 / 50 images, 200 queries: a smoke run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import keras_qrobust as kq
from _common import machine, publish
from _models import defense_fine_tuned, defense_model
from keras_qrobust.bench import log, run_description, targets_table

EPS = 0.1
TARGET_CLEAN_GAP, TARGET_ROBUST_GAP = 0.01, 0.02


def interval(correct: np.ndarray) -> dict:
    n, k = int(len(correct)), int(np.sum(correct))
    return {"accuracy": k / n, "n": n, "interval95": list(kq.metrics.wilson_interval(k, n))}


def square(model, x, y, args) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    found = kq.attacks.square(model, x, y, eps=EPS, queries=args.square_queries, p_init=0.8, rescale_schedule=True,
                              seed=args.seed, verbose=0)
    return kq.metrics.predict_labels(model, found) == y, time.perf_counter() - started


def score_file(path: Path, twin, akida_twin, x, y, points, y_points, twin_square, args) -> dict:
    """The file against the Keras model ``twin``; ``akida_twin`` (:func:`kq.export.akida_twin`,
    checked against the file) is the file's own function, attacked white-box."""
    deployed = kq.export.load(path)
    labels, twin_labels = kq.metrics.predict_labels(deployed, x), kq.metrics.predict_labels(twin, x)
    started = time.perf_counter()
    n = args.square_images
    square_correct, square_seconds = square(deployed, x[:n], y[:n], args)
    point_labels = kq.metrics.predict_labels(deployed, points)
    transferred = point_labels == y_points
    bpda_started = time.perf_counter()
    through = kq.attacks.autoattack(kq.attacks.bpda(deployed, twin), x[:len(points)], y_points, eps=EPS,
                                    version="fast", seed=args.seed, verbose=0)
    bpda_seconds = time.perf_counter() - bpda_started
    own_started = time.perf_counter()
    own = kq.attacks.autoattack(akida_twin.model, x[:len(points)], y_points, eps=EPS, version="fast", seed=args.seed,
                                verbose=0)
    own_seconds = time.perf_counter() - own_started
    own_on_file = kq.metrics.predict_labels(deployed, own.x_adv) == y_points  # the twin's points, scored by the file
    row = {"bytes": path.stat().st_size, "agreement": float(np.mean(labels == twin_labels)),
           "agreement_at_autoattack_points": float(np.mean(point_labels == kq.metrics.predict_labels(twin, points))),
           "clean": interval(labels == y), "transfer": interval(transferred),
           "bpda_autoattack_fast": {**interval(through.robust), "seconds": round(bpda_seconds, 1),
                                    "findings": list(through.findings)},
           "akida_twin": {"exact": akida_twin.exact, "approximated": list(akida_twin.approximated)},
           "twin_autoattack_fast": {**interval(own.robust & own_on_file), "seconds": round(own_seconds, 1),
                                    "findings": list(own.findings)},
           "square": {**interval(square_correct), "seconds": round(square_seconds, 1)},
           # per input, on the Square slice: not fooled by the Keras model's points, by AutoAttack through
           # BPDA or on the file's Akida twin, nor by Square on the file
           "robust": interval(transferred[:n] & through.robust[:n] & own.robust[:n] & own_on_file[:n]
                              & square_correct),
           "seconds": round(time.perf_counter() - started, 1)}
    log(f"{path.name}: agreement {row['agreement']:.2%}, clean {row['clean']['accuracy']:.2%}, transfer "
        f"{row['transfer']['accuracy']:.2%}, BPDA {row['bpda_autoattack_fast']['accuracy']:.2%}, "
        f"on its Akida twin {row['twin_autoattack_fast']['accuracy']:.2%}, "
        f"Square {row['square']['accuracy']:.2%}, "
        f"both {row['robust']['accuracy']:.2%}")
    return row


def run(args) -> dict:
    x_test, y_test = kq.datasets.load("fashion_mnist", "test")
    x_fit, _ = kq.datasets.load("fashion_mnist", "fit")
    x_cal = x_fit[np.random.default_rng(args.seed).choice(len(x_fit), 512, replace=False)]
    x, y = x_test[:args.images], y_test[:args.images]
    adv, adv_info = defense_model(args.seed)
    twin, twin_info = defense_fine_tuned(adv, "w4a4", args.seed)

    n = args.attack_images
    attacked = kq.attacks.autoattack(twin, x[:n], y[:n], eps=EPS, version="fast", seed=args.seed, verbose=0)
    points, y_points = attacked.x_adv, y[:n]
    twin_square, twin_square_seconds = square(twin, x[:args.square_images], y[:args.square_images], args)
    keras_row = {"clean": interval(kq.metrics.predict_labels(twin, x) == y),
                 "autoattack_fast": {**interval(attacked.robust), "seconds": round(sum(attacked.seconds.values()), 1)},
                 "transfer_points_correct": interval(kq.metrics.predict_labels(twin, points) == y_points),
                 "square": {**interval(twin_square), "seconds": round(twin_square_seconds, 1)},
                 "robust": interval(attacked.robust[:args.square_images] & twin_square)}
    files = {}
    with tempfile.TemporaryDirectory() as folder:
        sources = {"carried": (twin, {}), "requantized": (adv, {"weight_bits": 4, "activation_bits": 4})}
        for name, (source, bits) in sources.items():
            path = Path(folder) / f"w4a4_{name}.fbz"
            started = time.perf_counter()
            kq.export.akida(source, path, x_cal, **bits)
            seconds = time.perf_counter() - started
            file_twin = kq.export.akida_twin(source, x_cal, file=path)  # the requantized one at w4a4 by default
            files[name] = {**score_file(path, twin, file_twin, x, y, points, y_points, twin_square, args),
                           "export_seconds": round(seconds, 1)}
    command = "./run.sh bench akida_fidelity" + (" --quick" if args.quick else "")
    return {"command": command, "machine": machine(), "eps": EPS, "seed": args.seed, "images": int(len(x)),
            "attack_images": n, "square_images": args.square_images, "square_queries": args.square_queries,
            "keras": keras_row, "files": files, "checks": checks(keras_row, files["carried"]),
            "training": {"Adv.": adv_info, "AT-ft w4a4": twin_info}}


def checks(keras_row: dict, carried: dict) -> list[dict]:
    out = []
    for key, target, what in (("clean", TARGET_CLEAN_GAP, "clean"),
                              ("robust", TARGET_ROBUST_GAP,
                               "robust (AutoAttack points ∪ BPDA AutoAttack ∪ twin AutoAttack ∪ Square)")):
        gap = keras_row[key]["accuracy"] - carried[key]["accuracy"]
        out.append({"check": f"carried .fbz {what} within {100 * target:g} point{'s' if target > 0.01 else ''} "
                             "of the Keras model",
                    "value": f"{carried[key]['accuracy']:.2%} vs {keras_row[key]['accuracy']:.2%}",
                    "passed": abs(gap) <= target})
    return out


def pct(row: dict) -> str:
    low, high = row["interval95"]
    return f"{100 * row['accuracy']:.2f} ({100 * low:.1f}–{100 * high:.1f})"


def _twin_cell(row: dict) -> str:
    own = row.get("twin_autoattack_fast")
    if own is None:
        return "not run"
    twin = row["akida_twin"]
    return (f"{pct(own)}, {own['seconds']:.0f} s"
            + ("" if twin["exact"] else f" (twin not exact: {'; '.join(twin['approximated'])})"))


def markdown(data: dict) -> str:
    k, files = data["keras"], data["files"]
    lines = ["# Akida: the .fbz against the quantized model that was attacked", "",
             f"{run_description(data)} Code {data['machine'].get('code', 'unknown')}. Fashion-MNIST test images; "
             f"L∞ ε = {data['eps']}. The Keras model is AT-ft w4a4 of benchmarks/robustness.py (with its 8-bit "
             "output grid). Accuracies in % with 95% Wilson intervals.", "",
             f"| model | bytes | top-1 agreement ({data['images']} images) | clean ({data['images']}) | "
             f"at the Keras model's AutoAttack-fast points ({data['attack_images']}): agreement, accuracy | "
             f"AutoAttack fast on itself through the Keras model's gradients (BPDA, {data['attack_images']}) | "
             f"AutoAttack fast on its Akida twin, scored by the file ({data['attack_images']}) | "
             f"Square {data['square_queries']} queries on itself ({data['square_images']}) | "
             f"robust: all attacks ({data['square_images']}) |",
             "|---|---|---|---|---|---|---|---|---|",
             f"| Keras w4a4 | — | — | {pct(k['clean'])} | —, {pct(k['transfer_points_correct'])} "
             f"(AutoAttack fast on it) | — | — | {pct(k['square'])} | {pct(k['robust'])} |"]
    for name, row in files.items():
        lines.append(f"| .fbz, {name} | {row['bytes']:,} | {100 * row['agreement']:.2f} | {pct(row['clean'])} | "
                     f"{100 * row['agreement_at_autoattack_points']:.1f}, {pct(row['transfer'])} | "
                     f"{pct(row['bpda_autoattack_fast'])}, {row['bpda_autoattack_fast']['seconds']:.0f} s | "
                     f"{_twin_cell(row)} | "
                     f"{pct(row['square'])} | {pct(row['robust'])} |")
    lines += ["", "carried: the w4a4 model's weight codes and activation ranges carried into quantizeml "
              "(`kq.export.akida(w4a4_model)`); requantized: quantizeml's own w4a4 quantization of the float Adv. "
              "model (`kq.export.akida(float_model)`). The Keras model's AutoAttack-fast points are scored on "
              "each file (transfer); AutoAttack fast also runs on each file itself, its forward pass the file's, its "
              "gradients the Keras model's (BPDA), and on each file's Akida twin (`kq.export.akida_twin`: the "
              "quantizeml model the file is converted from, its outputs checked against the file's), its points "
              "scored by the file; "
              "Square runs on each file itself with the Keras model's seed and "
              "budget; robust: per input, no attack fooled it (for the Keras model: AutoAttack fast and Square on it). "
              "AutoAttack's points lie on the Keras model's decision boundary, where a one-step difference decides "
              "the label: a file scoring higher there than the Keras model is not more robust.", "",
              *targets_table(data["checks"])]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--attack-images", type=int, default=1_000)
    parser.add_argument("--square-images", type=int, default=500)
    parser.add_argument("--square-queries", type=int, default=1_000)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.images, args.attack_images, args.square_images, args.square_queries = 1_000, 200, 50, 200
    data = run(args)
    publish("akida_fidelity", args.quick, data, markdown(data))


if __name__ == "__main__":
    main()

"""Choose how long to fine-tune AT-ft w4a4's Akida twin, on the validation split (issue 20).

The carried .fbz of AT-ft w4a4 computes its Akida twin — quantizeml's integer sums, where the
Keras w4a4 model sums in float — and that function is about 2 points less robust
(benchmarks/results/akida_fidelity.md). Training the twin itself with the Keras model's
objective (``_models.akida_fine_tuned``: TRADES, Adam 1e-4, on the fit split) makes the file's
own function the trained one. Each epoch's twin (epoch 0: the carried twin, not trained) and
the Keras w4a4 model are scored on the validation split: clean accuracy on all of it,
AutoAttack (``--version``, fast by default) white-box on the twin on its first ``--images``,
L∞ ε = 0.1. The rule: among the epochs whose validation clean accuracy is at most 1 point
below the Keras model's, the highest AutoAttack robust accuracy. The test set is not read.

    ./run.sh bench akida_fine_tune                  # 3 epochs, writes results/akida_fine_tune.{json,md}
"""

from __future__ import annotations

import argparse
import time

import keras_qrobust as kq
from _common import machine, publish
from _models import (AKIDA_FINE_TUNE_LR, akida_calibration, akida_fine_tuned, defense_fine_tuned,
                     defense_model)
from keras_qrobust.bench import log, with_interval

EPS = 0.1
CLEAN_GAP = 0.01


def score(model, x, y, images: int, version: str, seed: int) -> dict:
    start = time.perf_counter()
    clean = kq.metrics.accuracy(model, x, y)
    result = kq.attacks.autoattack(model, x[:images], y[:images], eps=EPS, version=version, seed=seed, verbose=0)
    return {"clean_accuracy": clean, "autoattack": result.to_dict(), "seconds": round(time.perf_counter() - start, 1)}


def choose(rows: dict, keras_clean: float) -> str | None:
    eligible = {k: r for k, r in rows.items() if r["clean_accuracy"] >= keras_clean - CLEAN_GAP}
    return max(eligible, key=lambda k: eligible[k]["autoattack"]["robust_accuracy"], default=None)


def pct(row: dict) -> str:
    aa = row["autoattack"]
    return with_interval(aa["robust_accuracy"], aa["robust_interval95"])


def markdown(data: dict) -> str:
    keras_row = data["keras"]
    lines = ["# Fine-tuning AT-ft w4a4's Akida twin, chosen on the validation split", "",
             f"Command: `{data['command']}`. Code {data['machine'].get('code', 'unknown')}. Validation split: the "
             f"last {data['validation_images']} Fashion-MNIST training images (clean accuracy on all; AutoAttack "
             f"{data['version']} white-box on the first {data['images']}), L∞ ε = {EPS}, seed {data['seed']}. "
             f"The twin is trained with TRADES (β = 3, ε = 0.1, 7 steps), Adam {data['learning_rate']:g}, batch 128, "
             "on the fit split. Rule: the highest AutoAttack accuracy among the epochs with validation clean "
             f"accuracy at most {100 * CLEAN_GAP:g} point below the Keras model's. The test set was not read. "
             "Times were measured while another job shared the 2 cores.", "",
             "| model | clean % (val) | AutoAttack % (val, 95% CI) | train s | score s |", "|---|---|---|---|---|",
             f"| Keras AT-ft w4a4 (the attacked model) | {100 * keras_row['clean_accuracy']:.2f} | {pct(keras_row)} "
             f"| — | {keras_row['seconds']:.0f} |"]
    for name, row in data["epochs"].items():
        mark = " **(chosen)**" if name == data["chosen"] else ""
        epochs = f"{name} epoch{'' if name == '1' else 's'}"
        lines.append(f"| Akida twin, {epochs}{mark} | {100 * row['clean_accuracy']:.2f} | {pct(row)} | "
                     f"{row.get('train_seconds') or '—'} | {row['seconds']:.0f} |")
    chosen = data["chosen"]
    lines += ["", f"Chosen: {f'{chosen} epochs' if chosen is not None else 'none within the clean gap'}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="the longest fine-tuning scored (default 3)")
    parser.add_argument("--images", type=int, default=1000, help="validation images under AutoAttack (default 1000)")
    parser.add_argument("--version", default="fast", choices=("standard", "fast"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.images < 1:
        parser.error("--epochs and --images take a positive number")
    x, y = kq.datasets.load("fashion_mnist", "validation")
    adv, _ = defense_model(args.seed)
    keras_model, keras_info = defense_fine_tuned(adv, "w4a4", args.seed)
    tuned = akida_fine_tuned(keras_model, args.epochs, args.seed)
    keras_row = score(keras_model, x, y, args.images, args.version, args.seed)
    log(f"Keras w4a4: clean {keras_row['clean_accuracy']:.2%}, "
        f"AutoAttack {keras_row['autoattack']['robust_accuracy']:.2%}")
    rows = {}
    x_cal = akida_calibration(args.seed)
    carried = kq.export.akida_twin(keras_model, x_cal)
    for epoch, (quantized, info) in enumerate([(carried.quantized, {}), *tuned]):
        twin = carried if epoch == 0 else kq.export.akida_twin(quantized, x_cal)
        trained = info.get("trained", {}).get("training", {})
        rows[str(epoch)] = {**score(twin.model, x, y, args.images, args.version, args.seed),
                            "train_seconds": trained.get("train_seconds"), "training": info}
        log(f"twin after {epoch} epochs: clean {rows[str(epoch)]['clean_accuracy']:.2%}, "
            f"AutoAttack {rows[str(epoch)]['autoattack']['robust_accuracy']:.2%}")
    command = "./run.sh bench akida_fine_tune" + (f" --epochs {args.epochs}" if args.epochs != 3 else "") + (
        f" --version {args.version}" if args.version != "fast" else "") + (
        f" --images {args.images}" if args.images != 1000 else "")
    data = {"command": command, "machine": machine(), "eps": EPS, "images": args.images, "version": args.version,
            "validation_images": int(len(x)), "seed": args.seed, "learning_rate": AKIDA_FINE_TUNE_LR,
            "clean_gap": CLEAN_GAP, "keras": {**keras_row, "training": keras_info}, "epochs": rows,
            "chosen": choose(rows, keras_row["clean_accuracy"])}
    publish("akida_fine_tune", False, data, markdown(data))


if __name__ == "__main__":
    main()

"""Choose how the Adv. model's w4a4 copy is fine-tuned, on the validation split (issue 19).

The deployed w4a4 file is to be within 1.5 points of the Adv. model under AutoAttack. Its
function is the AT-ft w4a4 Keras twin's (benchmarks/results/robustness_gap.md), so the gap is
decided by how the quantized copy is fine-tuned. Each candidate of
``_models.FINE_TUNE_CANDIDATES`` fine-tunes the Adv. model's w4a4 copy (RobustQuantizer,
calibrated on 1,024 fit-split images) with the Adv. model's objective on the fit split (or
its distilled form, the Adv. model's predictions as the KL target: ARD); the
Adv. model and each copy are scored on the validation split: clean accuracy on all 5,000,
AutoAttack (``--version``, fast by default: APGD-CE and APGD-T) on the first ``--images``,
L∞ ε = 0.1. Each copy is paired with the Adv. model on the same inputs (``kq.paired``). The
rule: among the copies whose validation clean accuracy is at most 1 point below the Adv.
model's, the highest AutoAttack accuracy. The test set is not read.

    ./run.sh bench fine_tune_recipes --train lr1e-4-e4-ema    # fine-tune (or load) one candidate
    ./run.sh bench fine_tune_recipes                          # fine-tune what is missing, score, choose

A scored model is kept in benchmarks/.cache/fine_tune_cells.json under a fingerprint of its
weights, the settings and the source (``--rescore``: score all again).
"""

from __future__ import annotations

from pathlib import Path

import keras_qrobust as kq
from _common import finished_results, machine, publish, source_digest
from _models import (DEFENSE_DESCRIPTION, DEFENSE_FINE_TUNE_CHOICE, FINE_TUNE_CANDIDATES, defense_fine_tuned,
                     defense_model, describe_fine_tune)
from keras_qrobust.bench import log
from recipes import EPS, candidate_names, candidate_parser, choose, command_line, paired_cell, paired_with, \
    scored

CLEAN_GAP = 0.01
SOURCE = source_digest(Path(__file__), Path(__file__).with_name("recipes.py"))
ADV = "Adv. (float)"


def markdown(data: dict) -> str:
    lines = ["# Fine-tuning the Adv. model's w4a4 copy, chosen on the validation split", "",
             f"Command: `{data['command']}`. Code {data['machine'].get('code', 'unknown')}. Validation split: the "
             f"last {data['validation_images']} Fashion-MNIST training images (clean accuracy on all; AutoAttack "
             f"{data['version']} on the first {data['images']}), L∞ ε = {EPS}, seed {data['seed']}. Adv.: "
             f"{DEFENSE_DESCRIPTION}. Each w4a4 copy is fine-tuned on the fit split. Rule: the highest AutoAttack "
             f"accuracy among the copies with validation clean accuracy at most {100 * CLEAN_GAP:g} point below the "
             "Adv. model's. The test set was not read.", "",
             "| model | fine-tuning | train s | clean % (val) | AutoAttack % (val, 95% CI) "
             "| robust Δ vs Adv. (paired, 95% CI; only copy vs only Adv.; McNemar p) |",
             "|---|---|---|---|---|---|"]
    for name, row in data["models"].items():
        aa = row["autoattack"]
        low, high = aa["robust_interval95"]
        mark = " **(chosen)**" if name == data["chosen"] else ""
        delta = paired_cell(data["paired"].get(name, {}).get("robust"))
        lines.append(f"| {name}{mark} | {row.get('recipe', '—')} | {row.get('train_seconds') or '—'} "
                     f"| {100 * row['clean_accuracy']:.2f} | {100 * aa['robust_accuracy']:.2f} "
                     f"({100 * low:.1f}–{100 * high:.1f}) | {delta} |")
    lines += ["", f"Chosen: {data['chosen'] or 'none within the clean floor'} (in use: {data['in_use']}).",
              "Training times are each training's own record; another job may have shared the 2 cores."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = candidate_parser(__doc__, FINE_TUNE_CANDIDATES, "fast")
    args = parser.parse_args(argv)
    names = candidate_names(parser, args, FINE_TUNE_CANDIDATES)
    adv, _ = defense_model(args.seed)
    if args.train:
        _, info = defense_fine_tuned(adv, "w4a4", args.seed, args.train)
        log(f"{args.train}: {info}")
        return
    x, y = kq.datasets.load("fashion_mnist", "validation")
    finished = None if args.rescore else finished_results("fine_tune_cells")
    rows = {ADV: scored(adv, x, y, args, finished, SOURCE)}
    for name in names:
        model, info = defense_fine_tuned(adv, "w4a4", args.seed, name)
        trained = info.get("trained", {}).get("training", info)
        rows[name] = {**scored(model, x, y, args, finished, SOURCE),
                      "recipe": describe_fine_tune(FINE_TUNE_CANDIDATES[name]),
                      "train_seconds": trained.get("train_seconds"), "training": info}
        log(f"{name}: clean {rows[name]['clean_accuracy']:.2%}, "
            f"AutoAttack {rows[name]['autoattack']['robust_accuracy']:.2%}")
    data = {"command": command_line("fine_tune_recipes", args, names, FINE_TUNE_CANDIDATES, "fast"),
            "machine": machine(), "eps": EPS, "images": args.images, "validation_images": int(len(x)),
            "version": args.version, "seed": args.seed, "clean_gap": CLEAN_GAP, "models": rows,
            "chosen": choose(rows, rows[ADV]["clean_accuracy"] - CLEAN_GAP, skip=(ADV,)),
            "in_use": DEFENSE_FINE_TUNE_CHOICE, "paired": paired_with(rows, ADV)}
    publish("fine_tune_recipes", False, data, markdown(data))


if __name__ == "__main__":
    main()

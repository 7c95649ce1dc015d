"""Which grid costs the Adv. model's quantized copy its robustness: weights or activations (issue 19).

The AT-ft w4a4 copy is about 3 points less robust than the Adv. model under AutoAttack on the
validation split (benchmarks/results/fine_tune_recipes.md), whichever fine-tuning was tried.
This separates the two grids it adds: copies at ``--settings`` (default w8a4: 4-bit
activations only, and w4a8: 4-bit weights only, beside w4a4) are each quantized by
RobustQuantizer (calibrated on 1,024 fit-split images) and fine-tuned with the in-use recipe
(``_models.DEFENSE_FINE_TUNE_CHOICE``) on the fit split, then scored on the validation split as
in fine_tune_recipes.py: clean accuracy on all 5,000, AutoAttack (``--version``, fast by
default) on the first ``--images``, L∞ ε = 0.1, each copy paired with the Adv. model on the
same inputs (``kq.paired``). It chooses nothing: it says where to look for the lost points.
The test set is not read.

    ./run.sh bench grid_gap                       # w8a4, w4a8 and w4a4 against the Adv. model
    ./run.sh bench grid_gap --settings w8a8,w4a4  # other settings
    ./run.sh bench grid_gap --train w8a4          # only fine-tune (or load) one copy

A scored model is kept in benchmarks/.cache/grid_gap_cells.json under a fingerprint of its
weights, the settings and the source (``--rescore``: score all again).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras_qrobust as kq
from _common import finished_results, machine, publish, source_digest
from _models import DEFENSE_DESCRIPTION, DEFENSE_FINE_TUNE_CHOICE, FINE_TUNE_CANDIDATES, defense_fine_tuned, \
    defense_model, describe_fine_tune
from keras_qrobust.bench import fingerprint, log
from recipes import EPS, IMAGES, check_images, paired_cell, paired_with, scored, scoring_arguments

SOURCE = source_digest(Path(__file__), Path(__file__).with_name("recipes.py"))
ADV = "Adv. (float)"
SETTINGS = ("w8a4", "w4a8", "w4a4")


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", metavar="SETTING", help="only fine-tune (or load) the copy at this setting")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated wXaY settings to fine-tune and score (default {','.join(SETTINGS)})")
    scoring_arguments(parser, "fast")
    args = parser.parse_args(argv)
    args.settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    for setting in args.settings + ([args.train] if args.train else []):
        try:
            kq.RobustQuantizer.from_setting(setting)
        except ValueError as error:
            parser.error(f"--settings: {error}")
    if not args.settings:
        parser.error("--settings: give at least one wXaY setting, e.g. w8a4,w4a8")
    check_images(parser, args)
    return args


def command_line(args) -> str:
    return "./run.sh bench grid_gap" + (f" --settings {','.join(args.settings)}"
                                        if tuple(args.settings) != SETTINGS else "") + (
        f" --images {args.images}" if args.images != IMAGES else "") + (
        f" --version {args.version}" if args.version != "fast" else "")


def markdown(data: dict) -> str:
    lines = ["# Where the quantized copy loses robustness: weight grid or activation grid", "",
             f"Command: `{data['command']}`. Code {data['machine'].get('code', 'unknown')}. Validation split: the "
             f"last {data['validation_images']} Fashion-MNIST training images (clean accuracy on all; AutoAttack "
             f"{data['version']} on the first {data['images']}), L∞ ε = {EPS}, seed {data['seed']}. Adv.: "
             f"{DEFENSE_DESCRIPTION}. Every copy: RobustQuantizer at its setting, then {data['fine_tune']} on the "
             "fit split. The test set was not read.", "",
             "| model | train s | clean % (val) | AutoAttack % (val, 95% CI) "
             "| robust Δ vs Adv. (paired, 95% CI; only copy vs only Adv.; McNemar p) "
             "| clean Δ vs Adv. (paired) |",
             "|---|---|---|---|---|---|"]
    for name, row in data["models"].items():
        aa = row["autoattack"]
        low, high = aa["robust_interval95"]
        pair = data["paired"].get(name, {})
        lines.append(f"| {name} | {row.get('train_seconds') or '—'} | {100 * row['clean_accuracy']:.2f} "
                     f"| {100 * aa['robust_accuracy']:.2f} ({100 * low:.1f}–{100 * high:.1f}) "
                     f"| {paired_cell(pair.get('robust'))} | {paired_cell(pair.get('clean'))} |")
    lines += ["", "A difference whose interval holds 0 (p ≥ 0.05) is inside the noise. Training times are each "
              "training's own record; another job may have shared the 2 cores."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    args = parse(argv)
    adv, _ = defense_model(args.seed)
    if args.train:
        _, info = defense_fine_tuned(adv, args.train, args.seed)
        log(f"{args.train}: {info}")
        return
    x, y = kq.datasets.load("fashion_mnist", "validation")
    finished = None if args.rescore else finished_results("grid_gap_cells")
    # which weights were scored: a retraining that reproduces them has the same digest
    rows = {ADV: {**scored(adv, x, y, args, finished, SOURCE), "weights_sha256": fingerprint(adv, source=b"")}}
    for setting in args.settings:
        model, info = defense_fine_tuned(adv, setting, args.seed)
        trained = info.get("trained", {}).get("training", info)
        rows[setting] = {**scored(model, x, y, args, finished, SOURCE),
                         "weights_sha256": fingerprint(model, source=b""),
                         "train_seconds": trained.get("train_seconds"), "training": info}
        log(f"{setting}: clean {rows[setting]['clean_accuracy']:.2%}, "
            f"AutoAttack {rows[setting]['autoattack']['robust_accuracy']:.2%}")
    data = {"command": command_line(args), "machine": machine(), "eps": EPS, "images": args.images,
            "validation_images": int(len(x)), "version": args.version, "seed": args.seed,
            "fine_tune": describe_fine_tune(FINE_TUNE_CANDIDATES[DEFENSE_FINE_TUNE_CHOICE]),
            "models": rows, "paired": paired_with(rows, ADV)}
    publish("grid_gap", False, data, markdown(data))


if __name__ == "__main__":
    main()

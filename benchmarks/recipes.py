"""Choose the defenses' Adv. model recipe on the validation split, never on the test set.

Each candidate of ``_models.RECIPE_CANDIDATES`` is trained on the fit split (the Fashion-MNIST
training images without the last 5,000) and scored on the validation split (those 5,000):
clean accuracy on all of them, robust accuracy under AutoAttack (``--version``, standard by
default) on the first ``--images`` of them, L∞ ε = 0.1. The rule: among the candidates whose
validation clean accuracy is at least 87 % and whose parameters fit a committed checkpoint
(at most 250,000: about 1 MB), the highest AutoAttack robust accuracy; the test set is not
read by this script. The size bound is there because every robustness figure is about one
set of weights: a model that cannot be committed (the tracked tree stays under 5 MB, issue
22) is retrained on each machine, and a retrained model is a different model. When no
candidate meets both, the one in use (``in_use``) is the best above the clean floor of any
size, retrained on each machine, until a small one qualifies.

    ./run.sh bench recipes --train trades6-ema     # train (or load) one candidate
    ./run.sh bench recipes                         # train what is missing, score all, choose

Beside each candidate's own figures, its paired difference from the chosen one on the same
inputs (``kq.paired``: Newcombe's interval, McNemar's exact test), so that a lead inside the
noise is called so.

A scored candidate is kept in benchmarks/.cache/recipes_cells.json under a fingerprint of its
weights, the settings and the source (``--rescore``: score all again).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import keras_qrobust as kq
from _common import finished_results, machine, publish, source_digest
from _models import RECIPE_CANDIDATES, describe_recipe, trained_model
from keras_qrobust.bench import fingerprint, log

EPS = 0.1
CLEAN_FLOOR = 0.87
MAX_PARAMETERS = 250_000
IMAGES = 1000
SOURCE = source_digest(Path(__file__))


def packed(outcomes: np.ndarray) -> str:
    """Per-input booleans as a hex string (8 inputs a byte)."""
    return np.packbits(np.asarray(outcomes, bool)).tobytes().hex()


def unpacked(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8))[:n].astype(bool)


def score(model, x, y, images: int, version: str, seed: int) -> dict:
    start = time.perf_counter()
    clean_correct = kq.metrics.predict_labels(model, x) == y
    result = kq.attacks.autoattack(model, x[:images], y[:images], eps=EPS, version=version, seed=seed, verbose=1)
    return {"clean_accuracy": float(clean_correct.mean()), "clean_images": int(len(x)),
            "autoattack": result.to_dict(), "seconds": round(time.perf_counter() - start, 1),
            "clean_correct": packed(clean_correct), "robust": packed(result.robust)}


def paired_with(rows: dict, chosen: str | None) -> dict:
    """Each other candidate's paired difference from ``chosen``: clean (all validation images)
    and robust (the AutoAttack images); ``{}`` for rows scored before per-input outcomes were kept."""
    if chosen is None or "robust" not in rows[chosen]:
        return {}
    base = rows[chosen]
    out = {}
    for name, row in rows.items():
        if name == chosen or "robust" not in row:
            continue
        out[name] = {
            kind: kq.paired.paired_difference(unpacked(row[key], n), unpacked(base[key], n)).to_dict()
            for kind, key, n in (("clean", "clean_correct", row["clean_images"]),
                                 ("robust", "robust", row["autoattack"]["n"]))}
    return out


def paired_cell(pair: dict | None) -> str:
    """A paired difference (``kq.paired`` ``to_dict``) in points: the difference, its 95%
    interval, the inputs only each side gets right, McNemar's p; "—" for none."""
    if pair is None:
        return "—"
    low, high = pair["interval95"]
    return (f"{100 * pair['difference']:+.2f} ({100 * low:+.2f} to {100 * high:+.2f}; "
            f"{pair['only_a']} vs {pair['only_b']}, p = {pair['p_value']:.3g})")


def choose(rows: dict, floor: float = CLEAN_FLOOR, skip: tuple = (), max_parameters: int | None = None) -> str | None:
    """The row with the highest AutoAttack accuracy among those (not in ``skip``) whose clean
    accuracy is at least ``floor`` and, with ``max_parameters``, whose ``parameters`` are at
    most that."""
    eligible = {k: r for k, r in rows.items() if k not in skip and r["clean_accuracy"] >= floor
                and (max_parameters is None or r["parameters"] <= max_parameters)}
    return max(eligible, key=lambda k: eligible[k]["autoattack"]["robust_accuracy"], default=None)


def in_use(data: dict) -> str | None:
    """The candidate the defenses use: the chosen one, else (none within the size bound) the
    best above the clean floor of any size."""
    return data["chosen"] or choose(data["candidates"])


def markdown(data: dict) -> str:
    lines = ["# Adv. model recipe, chosen on the validation split", "",
             f"Command: `{data['command']}`. Validation split: the last {data['validation_images']} Fashion-MNIST "
             f"training images (clean accuracy on all; AutoAttack {data['version']} on the first {data['images']}), "
             f"L∞ ε = {EPS}, seed {data['seed']}. Rule: the highest AutoAttack robust accuracy among the candidates "
             f"with validation clean accuracy ≥ {100 * CLEAN_FLOOR:g}% and at most {MAX_PARAMETERS:,} parameters (a "
             "checkpoint that can be committed under the 5 MB tree cap, so that every machine attacks the same "
             "weights). The test set was not read. Training times were measured while other jobs shared the 2 "
             "cores.", "",
             "| candidate | recipe | parameters | train s | clean % (val) | AutoAttack % (val, 95% CI) |",
             "|---|---|---|---|---|---|"]
    for name, row in data["candidates"].items():
        aa = row["autoattack"]
        low, high = aa["robust_interval95"]
        mark = " **(chosen)**" if name == data["chosen"] else ""
        seconds = f"{row['train_seconds']} (last part of a resumed run)" if row.get("train_resumed") else \
            row["train_seconds"]
        lines.append(f"| {name}{mark} | {row['recipe']} | {row['parameters']:,} | {seconds} "
                     f"| {100 * row['clean_accuracy']:.2f} "
                     f"| {100 * aa['robust_accuracy']:.2f} ({100 * low:.1f}–{100 * high:.1f}) |")
    used = in_use(data)
    lines += ["", f"Chosen: {data['chosen']}." if data["chosen"] else
              "Chosen: none above the clean floor within the size bound; in use until one qualifies: "
              f"{used or 'none'} (the best above the clean floor of any size, retrained on each machine)."]
    if data.get("paired"):
        lines += ["", f"Paired against {used} on the same inputs: the candidate's accuracy minus "
                  f"{used}'s in points, the 95% interval of Newcombe's method 10, the inputs only the "
                  f"candidate vs only {used} gets right, McNemar's exact p (p ≥ 0.05 is inside the noise):",
                  "",
                  "| candidate | clean Δ (val) | AutoAttack Δ (val) |", "|---|---|---|"]
        for name, pair in data["paired"].items():
            lines.append(f"| {name} | {paired_cell(pair['clean'])} | {paired_cell(pair['robust'])} |")
    return "\n".join(lines) + "\n"


def candidate_parser(description: str, candidates: dict, version: str) -> argparse.ArgumentParser:
    """The command line recipes.py and fine_tune_recipes.py share (``version``: the default)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", choices=sorted(candidates), help="only train (or load) this candidate")
    parser.add_argument("--candidates", default=",".join(candidates),
                        help="comma-separated candidates to score (default: all; missing ones are trained)")
    scoring_arguments(parser, version)
    return parser


def scoring_arguments(parser: argparse.ArgumentParser, version: str) -> None:
    """The scoring options of every validation benchmark: --images, --version (``version``:
    the default), --seed, --rescore."""
    parser.add_argument("--images", type=int, default=IMAGES,
                        help=f"validation images under AutoAttack (default {IMAGES}; the split has 5,000)")
    parser.add_argument("--version", default=version, choices=("standard", "fast"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rescore", action="store_true", help="score every model again (the kept scores untouched)")


def check_images(parser: argparse.ArgumentParser, args) -> None:
    """``--images`` within the validation split, else a usage error."""
    if not 1 <= args.images <= 5000:
        parser.error("--images must be between 1 and 5000 (the validation split)")


def candidate_names(parser: argparse.ArgumentParser, args, candidates: dict) -> list[str]:
    """``--candidates`` as a list; an unknown name is a usage error listing the known ones."""
    names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    unknown = [n for n in names if n not in candidates]
    if unknown or not names:
        parser.error(f"--candidates: unknown {unknown or 'none given'}; choose from {', '.join(candidates)}")
    check_images(parser, args)
    return names


def command_line(script: str, args, names: list[str], candidates: dict, version: str) -> str:
    """The command that reproduces a run: the script and the arguments that differ from the defaults."""
    return f"./run.sh bench {script}" + (f" --version {args.version}" if args.version != version else "") + (
        f" --images {args.images}" if args.images != IMAGES else "") + (
        f" --candidates {','.join(names)}" if names != list(candidates) else "")


def scored(model, x, y, args, finished, source: bytes) -> dict:
    """:func:`score`, or the row kept in ``finished`` under a fingerprint of the model's weights,
    the settings and ``source``."""
    key = fingerprint(model, source=source, extra=(args.images, args.version, args.seed))
    row = finished.get(key) if finished is not None else None
    if row is None:
        row = score(model, x, y, args.images, args.version, args.seed)
        if finished is not None:
            finished.put(key, row)
    return row


def main(argv=None) -> None:
    parser = candidate_parser(__doc__, RECIPE_CANDIDATES, "standard")
    args = parser.parse_args(argv)
    if args.train:
        model, info = trained_model(seed=args.seed, **RECIPE_CANDIDATES[args.train])
        log(f"{args.train}: {info}")
        return
    names = candidate_names(parser, args, RECIPE_CANDIDATES)
    x, y = kq.datasets.load("fashion_mnist", "validation")
    finished = None if args.rescore else finished_results("recipes_cells")
    rows = {}
    for name in names:
        recipe = RECIPE_CANDIDATES[name]
        model, info = trained_model(seed=args.seed, **recipe)
        row = scored(model, x, y, args, finished, SOURCE)
        trained = info.get("trained", {}).get("training", info)
        rows[name] = {**row, "recipe": describe_recipe(recipe), "parameters": int(model.count_params()),
                      "train_seconds": trained.get("train_seconds"),
                      "train_resumed": bool(trained.get("resumed_from")), "training": info}
        log(f"{name}: clean {row['clean_accuracy']:.2%}, AutoAttack {row['autoattack']['robust_accuracy']:.2%}")
    command = command_line("recipes", args, names, RECIPE_CANDIDATES, "standard")
    chosen = choose(rows, max_parameters=MAX_PARAMETERS)
    used = in_use({"chosen": chosen, "candidates": rows})
    data = {"command": command, "machine": machine(), "eps": EPS, "images": args.images,
            "validation_images": int(len(x)), "version": args.version, "seed": args.seed,
            "clean_floor": CLEAN_FLOOR, "max_parameters": MAX_PARAMETERS, "candidates": rows, "chosen": chosen,
            "in_use": used, "paired": paired_with(rows, used)}
    publish("recipes", False, data, markdown(data))


if __name__ == "__main__":
    main()

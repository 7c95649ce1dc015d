"""The robust model `./run.sh demo` starts from: train it, score it on the validation split.

``_models.DEMO_RECIPE``: TRADES (β = 3, ε = 0.1, 7 steps) with weight averaging (EMA 0.999), the
recipe chosen on validation for the defenses (benchmarks/recipes.py), on the width-1 cnn_small
(225,034 parameters) for 15 epochs on the fit split. Scored on the validation split only —
clean accuracy on all 5,000 images and AutoAttack (``--version``, fast by default: what the
demo itself runs) on the first ``--images`` — so that it can be chosen and committed without
touching the test set. Commit it with ``benchmarks/checkpoint.py add STEM``.

    ./run.sh bench demo_model          # writes benchmarks/results/demo_model.{json,md}
"""

from __future__ import annotations

import argparse

import keras_qrobust as kq
from _common import machine, publish
from _models import DEMO_RECIPE, describe_recipe, model_path, trained_model
from keras_qrobust.bench import log

EPS = 0.1


def train_seconds(info: dict):
    """Training seconds from a fresh ``trained_model`` info or a cached model's record."""
    return info.get("train_seconds") or info.get("trained", {}).get("training", {}).get("train_seconds", "?")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="validation images AutoAttack runs on")
    parser.add_argument("--version", default="fast", choices=("fast", "standard"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, info = trained_model(seed=args.seed, **DEMO_RECIPE)
    x, y = kq.datasets.load("fashion_mnist", "validation")
    clean = kq.metrics.accuracy(model, x, y)
    log(f"validation clean accuracy {clean:.2%}")
    result = kq.attacks.autoattack(model, x[:args.images], y[:args.images], eps=EPS, version=args.version,
                                   seed=args.seed, verbose=1)
    low, high = result.interval()
    data = {"command": f"./run.sh bench demo_model --images {args.images} --version {args.version}",
            "machine": machine(), "recipe": describe_recipe(DEMO_RECIPE), "stem": model_path(seed=args.seed,
                                                                                           **DEMO_RECIPE).stem,
            "parameters": int(model.count_params()), "training": info, "split": "validation",
            "clean_accuracy": clean, "clean_images": int(len(x)), "autoattack": result.to_dict()}
    markdown = "\n".join([
        "# The demo's starting model", "",
        f"Command: `{data['command']}`. Machine: {data['machine']['cpus']} CPUs, {data['machine']['date']}, code "
        f"{data['machine']['code']}.", "",
        f"Recipe: {data['recipe']}; {data['parameters']:,} parameters; trained in {train_seconds(info)} s.",
        "", "| split | clean % | AutoAttack % (95% CI) | n |", "|---|---|---|---|",
        f"| validation | {100 * clean:.2f} (n = {len(x)}) | {100 * result.robust_accuracy:.2f} "
        f"({100 * low:.1f}–{100 * high:.1f}), {args.version} | {args.images} |", ""])
    publish("demo_model", False, data, markdown)


if __name__ == "__main__":
    main()

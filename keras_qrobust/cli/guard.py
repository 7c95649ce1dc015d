"""``keras-qrobust guard``: the whole pipeline (:mod:`keras_qrobust.guard`) on the user's model."""

from __future__ import annotations

import time

from ..guard.config import FULL, QUICK, TARGETS
from .checks import executor_of
from .options import add_force, add_ray, add_trust
from .terminal import say

__all__ = ["DEFAULT_GUARD_OUT", "KNOBS", "add_parser", "run"]

DEFAULT_GUARD_OUT = "results/guard"

#: --flag -> (type, what): the knobs --quick presets (keras_qrobust.guard.config QUICK and FULL;
#: docs/guard.md's table states both, checked by tests/test_docs.py)
KNOBS = {"epochs": (int, "adversarial training epochs"),
         "train-samples": (int, "use the first N training inputs"),
         "test-samples": (int, "score on the first N test inputs"),
         "train-attack": (None, "adversarial training attack: pgd or fgsm_rs"),
         "pgd-steps": (int, "PGD steps of the evaluation attacks"),
         "surrogate-epochs": (int, "training epochs of the transfer surrogate"),
         "uap-samples": (int, "training inputs the UAPs are crafted on"),
         "autoattack": (None, "AutoAttack version of the robust accuracy: standard or fast"),
         "autoattack-samples": (int, "test inputs AutoAttack and Square on the artifact run on"),
         "square-queries": (int, "Square queries per input on the exported artifact")}


def add_parser(commands) -> None:
    g = commands.add_parser(
        "guard", help="make a model robust, quantize, attack, choose, export, re-measure and report",
        description="Adversarial training (unless the model is already robust), RobustQuantizer PTQ at each "
        "candidate, PGD / UAP / ensemble UAP / transfer attacks on each, Zhou 2022 Algorithm 1 choice, export to "
        "the target, re-measurement in the target's runtime, and a report (HTML, Markdown, JSON, plots). Every "
        "stage is checkpointed in --out: rerun the same command to resume.")
    g.add_argument("--model", help="a saved tf_keras model (default: train cnn_small on the dataset)")
    g.add_argument("--dataset", default="fashion_mnist",
                   help="a built-in name, a TFDS name, or an .npz with x_train, y_train, x_test, y_test "
                   "(default: fashion_mnist)")
    g.add_argument("--eps", type=float, default=0.1, help="L∞ attack budget in (0, 1] (default: 0.1)")
    g.add_argument("--target", default="tflite-int8",
                   help=f"export target: {', '.join(TARGETS)} (default: tflite-int8)")
    g.add_argument("--candidates", default="w8a8,w6a6,w4a4", help="bit widths to try (default: w8a8,w6a6,w4a4)")
    g.add_argument("--floor", type=float, default=None,
                   help="clean-accuracy floor (a fraction) a candidate must exceed "
                   "(default: the float model's minus 0.05)")
    g.add_argument("--out", default=DEFAULT_GUARD_OUT, help=f"output folder (default: {DEFAULT_GUARD_OUT})")
    g.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    g.add_argument("--no-train", action="store_true", help="never adversarially train (needs --model)")
    add_trust(g)
    add_force(g)
    add_ray(g, "each model's attacks (PGD, UAP, AutoAttack)")
    g.add_argument("--allow-mismatch", action="store_true",
                   help="exit 0 even when the exported file agrees with the attacked Keras model on fewer than 99.5%% "
                        "of the test inputs (the report says so either way)")
    g.add_argument("--quick", action="store_true",
                   help=f"small slices and few epochs ({QUICK['train_samples']:,} training and "
                        f"{QUICK['test_samples']:,} test inputs, FGSM-RS {QUICK['epochs']} epochs, "
                        f"PGD-{QUICK['pgd_steps']})")
    for flag, (kind, what) in KNOBS.items():
        key = flag.replace("-", "_")
        full = "all" if FULL[key] is None else FULL[key]
        g.add_argument(f"--{flag}", type=kind, help=f"{what} (quick {QUICK[key]}, else {full})")


def run(args) -> int:
    from .. import guard

    config = guard.GuardConfig.from_args(args)
    executor, address = executor_of(args)
    start = time.perf_counter()
    code = guard.run(config, args.out, allow_mismatch=args.allow_mismatch, trust_model=args.trust_model,
                     force=args.force, executor=executor, address=address)
    say(f"keras-qrobust guard: {'done' if code == 0 else 'ended with exit code ' + str(code)} in "
        f"{time.perf_counter() - start:.0f} s")
    return code

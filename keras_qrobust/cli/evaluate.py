"""``keras-qrobust evaluate``: the robustness grid (:func:`keras_qrobust.evaluate`) of saved
models, written as a report."""

from __future__ import annotations

from pathlib import Path

from ..evaluate import EVALUATE_ATTACKS
from .checks import attack_spec, check_eps_values, check_model_on, executor_of, load_test_split, positive
from .errors import UsageError
from .options import add_data_arguments, add_force, add_ray, add_trust, floats
from .outputs import new_folder, save_report

__all__ = ["add_parser", "run"]


def add_parser(commands) -> None:
    e = commands.add_parser("evaluate", help="robustness grid of saved models, written as a report",
                            description="kq.evaluate: the accuracy of every --model under every attack at every ε, "
                            "written to --out as report.html, report.md, report.json and plots/.")
    e.add_argument("--model", action="append", required=True,
                   help="a saved tf_keras model (repeat for several; names ending in wXaY give the bits plots)")
    add_trust(e)
    add_force(e)
    e.add_argument("--attacks", default="fgsm,pgd", help="comma-separated attacks (default: fgsm,pgd)")
    e.add_argument("--eps", type=floats, default=[0.0, 0.05, 0.1], help="ascending ε values (default: 0,0.05,0.1)")
    e.add_argument("--pgd-steps", type=int, default=20, help="PGD steps (default: 20)")
    e.add_argument("--autoattack-version", default="standard", choices=("standard", "fast"),
                   help="the autoattack version when --attacks names it (default: standard)")
    e.add_argument("--out", required=True, help="a new (or empty) folder for the report")
    e.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing the report files")
    add_ray(e, "the grid's cells")
    e.add_argument("--shard-size", type=int, default=None, metavar="N",
                   help="split each per-input cell (AutoAttack, PGD, ...) into tasks of N test inputs, so one long "
                   "cell spreads over Ray workers (the numbers depend on N; default: whole cells)")
    add_data_arguments(e, test_default=1000)


def run(args) -> int:
    from ..evaluate import evaluate
    from ..inputs import load_model_file

    attacks = [attack_spec(a.strip()).name for a in args.attacks.split(",") if a.strip()]
    if not attacks:
        raise UsageError(f"--attacks is empty; choose from {', '.join(EVALUATE_ATTACKS)}")
    eps = check_eps_values(args.eps, allow_zero=True)
    if eps != sorted(eps):
        raise UsageError(f"--eps {args.eps} must be ascending, e.g. --eps 0,0.05,0.1")
    positive(args.shard_size, "--shard-size")
    executor, address = executor_of(args)
    folder = new_folder(args.out, args.overwrite)
    names = [Path(p).stem for p in args.model]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"two --model files are named {twice[0]} (the report names models by file name); rename or "
                         "copy one under another name")
    models = {name: load_model_file(p, trust=args.trust_model) for name, p in zip(names, args.model)}
    data = load_test_split(args)
    for path, model in zip(args.model, models.values()):
        check_model_on(model, data, args, f"--model {path}")
    report = evaluate(models, (data.x_test, data.y_test), attacks=attacks, eps=eps, pgd_steps=args.pgd_steps,
                      seed=args.seed, options={"autoattack": {"version": args.autoattack_version}},
                      executor=executor, address=address, shard_size=args.shard_size, trust=args.trust_model)
    report.provenance.pop("seconds", None)  # keep the report deterministic
    save_report(report, folder, args.overwrite)
    print(report.to_markdown())
    return 0

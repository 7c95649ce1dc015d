"""``keras-qrobust attack``: attack a saved model at each ε, print clean and attacked accuracy."""

from __future__ import annotations

from ..evaluate import EVALUATE_ATTACKS
from .checks import attack_spec, check_eps_values, load_test_split
from .options import add_data_arguments, add_force, add_trust, floats
from .outputs import output_file
from .terminal import say

__all__ = ["add_parser", "run"]


def add_parser(commands) -> None:
    a = commands.add_parser("attack", help="attack a saved model, print clean and attacked accuracy",
                            description="Attack --model on the test inputs at each ε and print clean and attacked "
                            "top-1 accuracy (white-box against the model).")
    a.add_argument("--model", required=True, help="a saved tf_keras model")
    add_trust(a)
    add_force(a)
    a.add_argument("--attack", default="pgd", help=f"one of {', '.join(EVALUATE_ATTACKS)} (default: pgd)")
    a.add_argument("--eps", type=floats, default=[0.1], help="comma-separated L∞ budgets in (0, 1] (default: 0.1)")
    a.add_argument("--pgd-steps", type=int, default=20, help="PGD steps (default: 20)")
    a.add_argument("--autoattack-version", default="standard", choices=("standard", "fast"),
                   help="with --attack autoattack: standard (APGD-CE, APGD-T, FAB-T, Square) or fast (APGD-CE, "
                   "APGD-T with 3 targets) (default: standard)")
    add_data_arguments(a, test_default=1000)
    a.add_argument("--json", help="also write the results as JSON to this (new) file")
    a.add_argument("--overwrite", action="store_true", help="replace an existing --json file")


def run(args) -> int:
    from .._tables import markdown_table, percent
    from ..evaluate import evaluate
    from ..inputs import load_model_file

    spec = attack_spec(args.attack)
    eps = sorted(check_eps_values(args.eps, allow_zero=False))
    if args.json:
        output_file(args.json, ".json", args.overwrite, "--json")
    model = load_model_file(args.model, trust=args.trust_model)
    data = load_test_split(args, model)
    if spec.kind == "suite":
        return _autoattack(args, model, data, eps)
    report = evaluate({"model": model}, (data.x_test, data.y_test), attacks=[spec.name], eps=[0.0, *eps],
                      pgd_steps=args.pgd_steps, seed=args.seed, verbose=0)
    row = report.accuracy["model"][spec.name]
    results = [{"eps": e, "clean": row[0], "attacked": a} for e, a in zip(eps, row[1:])]
    print(f"{args.model} on {len(data.x_test)} {args.dataset} test inputs; "
          f"{report.provenance['attacks'][spec.name]}, seed {args.seed}\n")
    rows = [[spec.name, f"{r['eps']:g}", percent(r["clean"]), percent(r["attacked"])] for r in results]
    print(markdown_table(["attack", "ε", "clean %", "attacked %"], rows))
    for note in report.provenance.get("integrity", {}).values():
        print(f"\n! {note}")
    if args.json:
        from .._io import write_json

        write_json(args.json, {"model": args.model, "attack": spec.name, "results": results}, overwrite=args.overwrite)
    return 0


def _autoattack(args, model, data, eps: list[float]) -> int:
    """``attack --attack autoattack``: robust accuracy with its interval and the per-attack breakdown."""
    from .._tables import markdown_table, percent
    from ..attacks import autoattack

    results, rows = [], []
    for e in eps:
        result = autoattack(model, data.x_test, data.y_test, eps=e, version=args.autoattack_version, seed=args.seed,
                            verbose=0)
        low, high = result.interval()
        results.append({"eps": e, **result.to_dict()})
        after = ", ".join(f"{k} {percent(v)}" for k, v in result.accuracy_after.items() if k != "clean")
        rows.append([f"{e:g}", percent(result.clean_accuracy), percent(result.robust_accuracy),
                     f"{percent(low)}–{percent(high)}", after])
        for finding in result.findings:
            say(f"ε = {e:g}: {finding}")
    print(f"{args.model} on {len(data.x_test)} {args.dataset} test inputs; AutoAttack {args.autoattack_version} "
          f"(L∞), seed {args.seed}\n")
    print(markdown_table(["ε", "clean %", "robust %", "95% CI", "after each attack %"], rows))
    if args.json:
        from .._io import write_json

        write_json(args.json, {"model": args.model, "attack": "autoattack", "results": results},
                   overwrite=args.overwrite)
    return 0

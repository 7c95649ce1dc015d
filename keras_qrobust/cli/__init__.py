"""Command line: ``keras-qrobust guard | quantize | attack | evaluate | export | report``.

Exit codes: 0 success; 1 a stage or computation failed (or guard found no candidate above
its clean-accuracy floor); 2 bad usage or bad input, reported in one line before anything
is written. See docs/guard.md.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

from .._io import check_new_file
from ..evaluate import EVALUATE_ATTACKS
from ..guard.config import FULL, QUICK, TARGETS, check_seed

DEFAULT_SETTINGS = "w8a8,w6a6,w4a4,w3a3,w2a2,w3"
DEFAULT_GUARD_OUT = "results/guard"


class UsageError(ValueError):
    """Bad usage or bad input of a subcommand (exit code 2)."""


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2)."""

    def error(self, message: str):
        _log(f"{self.prog}: error: {message} (see {self.prog} --help)")
        raise SystemExit(2)


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _add_data_arguments(p, test_default=None) -> None:
    p.add_argument("--dataset", default="fashion_mnist",
                   help="a built-in name (fashion_mnist, digits), a TFDS name, or an .npz with x_train, y_train, "
                   "x_test, y_test (default: fashion_mnist)")
    p.add_argument("--test-samples", type=int, default=test_default, help="score on the first N test inputs")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def _add_trust(p) -> None:
    p.add_argument("--trust-model", action="store_true",
                   help="load --model even if it holds Lambda layers or names code outside Keras, tfmot and "
                   "keras_qrobust (that code runs): only for files you wrote (see docs/guard.md, Untrusted files)")


def _add_force(p) -> None:
    p.add_argument("--force", action="store_true",
                   help="go on with a --model whose clean accuracy on the data is near chance (untrained, or inputs "
                   "preprocessed differently from training)")


def _add_ray(parser, what: str) -> None:
    parser.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                        help=f"run {what} as Ray tasks: alone, on a Ray instance started on this machine; 'auto' or "
                             "host:port joins a running cluster (needs the ray extra; docs/cluster.md)")


def _executor(args) -> tuple[str, str | None]:
    """``(executor, address)`` of ``--ray``, after checking Ray is installed."""
    if args.ray is None:
        return "local", None
    from ..executor import INSTALL_HINT

    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError(f"--ray needs Ray: {INSTALL_HINT}") from None
    return "ray", None if args.ray == "local" else args.ray


def _add_guard(commands) -> None:
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
    _add_trust(g)
    _add_force(g)
    _add_ray(g, "each model's attacks (PGD, UAP, AutoAttack)")
    g.add_argument("--allow-mismatch", action="store_true",
                   help="exit 0 even when the exported file agrees with the attacked Keras model on fewer than 99.5%% "
                        "of the test inputs (the report says so either way)")
    g.add_argument("--quick", action="store_true",
                   help=f"small slices and few epochs ({QUICK['train_samples']:,} training and "
                        f"{QUICK['test_samples']:,} test inputs, FGSM-RS {QUICK['epochs']} epochs, "
                        f"PGD-{QUICK['pgd_steps']})")
    knobs = {"epochs": (int, "adversarial training epochs"),
             "train-samples": (int, "use the first N training inputs"),
             "test-samples": (int, "score on the first N test inputs"),
             "train-attack": (None, "adversarial training attack: pgd or fgsm_rs"),
             "pgd-steps": (int, "PGD steps of the evaluation attacks"),
             "surrogate-epochs": (int, "training epochs of the transfer surrogate"),
             "uap-samples": (int, "training inputs the UAPs are crafted on"),
             "autoattack": (None, "AutoAttack version of the robust accuracy: standard or fast"),
             "autoattack-samples": (int, "test inputs AutoAttack and Square on the artifact run on"),
             "square-queries": (int, "Square queries per input on the exported artifact")}
    for flag, (kind, what) in knobs.items():
        key = flag.replace("-", "_")
        full = "all" if FULL[key] is None else FULL[key]
        g.add_argument(f"--{flag}", type=kind, help=f"{what} (quick {QUICK[key]}, else {full})")


def _add_attack(commands) -> None:
    a = commands.add_parser("attack", help="attack a saved model, print clean and attacked accuracy",
                            description="Attack --model on the test inputs at each ε and print clean and attacked "
                            "top-1 accuracy (white-box against the model).")
    a.add_argument("--model", required=True, help="a saved tf_keras model")
    _add_trust(a)
    _add_force(a)
    a.add_argument("--attack", default="pgd", help=f"one of {', '.join(EVALUATE_ATTACKS)} (default: pgd)")
    a.add_argument("--eps", type=_floats, default=[0.1], help="comma-separated L∞ budgets in (0, 1] (default: 0.1)")
    a.add_argument("--pgd-steps", type=int, default=20, help="PGD steps (default: 20)")
    a.add_argument("--autoattack-version", default="standard", choices=("standard", "fast"),
                   help="with --attack autoattack: standard (APGD-CE, APGD-T, FAB-T, Square) or fast (APGD-CE, "
                   "APGD-T with 3 targets) (default: standard)")
    _add_data_arguments(a, test_default=1000)
    a.add_argument("--json", help="also write the results as JSON to this (new) file")
    a.add_argument("--overwrite", action="store_true", help="replace an existing --json file")


def _add_evaluate(commands) -> None:
    e = commands.add_parser("evaluate", help="robustness grid of saved models, written as a report",
                            description="kq.evaluate: the accuracy of every --model under every attack at every ε, "
                            "written to --out as report.html, report.md, report.json and plots/.")
    e.add_argument("--model", action="append", required=True,
                   help="a saved tf_keras model (repeat for several; names ending in wXaY give the bits plots)")
    _add_trust(e)
    _add_force(e)
    e.add_argument("--attacks", default="fgsm,pgd", help="comma-separated attacks (default: fgsm,pgd)")
    e.add_argument("--eps", type=_floats, default=[0.0, 0.05, 0.1], help="ascending ε values (default: 0,0.05,0.1)")
    e.add_argument("--pgd-steps", type=int, default=20, help="PGD steps (default: 20)")
    e.add_argument("--autoattack-version", default="standard", choices=("standard", "fast"),
                   help="the autoattack version when --attacks names it (default: standard)")
    e.add_argument("--out", required=True, help="a new (or empty) folder for the report")
    e.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing the report files")
    _add_ray(e, "the grid's cells")
    e.add_argument("--shard-size", type=int, default=None, metavar="N",
                   help="split each per-input cell (AutoAttack, PGD, ...) into tasks of N test inputs, so one long "
                   "cell spreads over Ray workers (the numbers depend on N; default: whole cells)")
    _add_data_arguments(e, test_default=1000)


def _add_export(commands) -> None:
    x = commands.add_parser("export", help="export a saved model and re-measure it in its runtime",
                            description="Export --model to --target (a RobustQuantizer model is lowered exactly; Akida "
                            "takes the float model and quantizes it itself) and score the file in its own runtime.")
    x.add_argument("--model", required=True, help="a saved tf_keras model")
    _add_trust(x)
    _add_force(x)
    x.add_argument("--target", required=True, help=f"one of {', '.join(TARGETS)}")
    x.add_argument("--output", required=True, help="the file to write (.tflite, .onnx or .fbz)")
    x.add_argument("--representative-samples", type=int, default=512, help="calibration inputs (default: 512)")
    x.add_argument("--int4-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="ONNX: store ≤4-bit weights as packed INT4 (default: whenever a layer has ≤4-bit weights; "
                        "--no-int4-weights keeps int8)")
    x.add_argument("--weight-bits", type=int, default=None,
                   help="Akida, float model: weight bits, 4 or 8 (default: 4); a quantized model keeps its own")
    x.add_argument("--activation-bits", type=int, default=None,
                   help="Akida, float model: activation bits (default: 4); a quantized model keeps its own")
    x.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    _add_data_arguments(x, test_default=1000)


def _add_report(commands) -> None:
    r = commands.add_parser("report", help="re-render a report.json as Markdown, HTML and plots",
                            description="Validate a report.json against the schema, print its Markdown, and with "
                            "--out write report.{html,md,json} and plots/ there.")
    r.add_argument("report", help="a report.json written by guard or evaluate")
    r.add_argument("--out", help="a new (or empty) folder for the re-rendered report")
    r.add_argument("--overwrite", action="store_true", help="write into a non-empty --out, replacing the report files")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="keras-qrobust", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    _add_guard(commands)
    q = commands.add_parser(
        "quantize",
        help="train (or load) a model, quantize it at wXaY settings, print the accuracy table",
        description="Train a zoo model (or load --model), post-training quantize it with "
        "RobustQuantizer at each setting and print clean test accuracy per setting.",
    )
    q.add_argument("--dataset", default="fashion_mnist", help="dataset name (default: fashion_mnist)")
    source = q.add_mutually_exclusive_group()
    source.add_argument("--model", help="a saved tf_keras model (.keras, .h5 or SavedModel folder)")
    source.add_argument("--zoo", default="cnn_small", help="zoo model to train (default: cnn_small)")
    _add_trust(q)
    _add_force(q)
    q.add_argument("--epochs", type=int, default=3, help="training epochs for --zoo (default: 3)")
    q.add_argument("--settings", default=DEFAULT_SETTINGS,
                   help=f"comma-separated wXaY / wX settings (default: {DEFAULT_SETTINGS})")
    q.add_argument("--input-weight-bits", type=int, default=8, help="bits of the first layer's weights")
    q.add_argument("--calibration", choices=("max", "percentile", "mse"), default="mse",
                   help="how ReLU ranges are chosen (default: mse)")
    q.add_argument("--calibration-samples", type=int, default=1024)
    q.add_argument("--train-samples", type=int, default=None, help="use only the first N training images")
    q.add_argument("--test-samples", type=int, default=None, help="score on the first N test images")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--save-dir", help="save the float and quantized models (.keras) here")
    q.add_argument("--overwrite", action="store_true", help="replace existing files in --save-dir and --json")
    q.add_argument("--json", help="also write the results as JSON to this file")
    _add_attack(commands)
    _add_evaluate(commands)
    _add_export(commands)
    _add_report(commands)
    for command in commands.choices.values():
        command.add_argument("--verbose", action="store_true",
                             help="also show TensorFlow's, the converters' and runtimes' own log lines and warnings")
    return parser


def _positive(value, name):
    if value is not None and value < 1:
        raise UsageError(f"{name} must be >= 1, got {value}")


def _quantize(args) -> int:
    import numpy as np

    from .. import zoo
    from .._io import atomic_path, write_json
    from .._tables import markdown_table, percent
    from ..inputs import load_data, load_model_file
    from ..metrics import accuracy
    from ..quantize import RobustQuantizer
    from ..training import set_seed, train_classifier

    for name in ("epochs", "calibration_samples", "train_samples", "test_samples"):
        _positive(getattr(args, name), f"--{name.replace('_', '-')}")
    check_seed(args.seed)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    try:
        quantizers = [RobustQuantizer.from_setting(setting, input_weight_bits=args.input_weight_bits,
                                                   calibration=args.calibration) for setting in settings]
    except (ValueError, TypeError) as error:
        raise SystemExit(f"keras-qrobust: {error}") from None
    save_dir = _new_folder(args.save_dir, overwrite=True, argument="--save-dir") if args.save_dir else None
    if args.json:
        _output_file(args.json, ".json", args.overwrite, "--json")

    data = load_data(args.dataset, args.train_samples, args.test_samples)
    x_train, y_train, x_test, y_test = data.x_train, data.y_train, data.x_test, data.y_test
    num_classes = data.num_classes

    if args.model:
        model = load_model_file(args.model, trust=args.trust_model)
        _check_model_on(model, data, args)
        trained = f"loaded from {args.model}"
    else:
        set_seed(args.seed)
        model = zoo.get(args.zoo, input_shape=x_train.shape[1:], num_classes=num_classes)

    targets = {}
    if save_dir is not None:
        names = [model.name] + [f"{model.name}_{q.setting}" for q in quantizers]
        targets = {name: save_dir / f"{name}.keras" for name in names}
        existing = [str(p) for p in targets.values() if p.exists()]
        if existing and not args.overwrite:  # refuse before training or writing anything
            raise UsageError(f"--save-dir: {', '.join(existing)} exists; pass --overwrite to replace it, or another "
                             "--save-dir")
    if not args.model:
        _log(f"training {args.zoo} on {len(x_train)} {args.dataset} images for {args.epochs} epochs ...")
        start = time.perf_counter()
        train_classifier(model, x_train, y_train, epochs=args.epochs, seed=args.seed)
        trained = f"{args.zoo}, {args.epochs} epochs, {time.perf_counter() - start:.0f} s"

    rng = np.random.default_rng(args.seed)
    calibration = x_train[rng.choice(len(x_train), min(args.calibration_samples, len(x_train)), replace=False)]
    results = [{"setting": "fp32", "accuracy": accuracy(model, x_test, y_test), "seconds": None}]
    quantized = {}
    for quantizer in quantizers:
        setting = quantizer.setting
        start = time.perf_counter()
        qmodel = quantizer.quantize(model, calibration)
        seconds = time.perf_counter() - start
        quantized[setting] = qmodel
        results.append({"setting": setting, "accuracy": accuracy(qmodel, x_test, y_test), "seconds": seconds,
                        "quantizer": str(quantizer)})
        _log(f"  {setting}: {100 * results[-1]['accuracy']:.2f}% ({seconds:.2f} s to quantize)")

    base = results[0]["accuracy"]
    rows = [
        [r["setting"], percent(r["accuracy"]), "" if r["setting"] == "fp32" else f"{100 * (r['accuracy'] - base):+.2f}",
         "" if r["seconds"] is None else f"{r['seconds']:.2f}"]
        for r in results
    ]
    print(f"\n{args.dataset}: {trained}; RobustQuantizer PTQ, {len(calibration)} calibration images, "
          f"{args.calibration} calibration, first-layer weights {args.input_weight_bits} bits; "
          f"test accuracy on {len(x_test)} images\n")
    print(markdown_table(["setting", "accuracy %", "vs fp32", "quantize s"], rows))

    for m in [model, *quantized.values()]:
        if m.name in targets:
            with atomic_path(targets[m.name], overwrite=args.overwrite) as tmp:
                m.save(tmp)
    if targets:
        _log(f"models saved in {save_dir}")
    if args.json:
        write_json(args.json, {"dataset": args.dataset, "model": trained, "results": results},
                   overwrite=args.overwrite)
    return 0


def _guard(args) -> int:
    from .. import guard

    config = guard.GuardConfig.from_args(args)
    executor, address = _executor(args)
    start = time.perf_counter()
    code = guard.run(config, args.out, allow_mismatch=args.allow_mismatch, trust_model=args.trust_model,
                     force=args.force, executor=executor, address=address)
    _log(f"keras-qrobust guard: {'done' if code == 0 else 'ended with exit code ' + str(code)} in "
         f"{time.perf_counter() - start:.0f} s")
    return code


def _check_model_on(model, data, args, argument: str = "--model") -> None:
    """``data`` fits ``model`` and ``model`` is above chance on it (unless ``--force``)."""
    from ..inputs import check_above_chance, check_data_fits

    check_data_fits(data, model)
    warning = check_above_chance(model, data, argument, force=args.force)
    if warning:
        _log(f"warning: {warning} (--force)")


def _test_data(args, model=None):
    """The first ``--test-samples`` test inputs of ``--dataset``, checked against ``model``."""
    from ..inputs import load_data

    check_seed(args.seed)
    _positive(args.test_samples, "--test-samples")
    data = load_data(args.dataset, test_samples=args.test_samples)
    if model is not None:
        _check_model_on(model, data, args)
    return data


def _check_eps_values(values: list[float], allow_zero: bool) -> list[float]:
    from ..attacks.registry import check_budget

    interval = "[0, 1]" if allow_zero else "(0, 1]"
    if not values:
        raise UsageError(f"--eps is empty: give L∞ budgets in {interval} for inputs in [0, 1]")
    try:
        return [check_budget(e, allow_zero=allow_zero) for e in values]
    except ValueError:
        raise UsageError(f"--eps {values} is out of range: give L∞ budgets in {interval} for inputs in "
                         "[0, 1]") from None


def _attack_spec(name: str):
    from ..attacks.registry import PER_MODEL_KINDS, get_attack

    try:
        return get_attack(name, *PER_MODEL_KINDS)
    except ValueError as error:
        raise UsageError(str(error)) from None


def _attack(args) -> int:
    from .._tables import markdown_table, percent
    from ..evaluate import evaluate
    from ..inputs import load_model_file

    spec = _attack_spec(args.attack)
    eps = sorted(_check_eps_values(args.eps, allow_zero=False))
    if args.json:
        _output_file(args.json, ".json", args.overwrite, "--json")
    model = load_model_file(args.model, trust=args.trust_model)
    data = _test_data(args, model)
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
            _log(f"ε = {e:g}: {finding}")
    print(f"{args.model} on {len(data.x_test)} {args.dataset} test inputs; AutoAttack {args.autoattack_version} "
          f"(L∞), seed {args.seed}\n")
    print(markdown_table(["ε", "clean %", "robust %", "95% CI", "after each attack %"], rows))
    if args.json:
        from .._io import write_json

        write_json(args.json, {"model": args.model, "attack": "autoattack", "results": results},
                   overwrite=args.overwrite)
    return 0


def _check_writable(path: Path, argument: str) -> None:
    """The nearest existing folder above ``path`` lets us write (checked before any work)."""
    import os

    parent = path.parent if not path.is_dir() else path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{argument} {path}: cannot write in {parent}; pass a path in a folder you can write")


def _output_file(path: str, suffix: str, overwrite: bool, argument: str) -> Path:
    """``path`` checked before any work: its suffix, that it is new (or ``--overwrite``), writable."""
    try:
        file = check_new_file(path, suffix, overwrite, argument, overwrite_flag="--overwrite")
    except (ValueError, FileExistsError) as error:
        raise UsageError(str(error)) from None
    _check_writable(file, argument)
    return file


def _new_folder(path: str, overwrite: bool = False, argument: str = "--out") -> Path:
    """An output folder checked before any work: new or empty (or any folder with ``--overwrite``:
    the files of the same names are replaced), writable."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{argument} {path} is a file; pass a folder")
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise UsageError(f"{argument} {path} is not empty; pass --overwrite to replace the files of the same names in "
                         "it, or a new or empty folder")
    _check_writable(folder, argument)
    return folder


def _save_report(report, folder: Path, overwrite: bool = False) -> None:
    """report.{json,md,html} and plots/*.png in ``folder`` (the plots drawn once)."""
    figures = report.figures()
    paths = report.save(folder, overwrite=overwrite, figures=figures)
    report.save_plots(folder / "plots", overwrite=overwrite, figures=figures)
    _log(f"report written to {paths['html']}")


def _evaluate(args) -> int:
    from ..evaluate import evaluate
    from ..inputs import load_model_file

    attacks = [_attack_spec(a.strip()).name for a in args.attacks.split(",") if a.strip()]
    if not attacks:
        raise UsageError(f"--attacks is empty; choose from {', '.join(EVALUATE_ATTACKS)}")
    eps = _check_eps_values(args.eps, allow_zero=True)
    if eps != sorted(eps):
        raise UsageError(f"--eps {args.eps} must be ascending, e.g. --eps 0,0.05,0.1")
    _positive(args.shard_size, "--shard-size")
    executor, address = _executor(args)
    folder = _new_folder(args.out, args.overwrite)
    names = [Path(p).stem for p in args.model]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"two --model files are named {twice[0]} (the report names models by file name); rename or "
                         "copy one under another name")
    models = {name: load_model_file(p, trust=args.trust_model) for name, p in zip(names, args.model)}
    data = _test_data(args)
    for path, model in zip(args.model, models.values()):
        _check_model_on(model, data, args, f"--model {path}")
    report = evaluate(models, (data.x_test, data.y_test), attacks=attacks, eps=eps, pgd_steps=args.pgd_steps,
                      seed=args.seed, options={"autoattack": {"version": args.autoattack_version}},
                      executor=executor, address=address, shard_size=args.shard_size, trust=args.trust_model)
    report.provenance.pop("seconds", None)  # keep the report deterministic
    _save_report(report, folder, args.overwrite)
    print(report.to_markdown())
    return 0


def _export(args) -> int:
    from .. import export, metrics
    from ..export.akida_grids import is_robust_quantized
    from ..inputs import load_data, load_model_file

    if args.target not in TARGETS:
        raise UsageError(f"unknown --target {args.target!r}; choose one of {', '.join(TARGETS)}")
    output = _output_file(args.output, TARGETS[args.target], args.overwrite, "--output")
    model = load_model_file(args.model, trust=args.trust_model)
    for name in ("representative_samples", "test_samples"):
        _positive(getattr(args, name), f"--{name.replace('_', '-')}")
    check_seed(args.seed)
    if args.target == "akida" and is_robust_quantized(model):
        given = [f"--{n.replace('_', '-')}" for n in ("weight_bits", "activation_bits") if getattr(args, n) is not None]
        if given:
            raise UsageError(f"{' and '.join(given)}: '{Path(args.model).name}' is already quantized and Akida export "
                             "keeps its bits; leave them out, or pass the float model to requantize it")
    data = load_data(args.dataset, train_samples=args.representative_samples, test_samples=args.test_samples)
    _check_model_on(model, data, args)
    if args.target == "tflite-int8":
        export.tflite(model, output, representative=data.x_train, overwrite=args.overwrite)
    elif args.target == "onnx":
        export.onnx(model, output, representative=data.x_train, int4_weights=args.int4_weights,
                    overwrite=args.overwrite)
    else:
        export.akida(model, output, samples=data.x_train, weight_bits=args.weight_bits,
                     activation_bits=args.activation_bits, overwrite=args.overwrite)
    deployed = export.load(output)
    keras_labels = metrics.predict_labels(model, data.x_test)
    deployed_labels = metrics.predict_labels(deployed, data.x_test)
    print(f"{output} ({output.stat().st_size} bytes, {deployed.format} runtime) on {len(data.x_test)} {args.dataset} "
          f"test inputs: accuracy {100 * (deployed_labels == data.y_test).mean():.2f}% (Keras model "
          f"{100 * (keras_labels == data.y_test).mean():.2f}%), top-1 agreement "
          f"{100 * (keras_labels == deployed_labels).mean():.2f}%")
    return 0


def _report(args) -> int:
    from ..report import RobustnessReport

    path = Path(args.report)
    try:
        report = RobustnessReport.load(path)
    except FileNotFoundError:
        raise UsageError(f"{args.report} does not exist; pass the report.json a guard or evaluate run wrote") from None
    except (ValueError, KeyError, TypeError) as error:  # JSON syntax or schema
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"{args.report} is not a keras_qrobust report.json ({first}); pass the report.json a guard "
                         "or evaluate run wrote") from None
    folder = _new_folder(args.out, args.overwrite) if args.out else None
    print(report.to_markdown())
    if folder is not None:
        _save_report(report, folder, args.overwrite)
    return 0


_COMMANDS = {"guard": _guard, "quantize": _quantize, "attack": _attack, "evaluate": _evaluate, "export": _export,
             "report": _report}


@contextlib.contextmanager
def _quiet(verbose: bool):
    """Without ``--verbose``: TensorFlow's, the TFLite converter's and LiteRT's native log lines
    (written straight to file descriptor 2) and Python warnings are dropped; our own messages
    and progress bars (Python's ``sys.stderr``) still show. Only when ``sys.stderr`` is the
    process's real stderr (not, e.g., a test's capture)."""
    import io
    import logging
    import os
    import warnings

    try:
        real = not verbose and sys.stderr.fileno() == 2
    except (AttributeError, OSError, io.UnsupportedOperation):
        real = False
    with warnings.catch_warnings():
        if not verbose:
            warnings.simplefilter("ignore")
        if not real:
            yield
            return
        levels = {name: logging.getLogger(name).level for name in ("tensorflow", "absl")}
        for name in levels:
            logging.getLogger(name).setLevel(logging.ERROR)
        sys.stderr.flush()
        saved, original = os.dup(2), sys.stderr
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=original.encoding, errors="backslashreplace")
        try:
            yield
        finally:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = original
            os.dup2(saved, 2)
            os.close(saved)
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def main(argv=None) -> int:
    """Run one subcommand; returns its exit code (0 ok, 1 failed, 2 bad usage or input)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a usage error (2, already printed)
        return int(exit_.code or 0)
    from ..datasets import DatasetError
    from ..guard.config import GuardInputError
    from ..transforms import UnsupportedModelError

    try:
        with _quiet(args.verbose):
            return _COMMANDS[args.command](args)
    except (UsageError, GuardInputError, FileExistsError, DatasetError) as error:
        _log(f"keras-qrobust {args.command}: {error}")  # the user's input: one line, not a traceback
        return 2
    except SystemExit as exit_:  # quantize's checks raise SystemExit("keras-qrobust: ...")
        if isinstance(exit_.code, str):
            _log(exit_.code)
            return 2
        raise
    except UnsupportedModelError as error:
        _log(f"keras-qrobust {args.command}: {str(error).splitlines()[0]}")
        return 2
    except Exception as error:  # noqa: BLE001 - a failed computation: exit 1 with its cause
        _log(f"keras-qrobust {args.command}: failed: {type(error).__name__}: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())

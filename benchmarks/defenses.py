"""Defenses on Fashion-MNIST cnn_small, in the structure of Song et al. 2020, Tables 1-4.

Rows: Orig. (standard training), Adv. (the recipe benchmarks/recipes.py chose on the validation
split by its declared rule, ``_models.DEFENSE_CHOICE``, trained on the fit split:
``_models.defense_model``) and F.L. (feedback learning on the standard model, docs/methods.md);
Orig., F.L. and the black-box surrogate are cnn_small of width 1. Each row also has (Q) =
3-bit weight-only PTQ (RobustQuantizer, per-axis symmetric), +mu = μ-law mapping of the last layer
(``apply_mu_law(mode="map")``), (Q)+mu = 3-bit with μ-law companding of the last layer
(``RobustQuantizer(3, None, mu_law_last=1)``) and, for Adv., the w4a4 PTQ copy; and the
(Q) and w4a4 copies of Adv. fine-tuned with its objective through their fake quantizers ("AT-ft",
4 epochs on the fit split, ``_models.defense_fine_tuned``: the (Q) copy starts from σ_max-optimal
clipping ratios per layer).

Columns (L∞, ε = 0.1 unless stated): clean; CW-L2 (success counted at ‖δ‖₂ ≤ 1.0); FGSM
weak (ε/2) and strong (ε); PGD-20; BIM-10; MIM-10 — white-box, then the same attacks
black-box (crafted on an independently trained surrogate cnn_small, seed 1, scored on the
row model); Gaussian N(0, ε²) and uniform U(−ε, ε) noise; and AutoAttack (standard: APGD-CE,
APGD-T, FAB-T, Square; ``fast`` with ``--quick``) on the first ``--aa-images`` test images, the
robust accuracy every claim uses, with its 95 % Wilson interval (PGD-20 and the rest stay beside
it as the Song 2020 columns). Every +mu row is also scored
with SPSA, Square, transfer (PGD-20 from the surrogate) and BPDA (PGD-20 through the
un-mapped model's gradient); a row whose best gradient attack leaves a higher accuracy
than one of those is flagged as gradient masking (docs/limits.md).

    ./run.sh bench defenses            # writes benchmarks/results/defenses.{json,md}
    ./run.sh bench defenses --quick    # small subsets and short training, a smoke run
    ./run.sh bench defenses --train-only   # only train (or load) the cached models
    ./run.sh bench defenses --save-models DIR   # also save the Orig., Adv. and F.L. models in DIR

A run keeps every row it finishes in benchmarks/.cache/defenses_rows.json, under a fingerprint
of the row's models, the settings and the source of keras_qrobust, _common.py, _models.py and this file; an
interrupted run started again reuses those rows and scores only the rest (``--rescore``: score all again).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import keras_qrobust as kq
from _common import CW_L2_BUDGET, STRONG_SPSA, STRONG_SQUARE, finished_results, machine, publish, source_digest, \
    within_l2_budget
from _models import ROBUST_EPS, ROBUST_RECIPE, defense_fine_tuned, defense_model, fine_tuned_copy, trained_model
from keras_qrobust.bench import fingerprint, log, targets_table, timed, with_interval

EPS = ROBUST_EPS
TARGET_CLEAN, TARGET_PGD, TARGET_QUANT_GAP = 0.87, 0.75, 0.03
WHITE_BOX = ("FGSM ε/2", "FGSM ε", "PGD-20", "BIM-10", "MIM-10")
SOURCE = source_digest(Path(__file__))  # the code a kept row was scored by


# ------------------------------------------------------------------------------ models
def feedback_model(base, x, y, seed: int, rounds: int, epochs: int, examples: int):
    """A copy of ``base`` retrained by feedback learning on ``examples`` training images."""
    model = kq.keras.models.clone_model(base)
    model.set_weights(base.get_weights())
    kq.defenses.compile_classifier(model)
    kq.defenses.set_seed(seed)
    history = kq.defenses.feedback_learning(model, (x[:examples], y[:examples]), t_max=2 * EPS, rounds=rounds,
                                            epochs=epochs, seed=seed)
    return model, {"margins_per_round": [np.asarray(m).tolist() for m in history.margins]}


def variants(name: str, model, x_cal, with_w4a4: bool) -> dict:
    """The rows of one base model: float, (Q), +mu, (Q)+mu (and w4a4)."""
    rows = {
        name: (model, model),
        f"{name} (Q)": (kq.RobustQuantizer(weight_bits=3, activation_bits=None).quantize(model), model),
        f"{name} +mu": (kq.apply_mu_law(model, last_n=1, mode="map"), model),
        f"{name} (Q)+mu": (kq.RobustQuantizer(weight_bits=3, activation_bits=None, mu_law_last=1).quantize(model),
                           model),
    }
    if with_w4a4:
        rows[f"{name} w4a4"] = (kq.RobustQuantizer.from_setting("w4a4").quantize(model, x_cal), model)
    return rows  # name -> (model scored, its un-mapped float original for BPDA)


FINE_TUNED = {"Adv. (Q) AT-ft": "w3", "Adv. w4a4 AT-ft": "w4a4"}


def fine_tuned_rows(adv, x, y, x_cal, seed: int, quick: bool) -> tuple[dict, dict]:
    """The Adv. (Q) and w4a4 copies after adversarial fine-tuning (``defense_fine_tuned``; with
    ``quick``, one uncached epoch of PGD-AT on ``(x, y)``), and their training info."""
    rows, info = {}, {}
    for row_name, setting in FINE_TUNED.items():
        rows[row_name], info[row_name] = (fine_tuned_copy(adv, setting, x, y, x_cal, 1, seed=seed) if quick
                                          else defense_fine_tuned(adv, setting, seed))
    return rows, info


# ----------------------------------------------------------------------------- scoring
def crafted(attack: str, model, x, y, seed: int):
    a = kq.attacks
    if attack == "FGSM ε/2":
        return a.fgsm(model, x, y, eps=EPS / 2)
    if attack == "FGSM ε":
        return a.fgsm(model, x, y, eps=EPS)
    if attack == "PGD-20":
        return a.pgd(model, x, y, eps=EPS, steps=20, seed=seed, verbose=0)
    if attack == "BIM-10":
        return a.bim(model, x, y, eps=EPS, verbose=0)
    if attack == "MIM-10":
        return a.mim(model, x, y, eps=EPS, verbose=0)
    raise ValueError(attack)


def cw_accuracy(model, x, y) -> float:
    x_adv = kq.attacks.cw_l2(model, x, y, verbose=0)
    return kq.metrics.accuracy(model, within_l2_budget(x_adv, x)[0], y)


def autoattack_cells(model, x, y, version: str, seed: int) -> dict:
    """AutoAttack on ``(x, y)``: robust accuracy, its 95 % interval, what broke each input, seconds."""
    result = kq.attacks.autoattack(model, x, y, eps=EPS, version=version, seed=seed, verbose=0)
    summary = result.to_dict()
    return {"AutoAttack": result.robust_accuracy, "AutoAttack clean": result.clean_accuracy,
            "AutoAttack detail": {key: summary[key] for key in ("n", "version", "robust_interval95", "broken_by",
                                                                 "unverified", "seconds", "findings")}}


def score_row(model, original, black_box: dict, data, seed: int, mu: bool) -> dict:
    x, y, x_cw, y_cw, x_slow, y_slow, x_aa, y_aa, aa_version = data
    acc = lambda inputs, labels=y: kq.metrics.accuracy(model, inputs, labels)  # noqa: E731
    row = {"clean": acc(x), "CW-L2": cw_accuracy(model, x_cw, y_cw)}
    for attack in WHITE_BOX:
        row[attack] = acc(crafted(attack, model, x, y, seed))
    for attack, x_adv in black_box.items():
        row[f"black-box {attack}"] = acc(x_adv)
    row["gaussian"] = acc(kq.attacks.noise(x, eps=EPS, kind="gaussian", seed=seed))
    row["uniform"] = acc(kq.attacks.noise(x, eps=EPS, kind="uniform", seed=seed))
    row.update(autoattack_cells(model, x_aa, y_aa, aa_version, seed))
    if mu:
        a = kq.attacks
        row["SPSA"] = acc(a.spsa(model, x_slow, y_slow, eps=EPS, seed=seed, verbose=0, **STRONG_SPSA), y_slow)
        row["Square"] = acc(a.square(model, x_slow, y_slow, eps=EPS, seed=seed, verbose=0, **STRONG_SQUARE), y_slow)
        row["BPDA PGD-20"] = acc(a.pgd(a.bpda(model, original), x, y, eps=EPS, steps=20, seed=seed, verbose=0))
        # the same slice as SPSA/Square, for a like-for-like masking check
        row["PGD-20 (SPSA slice)"] = acc(crafted("PGD-20", model, x_slow, y_slow, seed), y_slow)
        row["masking"] = masking(row, len(y), len(y_slow))
    return row


def masking(row: dict, images: int, slow_images: int) -> dict:
    """Which gradient-free / transfer / BPDA attacks leave a lower accuracy than the white-box
    gradient attacks: SPSA and Square against PGD-20 on the same (first) images, transfer and
    BPDA against the best white-box attack on all images. A comparison is flagged when the other
    attack is lower by more than 2 binomial standard errors of the white-box accuracy on those
    images (``kq.attacks.integrity.binomial_margin``), the rule ``kq.attacks.masking_checks`` uses."""
    from keras_qrobust.attacks.integrity import binomial_margin

    gradient = min(row[a] for a in WHITE_BOX)
    comparisons = {"SPSA": (row["SPSA"], row["PGD-20 (SPSA slice)"], slow_images),
                   "Square": (row["Square"], row["PGD-20 (SPSA slice)"], slow_images),
                   "transfer PGD-20": (row["black-box PGD-20"], gradient, images),
                   "BPDA PGD-20": (row["BPDA PGD-20"], gradient, images)}
    beaten_by = [name for name, (other, grad, n) in comparisons.items() if other < grad - binomial_margin(grad, n)]
    return {"gradient_best": gradient, "beaten_by": beaten_by, "suspect": bool(beaten_by),
            "rule": "lower than the white-box accuracy by more than 2 binomial standard errors"}


# ------------------------------------------------------------------------------ report
COLUMNS = ["clean", "CW-L2", *WHITE_BOX, *(f"black-box {a}" for a in WHITE_BOX), "gaussian", "uniform"]
MU_COLUMNS = ["PGD-20 (SPSA slice)", "SPSA", "Square", "black-box PGD-20", "BPDA PGD-20"]


def resumed_note(data) -> str:
    """What the Markdown says when some rows came from an earlier (interrupted) run."""
    if not data.get("resumed_rows"):
        return ""
    return (f" Rows {', '.join(data['resumed_rows'])} were scored by an earlier run of the same code on the "
            f"same models (kept in {data['rows_cache']}; `--rescore` scores all again); scoring all rows took "
            f"{data['rows_seconds'] / 60:.1f} min in all (each row's seconds are in the JSON).")


def markdown(data) -> str:
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = ["# Defenses on Fashion-MNIST cnn_small (Song 2020, Tables 1-4 structure)", "",
             f"Command: `{data['command']}`. Machine: {data['machine']['cpus']} CPUs. ε = {EPS} (L∞). "
             f"Attacks on {data['images']} test images (CW-L2 on {data['cw_images']}, SPSA/Square on "
             f"{data['slow_images']}); CW-L2 success counted at ‖δ‖₂ ≤ {CW_L2_BUDGET}. Black-box: crafted on a "
             f"surrogate cnn_small trained with seed {data['surrogate_seed']}. Seed {data['seed']}. "
             f"Total CPU wall time {data['total_seconds'] / 60:.1f} min (training "
             f"{data['training_seconds'] / 60:.1f} min).{resumed_note(data)}", "",
             *autoattack_section(data),
             "## Accuracy % (white-box, then black-box transfer, then noise)", "",
             "| model | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for name, row in data["rows"].items():
        lines.append(f"| {name} | " + " | ".join(pct(row[c]) for c in COLUMNS) + " |")
    lines += ["", "## +mu rows: gradient-free, transfer and BPDA attacks", "",
              "| model | best white-box gradient % | " + " | ".join(MU_COLUMNS) + " | gradient masking? |",
              "|---|---|" + "---|" * len(MU_COLUMNS) + "---|"]
    for name, row in data["rows"].items():
        if "masking" in row:
            m = row["masking"]
            verdict = ("yes: " + ", ".join(m["beaten_by"]) + " score lower") if m["suspect"] else "no"
            lines.append(f"| {name} | {pct(m['gradient_best'])} | " + " | ".join(pct(row[c]) for c in MU_COLUMNS)
                         + f" | {verdict} |")
    lines += ["", f"SPSA ({', '.join(f'{k}={v}' for k, v in STRONG_SPSA.items())}) and Square "
              f"({', '.join(f'{k}={v}' for k, v in STRONG_SQUARE.items())}) run on the first images only; "
              "the masking check compares them with PGD-20 on the same images (also in the JSON), transfer "
              "and BPDA with the best white-box attack.", "",
              "## Training", ""]
    lines += [f"- {name}: {info}" for name, info in data["training"].items()]
    lines += ["", *targets_table(data["checks"])]
    return "\n".join(lines) + "\n"


def autoattack_section(data) -> list[str]:
    """The AutoAttack table: per row robust accuracy with its interval and what broke the inputs."""
    pct = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = [f"## AutoAttack ({data['aa_version']}), the first {data['aa_images']} test images", "",
             "Each attack runs on the inputs still robust; robust accuracy with its 95% Wilson interval. "
             f"PGD-20 (a smoke test) is on the first {data['images']} images.", "",
             "| model | clean % | AutoAttack % (95% CI) | PGD-20 % | broken by | seconds | findings |",
             "|---|---|---|---|---|---|---|"]
    for name, row in data["rows"].items():
        detail = row["AutoAttack detail"]
        broken = ", ".join(f"{attack} {count}" for attack, count in detail["broken_by"].items())
        seconds = sum(detail["seconds"].values())
        lines.append(f"| {name} | {pct(row['AutoAttack clean'])} | "
                     f"{with_interval(row['AutoAttack'], detail['robust_interval95'], digits=1)} "
                     f"| {pct(row['PGD-20'])} | {broken} | {seconds:.0f} | {'; '.join(detail['findings']) or '—'} |")
    return [*lines, ""]


def checks(data) -> list[dict]:
    rows = data["rows"]
    adv = rows["Adv."]
    aa = f"AutoAttack {data['aa_version']}, first {data['aa_images']} test images"
    out = [{"check": f"Adv. clean ≥ {100 * TARGET_CLEAN:.0f}% (all {data['test_images']} test images)",
            "value": f"{100 * data['adv_clean_all']:.2f}%", "passed": data["adv_clean_all"] >= TARGET_CLEAN},
           {"check": f"Adv. PGD-20 ≥ {100 * TARGET_PGD:.0f}% (first {data['images']} test images; a smoke test, "
                     "the AutoAttack figure is the claim)",
            "value": f"{100 * adv['PGD-20']:.2f}%", "passed": adv["PGD-20"] >= TARGET_PGD},
           {"check": f"Adv. under {aa} (reported; its target is checked on all test images by "
                     "benchmarks/robustness.py)",
            "value": f"{100 * adv['AutoAttack']:.2f}%", "passed": None}]
    # the target is on the copies a user ships (quantized, then fine-tuned through their fake
    # quantizers); the plain PTQ copies' gap is reported beside them, not hidden
    for copy in ("Adv. (Q)", "Adv. w4a4", *FINE_TUNED):
        gap = adv["AutoAttack"] - rows[copy]["AutoAttack"]
        target = copy in FINE_TUNED
        out.append({"check": f"{copy} within {100 * TARGET_QUANT_GAP:.0f} points of Adv. under {aa}"
                             + ("" if target else " (plain PTQ, no fine-tuning: reported)"),
                    "value": f"{100 * rows[copy]['AutoAttack']:.2f}% "
                             f"({100 * abs(gap):.2f} {'below' if gap >= 0 else 'above'})",
                    "passed": gap <= TARGET_QUANT_GAP if target else None})
    suspects = [n for n, r in rows.items() if r.get("masking", {}).get("suspect")]
    out.append({"check": "+mu rows whose gradient attacks are beaten by SPSA/Square/transfer/BPDA by more than 2 "
                "binomial standard errors (gradient masking: reported, not a pass/fail check)",
                "value": ", ".join(suspects) or "none", "passed": None})
    return out


# -------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8, help="standard training epochs (default 8)")
    parser.add_argument("--images", type=int, default=2000, help="test images per attack (default 2000)")
    parser.add_argument("--cw-images", type=int, default=200)
    parser.add_argument("--slow-images", type=int, default=200, help="test images for SPSA and Square")
    parser.add_argument("--aa-images", type=int, default=1000, help="test images for AutoAttack (default 1000)")
    parser.add_argument("--fl-examples", type=int, default=10000, help="training images for feedback learning")
    parser.add_argument("--quick", action="store_true", help="small subsets and short training")
    parser.add_argument("--train-only", action="store_true",
                        help="train (or load) the cached models (Orig., Adv., the surrogate, the AT-ft copies) and "
                             "stop: e.g. to commit them with benchmarks/checkpoint.py before scoring elsewhere")
    parser.add_argument("--rescore", action="store_true",
                        help="score every row again (by default rows that an interrupted run finished on the "
                             "same code, models and settings are reused; always with --quick)")
    parser.add_argument("--save-models", type=Path, default=None, metavar="DIR",
                        help="also save the three float models, Orig., Adv. and F.L., as DIR/{orig,adv,fl}.keras "
                             "(examples/reproduce_song2020.py reads them)")
    parser.add_argument("--command", default="./run.sh bench defenses",
                        help="the command the results file names (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.images, args.cw_images, args.slow_images, args.fl_examples = 2, 300, 20, 20, 1000
        args.aa_images = 100
        args.rescore = True
    args.aa_version = "fast" if args.quick else "standard"
    return args


def run(args: argparse.Namespace, command: str = "./run.sh bench defenses") -> tuple[dict, dict]:
    """Train (or load) the models, score every row; returns the results and
    ``{"Orig.": model, "Adv.": model, "F.L.": model}`` (with ``--train-only``: ``None`` and the
    cached models, nothing scored)."""
    started = time.perf_counter()
    x_train, y_train = kq.datasets.load("fashion_mnist", "train")
    x_test, y_test = kq.datasets.load("fashion_mnist", "test")
    rng = np.random.default_rng(args.seed)
    x_cal = x_train[rng.choice(len(x_train), 1024, replace=False)]
    order = np.random.default_rng(args.seed + 1).permutation(len(x_train))
    x_fl, y_fl = x_train[order], y_train[order]

    training, train_start = {}, time.perf_counter()
    orig, training["Orig."] = trained_model("cnn_small", args.epochs, args.seed)
    if args.quick:
        adv, training["Adv."] = trained_model("cnn_small", 1, args.seed, adversarial=ROBUST_RECIPE["adversarial"])
    else:
        adv, training["Adv."] = defense_model(args.seed)
    surrogate_seed = args.seed + 1
    surrogate, training["surrogate"] = trained_model("cnn_small", args.epochs, surrogate_seed)
    fine_tuned, fine_info = fine_tuned_rows(adv, x_fl[:2000], y_fl[:2000], x_cal, args.seed, args.quick)
    training.update(fine_info)
    if args.train_only:
        for name, info in training.items():
            log(f"{name}: {info}")
        return None, {"Orig.": orig, "Adv.": adv, "surrogate": surrogate, **fine_tuned}
    (fl, info), fl_seconds = timed(feedback_model, orig, x_fl, y_fl, args.seed, rounds=2,
                                   epochs=1 if args.quick else 5, examples=args.fl_examples)
    training["F.L."] = {**info, "seconds": round(fl_seconds, 1), "examples": args.fl_examples,
                        "from": "Orig.", "rounds": 2}
    training_seconds = time.perf_counter() - train_start
    for name, info in training.items():
        log(f"{name}: {info}")

    x, y = x_test[:args.images], y_test[:args.images]
    data_slices = (x, y, x_test[:args.cw_images], y_test[:args.cw_images],
                   x_test[:args.slow_images], y_test[:args.slow_images], x_test[:args.aa_images],
                   y_test[:args.aa_images], args.aa_version)
    log("black-box examples from the surrogate")
    black_box = {attack: crafted(attack, surrogate, x, y, args.seed) for attack in WHITE_BOX}

    rows, resumed = {}, []
    finished = None if args.rescore else finished_results(f"defenses_rows{'_quick' if args.quick else ''}")
    settings = (EPS, args.seed, args.images, args.cw_images, args.slow_images, args.aa_images, args.aa_version,
                args.quick)
    for name, model in (("Orig.", orig), ("Adv.", adv), ("F.L.", fl)):
        row_models = variants(name, model, x_cal, with_w4a4=name == "Adv.")
        if name == "Adv.":
            row_models.update({row_name: (copy, model) for row_name, copy in fine_tuned.items()})
        for row_name, (scored, original) in row_models.items():
            key = fingerprint(scored, original, surrogate, source=SOURCE, extra=(row_name, *settings))
            if finished is not None and (kept := finished.get(key)) is not None:
                rows[row_name] = kept
                resumed.append(row_name)
                log(f"  {row_name}: scored by an earlier run ({rows[row_name]['seconds']:.0f} s then)")
                continue
            (row, seconds) = timed(score_row, scored, original, black_box, data_slices, args.seed,
                                   mu=row_name.endswith("+mu"))
            rows[row_name] = {**row, "seconds": round(seconds, 1)}
            if finished is not None:
                finished.put(key, rows[row_name])
            log(f"  {row_name}: clean {100 * row['clean']:.1f}%, PGD-20 {100 * row['PGD-20']:.1f}%, "
                f"AutoAttack {100 * row['AutoAttack']:.1f}% ({seconds:.0f} s)")

    adv_clean_all = kq.metrics.accuracy(adv, x_test, y_test)
    data = {"benchmark": "defenses", "command": command + (" --quick" if args.quick else ""),
            "machine": machine(), "seed": args.seed, "eps": EPS, "images": len(x), "test_images": len(x_test),
            "adv_clean_all": adv_clean_all, "cw_images": args.cw_images,
            "slow_images": args.slow_images, "aa_images": args.aa_images, "aa_version": args.aa_version,
            "surrogate_seed": surrogate_seed,
            "training": {k: {kk: vv for kk, vv in v.items() if kk != "margins_per_round"} for k, v in training.items()},
            "feedback_margins": training["F.L."]["margins_per_round"], "rows": rows,
            "training_seconds": training_seconds, "total_seconds": time.perf_counter() - started,
            "resumed_rows": resumed, "rows_cache": f"benchmarks/.cache/{finished.path.name}" if finished else None,
            "rows_seconds": sum(row["seconds"] for row in rows.values())}
    data["checks"] = checks(data)
    return data, {"Orig.": orig, "Adv.": adv, "F.L.": fl}


SAVED_MODELS = {"Orig.": "orig", "Adv.": "adv", "F.L.": "fl"}  # --save-models: row -> file stem


def main(argv=None) -> None:
    args = parse_args(argv)
    data, models = run(args, command=args.command)
    if data is None:
        return
    publish("defenses", args.quick, data, markdown(data))
    if args.save_models is not None:
        args.save_models.mkdir(parents=True, exist_ok=True)
        for row, stem in SAVED_MODELS.items():
            models[row].save(args.save_models / f"{stem}.keras")
        log(f"saved {', '.join(SAVED_MODELS)} in {args.save_models}")


if __name__ == "__main__":
    main()

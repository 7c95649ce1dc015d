"""AutoAttack in TensorFlow: our attacks against ART 1.20's, and full AutoAttack runs.

Models: a naturally trained cnn_small (8 epochs, cached), and the robust models of the
defenses benchmark (committed in benchmarks/checkpoints/) — the float Adv. model and its w4a4
copy fine-tuned with the Adv. model's objective through its fake quantizers ("AT-ft w4a4").
Data: the first ``--images`` Fashion-MNIST test images; L∞, ε = 0.1.

1. Each attack alone, ours and ART's with the same budget, on every input (robust accuracy
   counts the clean mistakes as broken): APGD-CE and APGD-DLR (100 iterations, 1 restart,
   initial step 2ε — ART's ``eps_step``), Square (1,000 iterations, ``p_init`` 0.8, the
   schedule rescaled to the budget as ART does). ART's ``AutoProjectedGradientDescent``
   scores only its last iterate; ours keeps any misclassified iterate, as the authors' code.
2. Our ``autoattack(version="standard")`` (APGD-CE, APGD-T 9 targets, FAB-T 9 targets,
   Square 5,000 iterations) on every model: robust accuracy with its 95 % Wilson interval, the
   time per attack, which attack broke how many inputs.

   For the float models (natural, Adv.) both also run with ``search_precision="bfloat16"``
   ("ours bf16"): the attacks search on the model's bfloat16 twin and the float32 model judges
   every point, re-attacking in float32 every input the twin wrongly called broken. The
   standard runs in the two precisions are paired on the same inputs (``kq.paired``), so a
   weaker bfloat16 search shows as a difference, with its interval and McNemar's p.

3. The compute floor of each run: the model's cost of one forward+backward pass (an input
   gradient) and of one forward pass per input, measured here (compiled, batch 500, median of
   5), times the passes no implementation of the attack's definition can skip — the iterations
   on the inputs that stay unbroken (APGD-CE: 100 gradients each; APGD-T and FAB-T: 9 × 100;
   Square: 5,000 forward passes). A run cannot be faster than its floor, whatever the code.

Targets (issue 19): each of our attacks at least as strong as ART's (robust accuracy ≤ ART's
+ 0.5 points), APGD-CE ≥ 5× faster than ART's, standard AutoAttack on 1,000 images of the Adv.
model in ≤ 10 minutes. Each time check states the floor beside it (the float32 pass costs:
a bfloat16 search can go below it).

    ./run.sh bench autoattack             # writes benchmarks/results/autoattack.{json,md}
    ./run.sh bench autoattack --quick     # 100 images, a smoke run

Every finished cell is kept in benchmarks/.cache/autoattack_cells.json under a fingerprint of
the model, the settings and the source; an interrupted run resumes (``--rescore``: score all).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import keras_qrobust as kq
from _common import RESULTS, finished_results, machine, publish, source_digest, write_results
from _models import defense_fine_tuned, defense_model, trained_model
from keras_qrobust.bench import fingerprint, log, targets_table
from recipes import packed, paired_cell, unpacked

EPS = 0.1
ITERATIONS = 100
SQUARE_ITERATIONS, SQUARE_P_INIT = 1000, 0.8
TARGET_MARGIN, TARGET_SPEEDUP, TARGET_AA_SECONDS = 0.005, 5.0, 600.0
SOURCE = source_digest(Path(__file__))


# ------------------------------------------------------------------------------ models
def models(seed: int, quick: bool) -> tuple[dict, dict]:
    """``{name: model}`` and ``{name: how it was trained}``."""
    natural, natural_info = trained_model("cnn_small", 1 if quick else 8, seed)
    adv, adv_info = (trained_model("cnn_small", 1, seed, adversarial={"attack": "pgd", "eps": EPS, "steps": 7})
                     if quick else defense_model(seed))
    if quick:
        x_train, _ = kq.datasets.load("fashion_mnist", "fit")
        x_cal = x_train[np.random.default_rng(seed).choice(len(x_train), 1024, replace=False)]
        w4a4, w4a4_info = kq.RobustQuantizer.from_setting("w4a4").quantize(adv, x_cal), {"ptq": "w4a4, no fine-tuning"}
    else:
        w4a4, w4a4_info = defense_fine_tuned(adv, "w4a4", seed)
    return ({"natural": natural, "Adv.": adv, "AT-ft w4a4": w4a4},
            {"natural": natural_info, "Adv.": adv_info, "AT-ft w4a4": w4a4_info})


# ------------------------------------------------------------------------------ attacks
def art_classifier(model):
    from art.estimators.classification import TensorFlowV2Classifier

    return TensorFlowV2Classifier(model=model, nb_classes=10, input_shape=(28, 28, 1), clip_values=(0.0, 1.0),
                                  loss_object=kq.keras.losses.SparseCategoricalCrossentropy(from_logits=True))


#: the float models, whose attacks also search in bfloat16
BFLOAT16_MODELS = ("natural", "Adv.")
#: Square alone, as ART runs it: the iterations + 2 queries, the schedule rescaled to the budget
_SQUARE_ALONE = {"queries": SQUARE_ITERATIONS + 2, "p_init": SQUARE_P_INIT, "rescale_schedule": True}


def ours_bfloat16(attack: str, model, x, y, seed: int) -> np.ndarray:
    """:func:`ours` searched on the bfloat16 twin, judged in float32 (through ``autoattack``,
    which skips the clean mistakes: our attacks spend no passes on them either)."""
    options = {"square": _SQUARE_ALONE} if attack == "square" else {attack: {"steps": ITERATIONS, "restarts": 1}}
    result = kq.attacks.autoattack(model, x, y, eps=EPS, attacks=[attack], options=options, seed=seed,
                                   batch_size=500, search_precision="bfloat16", verbose=0)
    return result.x_adv


def ours(attack: str, model, x, y, seed: int) -> np.ndarray:
    a = kq.attacks
    if attack in ("apgd-ce", "apgd-dlr"):
        return a.apgd(model, x, y, eps=EPS, loss=attack.split("-")[1], steps=ITERATIONS, restarts=1, seed=seed,
                      batch_size=500, verbose=0)
    return a.square(model, x, y, eps=EPS, **_SQUARE_ALONE, seed=seed, batch_size=500, verbose=0)


def art(attack: str, model, x, y, seed: int) -> np.ndarray:
    from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack

    np.random.seed(seed)
    classifier = art_classifier(model)
    if attack in ("apgd-ce", "apgd-dlr"):
        loss = "cross_entropy" if attack == "apgd-ce" else "difference_logits_ratio"
        attacker = AutoProjectedGradientDescent(classifier, norm=np.inf, eps=EPS, eps_step=2 * EPS,
                                                max_iter=ITERATIONS, nb_random_init=1, batch_size=500,
                                                loss_type=loss, verbose=False)
    else:
        attacker = SquareAttack(classifier, norm=np.inf, eps=EPS, max_iter=SQUARE_ITERATIONS, p_init=SQUARE_P_INIT,
                                nb_restarts=1, batch_size=500, verbose=False)
    return attacker.generate(x, y)


def pass_costs(model, x: np.ndarray, repeats: int = 5) -> dict:
    """Seconds per input of one input-gradient pass and of one forward pass of ``model``
    (``tf.function``-compiled, batch of up to 500, the median of ``repeats``)."""
    tf = kq.tf
    batch = tf.constant(x[:500])
    labels = tf.constant(np.zeros(len(batch), np.int64))

    @tf.function
    def gradient(b):
        with tf.GradientTape() as tape:
            tape.watch(b)
            loss = tf.keras.losses.sparse_categorical_crossentropy(labels, model(b, training=False), from_logits=True)
        return tape.gradient(loss, b)

    @tf.function
    def forward(b):
        return model(b, training=False)

    costs = {}
    for name, fn in (("gradient", gradient), ("forward", forward)):
        fn(batch)  # trace
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(batch).numpy()
            times.append(time.perf_counter() - start)
        costs[name] = float(np.median(times)) / len(batch)
    return costs


#: passes each attack must make on an input it does not break: (kind, count)
FLOOR_PASSES = {"apgd-ce": ("gradient", ITERATIONS), "apgd-dlr": ("gradient", ITERATIONS),
                "apgd-t": ("gradient", 9 * ITERATIONS), "fab-t": ("gradient", 9 * ITERATIONS),
                "square": ("forward", 5000)}


def floor_seconds(attack: str, unbroken: int, costs: dict) -> float:
    kind, count = FLOOR_PASSES[attack]
    return unbroken * count * costs[kind]


def autoattack_floor(aa: dict, images: int, costs: dict) -> float:
    """Seconds standard AutoAttack cannot go below: each attack's passes on the inputs still
    robust after it (the fraction ``accuracy_after`` of ``images``)."""
    return sum(floor_seconds(name, round(aa["accuracy_after"][name] * images), costs)
               for name in ("apgd-ce", "apgd-t", "fab-t", "square") if name in aa["accuracy_after"])


def score(model, x_adv, x, y) -> dict:
    """Robust accuracy of the points ``x_adv`` an attack returned: an input is robust if the
    model classifies it correctly and the point is no adversarial example (correctly classified,
    or outside the ε-ball or the box). A non-finite point is outside: ART's DLR loss divides by
    z_π1 − z_π3, which is 0 where a fake-quantized model's logits tie on its output grid, and a
    NaN in a batch's mean loss turns the whole batch's gradient, and points, into NaN."""
    flat = x_adv.reshape(len(x), -1)
    finite = np.isfinite(flat).all(axis=1)
    points = np.where(finite[:, None], flat, x.reshape(len(x), -1))
    inside = finite & (np.abs(points - x.reshape(len(x), -1)).max(axis=1) <= EPS * (1 + 1e-5) + 1e-6) & (
        points.min(1) >= -1e-6) & (points.max(1) <= 1 + 1e-6)
    clean_correct = kq.metrics.predict_labels(model, x) == y
    robust = clean_correct & ((kq.metrics.predict_labels(model, points.reshape(x.shape)) == y) | ~inside)
    return {"robust_accuracy": float(robust.mean()), "outside_ball": int((~inside).sum()),
            "non_finite": int((~finite).sum())}


def cell(finished, key_parts, compute):
    """A kept result for ``key_parts`` (fingerprinted), else ``compute()`` kept."""
    model, *extra = key_parts
    key = fingerprint(model, source=SOURCE, extra=extra)
    if finished is not None and (kept := finished.get(key)) is not None:
        return {**kept, "resumed": True}
    result = compute()
    if finished is not None:
        finished.put(key, result)
    return result


def run(args) -> dict:
    x_test, y_test = kq.datasets.load("fashion_mnist", "test")
    x, y = x_test[:args.images], y_test[:args.images]
    zoo, training = models(args.seed, args.quick)
    finished = None if args.rescore or args.quick else finished_results("autoattack_cells")
    results = []
    for name, model in zoo.items():
        clean = kq.metrics.accuracy(model, x, y)
        row = {"model": name, "params": int(model.count_params()), "clean_accuracy": clean, "attacks": {},
               "pass_seconds": pass_costs(model, x)}
        log(f"{name}: clean {clean:.2%}")
        implementations = (("ours", ours), ("ART", art)) + (
            (("ours bf16", ours_bfloat16),) if name in BFLOAT16_MODELS else ())
        for attack in ("apgd-ce", "apgd-dlr", "square"):
            for impl, fn in implementations:
                def compute(fn=fn, attack=attack):
                    start = time.perf_counter()
                    x_adv = np.asarray(fn(attack, model, x, y, args.seed), np.float32)
                    return {**score(model, x_adv, x, y), "seconds": round(time.perf_counter() - start, 2)}

                entry = cell(finished, (model, "single", attack, impl, args.images, args.seed), compute)
                row["attacks"].setdefault(attack, {})[impl] = entry
                log(f"  {attack} {impl}: {entry['robust_accuracy']:.2%} in {entry['seconds']:.1f} s")

        def standard(precision: str = "float32"):
            result = kq.attacks.autoattack(model, x, y, eps=EPS, version="standard", seed=args.seed, verbose=1,
                                           search_precision=precision)
            return {**result.to_dict(), "seconds_total": round(sum(result.seconds.values()), 2),
                    "robust": packed(result.robust)}

        row["autoattack"] = cell(finished, (model, "autoattack-standard", args.images, args.seed), standard)
        log(f"  AutoAttack standard: {row['autoattack']['robust_accuracy']:.2%} "
            f"in {row['autoattack']['seconds_total']:.0f} s")
        if name in BFLOAT16_MODELS:
            row["autoattack_bf16"] = cell(finished, (model, "autoattack-standard-bf16", args.images, args.seed),
                                          lambda: standard("bfloat16"))
            row["bf16_vs_float32"] = kq.paired.paired_difference(
                unpacked(row["autoattack_bf16"]["robust"], len(x)), unpacked(row["autoattack"]["robust"], len(x))
            ).to_dict()
            log(f"  AutoAttack standard, bfloat16 search: {row['autoattack_bf16']['robust_accuracy']:.2%} "
                f"in {row['autoattack_bf16']['seconds_total']:.0f} s")
        row["images"] = len(x)
        results.append(row)
    return {"command": args.command, "machine": machine(), "eps": EPS, "norm": "inf", "images": args.images,
            "seed": args.seed, "quick": args.quick, "training": training, "models": results,
            "checks": checks(results)}


def checks(results: list[dict]) -> list[dict]:
    out = []
    for row in results:
        impls = [impl for impl in ("ours", "ours bf16") if impl in row["attacks"]["apgd-ce"]]
        for attack, pair in row["attacks"].items():
            for impl in impls:
                mine, theirs = pair[impl]["robust_accuracy"], pair["ART"]["robust_accuracy"]
                out.append({"check": f"{row['model']}: {attack} ({impl}) at least as strong as ART's "
                                     "(≤ ART + 0.5 pt)",
                            "value": f"{100 * mine:.1f}% vs ART {100 * theirs:.1f}%",
                            "passed": mine <= theirs + TARGET_MARGIN})
        ce = row["attacks"]["apgd-ce"]
        images = row["images"]
        for impl in impls:
            speedup = ce["ART"]["seconds"] / ce[impl]["seconds"]
            floor = floor_seconds("apgd-ce", round(ce[impl]["robust_accuracy"] * images), row["pass_seconds"])
            out.append({"check": f"{row['model']}: APGD-CE ({impl}) ≥ {TARGET_SPEEDUP:g}× faster than ART's",
                        "value": f"{speedup:.1f}× ({ce[impl]['seconds']:.1f} s vs {ce['ART']['seconds']:.1f} s; "
                                 f"float32 compute floor {floor:.1f} s)",
                        "passed": speedup >= TARGET_SPEEDUP})
        if row["model"] == "Adv.":
            floor = autoattack_floor(row["autoattack"], images, row["pass_seconds"])
            for key, what in (("autoattack", "float32 search"), ("autoattack_bf16", "bfloat16 search")):
                if key in row:
                    seconds = row[key]["seconds_total"]
                    out.append({"check": f"standard AutoAttack on the Adv. model ({what}) ≤ "
                                         f"{TARGET_AA_SECONDS / 60:g} min",
                                "value": f"{seconds / 60:.1f} min (float32 compute floor {floor / 60:.1f} min)",
                                "passed": seconds <= TARGET_AA_SECONDS})
        if "bf16_vs_float32" in row:
            pair = row["bf16_vs_float32"]
            out.append({"check": f"{row['model']}: standard AutoAttack searched in bfloat16 as strong as in float32 "
                                 "(≤ +0.5 pt, paired)",
                        "value": paired_cell(pair), "passed": pair["difference"] <= TARGET_MARGIN})
    return out


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = ["# AutoAttack: ours vs ART, and standard AutoAttack runs", "",
             f"Command: `{data['command']}`. Machine: {m['cpus']} CPUs, {m['platform']}, TensorFlow "
             f"{m['packages']['tensorflow']}, {m['date']}. Fashion-MNIST, the first {data['images']} test images, "
             f"L∞ ε = {data['eps']}, seed {data['seed']}. Robust accuracy counts clean mistakes as broken; a point "
             "outside the ε-ball or the box never counts as broken.", "",
             "## Each attack alone, same budget", "",
             f"APGD: {ITERATIONS} iterations, 1 restart, initial step 2ε. Square: {SQUARE_ITERATIONS} iterations, "
             f"p_init {SQUARE_P_INIT}, schedule rescaled to the budget. ART 1.20 `AutoProjectedGradientDescent` "
             "scores its last iterate only; ours keeps any misclassified iterate (the authors' rule).", "",
             "| model | clean % | attack | ours % | ART % | ours s | ART s | speed-up | ours bf16 % | ours bf16 s "
             "| bf16 speed-up |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in data["models"]:
        for attack, pair in row["attacks"].items():
            o, a, b = pair["ours"], pair["ART"], pair.get("ours bf16")
            bf16 = ("— | — | —" if b is None else
                    f"{percent(b['robust_accuracy'])} | {b['seconds']:.1f} | {a['seconds'] / b['seconds']:.1f}×")
            lines.append(f"| {row['model']} | {percent(row['clean_accuracy'])} | {attack} | "
                         f"{percent(o['robust_accuracy'])} | {percent(a['robust_accuracy'])} | {o['seconds']:.1f} | "
                         f"{a['seconds']:.1f} | {a['seconds'] / o['seconds']:.1f}× | {bf16} |")
    lines += ["", "ours bf16: searched on the bfloat16 twin, every point judged by the float32 model "
              "(`search_precision=\"bfloat16\"`); — for the fake-quantized model, which has no bfloat16 twin."]
    invalid = [f"{impl} {attack} on {row['model']}: {entry['outside_ball']} of {row['images']} points not valid "
               f"({entry.get('non_finite', 0)} non-finite), counted as not broken"
               for row in data["models"] for attack, pair in row["attacks"].items() for impl, entry in pair.items()
               if entry["outside_ball"]]
    if invalid:
        lines += ["", "Points outside the ε-ball or the box, or not finite (never counted as broken; ART's DLR loss "
                  "has no guard against z_π1 = z_π3, a tie that the fake-quantized model's 8-bit logits produce):",
                  "", *(f"- {line}" for line in invalid)]
    lines += ["", "## Standard AutoAttack (ours)", "",
              "APGD-CE (100 steps), APGD-T (9 targets × 100 steps), FAB-T (9 targets × 100 steps), Square "
              "(5,000 iterations, p_init 0.8), each on the inputs still robust.", "",
              "| model | clean % | robust % (95% CI) | broken by | seconds per attack | total |",
              "|---|---|---|---|---|---|"]
    for row in data["models"]:
        for key, label in (("autoattack", row["model"]), ("autoattack_bf16", f"{row['model']}, bfloat16 search")):
            if key not in row:
                continue
            aa = row[key]
            low, high = aa["robust_interval95"]
            broken = ", ".join(f"{k} {v}" for k, v in aa["broken_by"].items())
            secs = ", ".join(f"{k} {v:.0f}" for k, v in aa["seconds"].items() if k != "clean")
            lines.append(f"| {label} | {percent(aa['clean_accuracy'])} | {percent(aa['robust_accuracy'])} "
                         f"({percent(low)}–{percent(high)}) | {broken} | {secs} | {aa['seconds_total'] / 60:.1f} min |")
            lines += [f"| | | ! {finding} | | | |" for finding in aa["findings"]]
            if aa.get("reattacked_in_float32"):
                again = ", ".join(f"{k} {v}" for k, v in aa["reattacked_in_float32"].items())
                lines.append(f"| | | inputs the twin wrongly called broken, attacked again in float32: {again} | | | |")
    pairs = [(row["model"], row["bf16_vs_float32"]) for row in data["models"] if "bf16_vs_float32" in row]
    if pairs:
        lines += ["", "Standard AutoAttack searched in bfloat16 minus searched in float32, paired on the same inputs "
                  "(robust accuracy in points, 95% interval of Newcombe's method 10, inputs robust only under the "
                  "bfloat16 vs only under the float32 search, McNemar's exact p):", ""]
        lines += [f"- {model}: {paired_cell(pair)}" for model, pair in pairs]
    lines += ["", "## Compute floor", "",
              "One input-gradient pass and one forward pass per input, measured on this machine; the floor of a "
              "run is the passes its definition needs on the inputs it leaves unbroken (see the module docstring).",
              "", "| model | gradient µs/input | forward µs/input | AutoAttack standard: floor | measured | "
              "measured / floor |", "|---|---|---|---|---|---|"]
    for row in data["models"]:
        costs, aa = row["pass_seconds"], row["autoattack"]
        floor = autoattack_floor(aa, row["images"], costs)
        # no input left unbroken: no floor to compare with
        ratio = f"{aa['seconds_total'] / floor:.2f}×" if floor >= 0.5 else "— (no input left unbroken)"
        lines.append(f"| {row['model']} | {1e6 * costs['gradient']:.0f} | {1e6 * costs['forward']:.0f} | "
                     f"{floor / 60:.1f} min | {aa['seconds_total'] / 60:.1f} min | {ratio} |")
    lines += ["", *targets_table(data["checks"]), "", "## Models", ""]
    lines += [f"- {name}: `{info}`" for name, info in data["training"].items()]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=1000, help="test images (default 1000)")
    parser.add_argument("--quick", action="store_true", help="100 images, models trained 1 epoch: a smoke run")
    parser.add_argument("--rescore", action="store_true", help="score every cell again")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite results/autoattack[_quick].md and its checks from the JSON of the last run "
                             "(the numbers are that run's)")
    args = parser.parse_args(argv)
    args.command = "./run.sh bench autoattack" + (" --quick" if args.quick else "")
    if args.quick:
        args.images = 100
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.render_only:
        name = "autoattack_quick" if args.quick else "autoattack"
        data = json.loads((RESULTS / f"{name}.json").read_text())
        data["checks"] = checks(data["models"])
        write_results(name, data, markdown(data))
        return
    data = run(args)
    publish("autoattack", args.quick, data, markdown(data))


if __name__ == "__main__":
    main()

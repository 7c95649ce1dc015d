"""Attack suite on Fashion-MNIST cnn_small, against the peers (ART, cleverhans).

Models: cnn_small trained normally and with FGSM-RS (ε = 0.1), 8 epochs each (cached in
benchmarks/.cache), and their RobustQuantizer PTQ copies (w8a8, w4a4, w2a2).

1. UAP, ours vs adversarial-robustness-toolbox's UniversalPerturbation (fgsm inner attack,
   max_iter=2; deepfool inner attack, max_iter=1, standard model only: ART runs DeepFool one
   image at a time, ~1 s each), crafted on 1,000 training images, fooling rate against clean
   predictions on the 10,000 test images; wall time.
2. Ensemble UAP (Zhou 2022 Alg. 2) over {fp32, w8a8, w4a4, w2a2}: time vs the single-model
   UAP, and the UAP transfer matrix (crafted on model i, accuracy of model j).
3. PGD-20 throughput, ours vs cleverhans 4.0.0, same model and batches.
4. Accuracy under every attack at ε = 0.1 (L∞) for the float model and its w4a4 copy, and
   standard AutoAttack on the first ``--slow-images`` test images (robust accuracy with its 95 %
   interval): the figure a robustness claim uses; the single attacks show what each one finds.

    ./run.sh bench attacks            # writes benchmarks/results/attacks.{json,md}
    ./run.sh bench attacks --quick    # small subsets, for a smoke run
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import keras_qrobust as kq
from _common import CW_L2_BUDGET, STRONG_SPSA, STRONG_SQUARE, machine, publish, within_l2_budget
from _models import trained_model
from keras_qrobust.bench import log, targets_table, timed, with_interval

EPS = 0.1
TARGET_SPEEDUP = 20.0
TARGET_ENSEMBLE_RATIO = 4.0


# ------------------------------------------------------------------------------ UAP
def art_classifier(model):
    from art.estimators.classification import TensorFlowV2Classifier

    return TensorFlowV2Classifier(
        model=model, nb_classes=10, input_shape=(28, 28, 1), clip_values=(0.0, 1.0),
        loss_object=kq.keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def art_uap(model, x_craft, attacker: str, max_iter: int):
    """ART's UniversalPerturbation; returns (perturbation, seconds, configuration)."""
    from art.attacks.evasion import UniversalPerturbation

    params = ({"eps": EPS, "norm": np.inf} if attacker == "fgsm"
              else {"max_iter": 10, "epsilon": 0.02, "verbose": False})
    attack = UniversalPerturbation(art_classifier(model), attacker=attacker, attacker_params=params,
                                   delta=0.2, max_iter=max_iter, eps=EPS, norm=np.inf, batch_size=32,
                                   verbose=False)
    start = time.perf_counter()
    attack.generate(x_craft)
    seconds = time.perf_counter() - start
    config = f"UniversalPerturbation(attacker={attacker!r}, attacker_params={params}, max_iter={max_iter}, delta=0.2)"
    return attack.noise.reshape(x_craft.shape[1:]), seconds, config


def uap_comparison(model, x_craft, x_test, y_test, seed, art_deepfool):
    """Our UAPs vs ART's. ART's DeepFool-UAP runs DeepFool one image at a time (about 1 s
    per image here), so it gets one pass, and only when ``art_deepfool``."""
    rows = []
    runs = [("ART fgsm-UAP", lambda: art_uap(model, x_craft, "fgsm", 2))]
    if art_deepfool:
        runs.append(("ART deepfool-UAP", lambda: art_uap(model, x_craft, "deepfool", 1)))
    ours = {
        "ours uap (fgsm inner)": dict(fn=kq.attacks.uap, inner="fgsm"),
        "ours uap (deepfool inner)": dict(fn=kq.attacks.uap, inner="deepfool"),
        "ours sgd_uap": dict(fn=kq.attacks.sgd_uap),
    }
    for name, spec in ours.items():
        fn = spec.pop("fn")
        runs.append((name, lambda fn=fn, spec=spec: _ours_uap(fn, model, x_craft, seed, spec)))
    for name, run in runs:
        perturbation, seconds, config = run()
        rows.append({
            "method": name, "config": config, "seconds": seconds,
            "heldout_fooling_rate": kq.attacks.fooling_rate(model, x_test, perturbation),
            "heldout_accuracy": kq.metrics.accuracy(model, np.clip(x_test + perturbation, 0, 1), y_test),
            "linf": float(np.abs(perturbation).max()),
        })
        log(f"    {name}: {rows[-1]['seconds']:.2f} s, held-out fooling {100 * rows[-1]['heldout_fooling_rate']:.1f}%")
    return rows


def _ours_uap(fn, model, x_craft, seed, spec):
    result, seconds = timed(fn, model, x_craft, eps=EPS, seed=seed, verbose=0, **spec)
    args = ", ".join(f"{k}={v!r}" for k, v in spec.items())
    return result.perturbation, seconds, f"{fn.__name__}(eps={EPS}{', ' + args if args else ''})"


ENSEMBLE_RULES = {
    "default (α = ε, mean of per-input steps; the authors' rule)": {},
    "α = ε/5, summed-loss step (uap's rule)": {"step_size": EPS / 5, "aggregate": "gradient"},
}


def ensemble_section(models, x_craft, x_test, y_test, seed):
    single, single_seconds = timed(kq.attacks.uap, models["fp32"], x_craft, eps=EPS, seed=seed, verbose=0)
    rules = []
    for rule, kwargs in ENSEMBLE_RULES.items():
        ensemble, seconds = timed(kq.attacks.ensemble_uap, list(models.values()), x_craft, eps=EPS,
                                  seed=seed, verbose=0, **kwargs)
        accuracy = {name: kq.metrics.accuracy(m, ensemble.apply(x_test), y_test) for name, m in models.items()}
        rules.append({"rule": rule, "kwargs": kwargs, "seconds": seconds, "passes": ensemble.passes,
                      "ratio": seconds / single_seconds, "accuracy": accuracy})
        log(f"    ensemble {rule}: {seconds:.2f} s ({seconds / single_seconds:.2f}x single)")
    matrix = kq.attacks.uap_transfer_matrix(models, x_craft, x_test, y_test, eps=EPS, seed=seed, verbose=0)
    return {
        "single_seconds": single_seconds, "single_passes": single.passes,
        "single_fooling_fp32": kq.attacks.fooling_rate(models["fp32"], x_test, single.perturbation),
        "rules": rules,
        "transfer_matrix": matrix.to_dict(),
        "transfer_matrix_markdown": matrix.to_markdown(),
    }


# ------------------------------------------------------------------------ throughput
def pgd_throughput(model, x, y, batch_size=250, repeats=3):
    from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

    tf = kq.tf

    def ours():
        kq.attacks.pgd(model, x, y, eps=EPS, steps=20, batch_size=batch_size, seed=0, verbose=0)

    def cleverhans():
        for start in range(0, len(x), batch_size):
            projected_gradient_descent(model, tf.constant(x[start:start + batch_size]), EPS, 2.5 * EPS / 20, 20,
                                       np.inf, clip_min=0.0, clip_max=1.0,
                                       y=tf.constant(y[start:start + batch_size]), rand_init=True,
                                       sanity_checks=False)

    result = {}
    for name, fn in (("ours", ours), ("cleverhans", cleverhans)):
        fn()  # warm-up: tracing
        best = min(timed(fn)[1] for _ in range(repeats))
        result[name] = len(x) / best
    result["ratio"] = result["ours"] / result["cleverhans"]
    return result


# ----------------------------------------------------------------------- attack table
def attack_table(model, x, y, n_slow, n_spsa, seed):
    """Accuracy under each attack (SPSA and Square with the settings strong on low-bit models)."""
    xs, ys = x[:n_slow], y[:n_slow]
    xq, yq = x[:n_spsa], y[:n_spsa]
    a = kq.attacks
    specs = [
        ("clean", x, y, lambda: x),
        ("FGSM", x, y, lambda: a.fgsm(model, x, y, eps=EPS)),
        ("PGD-20", x, y, lambda: a.pgd(model, x, y, eps=EPS, steps=20, seed=seed, verbose=0)),
        ("BIM-10", x, y, lambda: a.bim(model, x, y, eps=EPS, verbose=0)),
        ("MIM-10", x, y, lambda: a.mim(model, x, y, eps=EPS, verbose=0)),
        ("DeepFool (L∞, projected on the ε-ball)", xs, ys,
         lambda: a.deepfool(model, xs, ys, norm="inf", eps=EPS, verbose=0)),
        (f"CW-L2 (success counted at ‖δ‖₂ ≤ {CW_L2_BUDGET})", xs, ys, lambda: a.cw_l2(model, xs, ys, verbose=0)),
        ("SPSA (" + ", ".join(f"{k}={v}" for k, v in STRONG_SPSA.items()) + ")", xq, yq,
         lambda: a.spsa(model, xq, yq, eps=EPS, seed=seed, verbose=0, **STRONG_SPSA)),
        (f"Square ({STRONG_SQUARE['queries']} queries, p_init={STRONG_SQUARE['p_init']})", xs, ys,
         lambda: a.square(model, xs, ys, eps=EPS, seed=seed, verbose=0, **STRONG_SQUARE)),
        ("uniform noise U(-ε, ε)", x, y, lambda: a.noise(x, eps=EPS, kind="uniform", seed=seed)),
        ("gaussian noise N(0, ε²)", x, y, lambda: a.noise(x, eps=EPS, kind="gaussian", seed=seed)),
    ]
    rows = []
    for name, x_in, labels, run in specs:
        x_adv, seconds = timed(run)
        row = {"attack": name, "images": len(x_in), "seconds": seconds}
        if name.startswith("CW"):
            x_adv, norms = within_l2_budget(x_adv, x_in)
            fooled = norms[norms > 0]
            row["median_l2"] = float(np.median(fooled)) if len(fooled) else None
        row["accuracy"] = kq.metrics.accuracy(model, x_adv, labels)
        rows.append(row)
        log(f"    {name}: {100 * row['accuracy']:.2f}% ({seconds:.1f} s)")
    result, seconds = timed(a.autoattack, model, xs, ys, eps=EPS, version="standard", seed=seed, verbose=0)
    rows.append({"attack": "AutoAttack (standard)", "images": len(xs), "seconds": seconds,
                 "accuracy": result.robust_accuracy, "interval95": list(result.interval()),
                 "broken_by": result.broken_counts(), "findings": list(result.findings)})
    log(f"    AutoAttack (standard): {100 * result.robust_accuracy:.2f}% ({seconds:.1f} s)")
    return rows


# -------------------------------------------------------------------------- report
def _with_interval(row: dict) -> str:
    """An accuracy in percent, with its 95% interval where the row has one."""
    if "interval95" not in row:
        return f"{100 * row['accuracy']:.2f}"
    return with_interval(row["accuracy"], row["interval95"])


def markdown(data) -> str:
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    lines = ["# Attacks on Fashion-MNIST cnn_small", "",
             f"Command: `{data['command']}`. Machine: {data['machine']['cpus']} CPUs, "
             f"{data['machine']['platform']}. ε = {EPS} (L∞). UAPs are crafted on "
             f"{data['craft_images']} training images and scored on {data['test_images']} test images "
             f"(fooling rate against the model's clean predictions). Seed {data['seed']}. Total wall time "
             f"{data['total_seconds'] / 60:.1f} min.", ""]
    for model_name, section in data["models"].items():
        lines += [f"## {model_name}", "", f"Training: {section['training']}. Clean test accuracy: "
                  f"{pct(section['clean_accuracy'])}%.", "", "### UAP vs ART", "",
                  "| method | time s | held-out fooling % | accuracy under UAP % | configuration |",
                  "|---|---|---|---|---|"]
        for r in section["uap"]:
            lines.append(f"| {r['method']} | {r['seconds']:.2f} | {pct(r['heldout_fooling_rate'])} | "
                         f"{pct(r['heldout_accuracy'])} | `{r['config']}` |")
        lines += ["", "### Accuracy under attack (float vs w4a4 PTQ; AutoAttack with its 95% interval)", "",
                  "| attack | images | fp32 % | w4a4 % | fp32 s | w4a4 s |", "|---|---|---|---|---|---|"]
        for f, q in zip(section["attacks"]["fp32"], section["attacks"]["w4a4"]):
            extra = (f" (median L2 of the found examples {_num(f['median_l2'])} / {_num(q['median_l2'])})"
                     if "median_l2" in f else "")
            lines.append(f"| {f['attack']}{extra} | {f['images']} | {_with_interval(f)} | {_with_interval(q)} | "
                         f"{f['seconds']:.1f} | {q['seconds']:.1f} |")
        lines += [f"| | | ! {setting}: {finding} | | | |" for setting in ("fp32", "w4a4")
                  for finding in section["attacks"][setting][-1].get("findings", [])]
        lines.append("")
    ens = data["ensemble"]
    lines += ["## Ensemble UAP over {fp32, w8a8, w4a4, w2a2} (standard model)", "",
              f"Single-model UAP (fp32, `uap` defaults): {ens['single_seconds']:.2f} s, {ens['single_passes']} "
              "passes.", "", "| ensemble step rule | time s | passes | time / single | "
              + " | ".join(f"{k} accuracy %" for k in ens["rules"][0]["accuracy"]) + " |",
              "|---|---|---|---|" + "---|" * len(ens["rules"][0]["accuracy"])]
    for r in ens["rules"]:
        lines.append(f"| {r['rule']} | {r['seconds']:.2f} | {r['passes']} | {r['ratio']:.2f} | "
                     + " | ".join(pct(v) for v in r["accuracy"].values()) + " |")
    lines += ["",
              "Transfer matrix (UAP crafted on the row model, accuracy of the column model):", "",
              ens["transfer_matrix_markdown"], "",
              "## PGD-20 throughput (fp32 standard model, same batches)", "",
              f"ours {data['throughput']['ours']:.0f} images/s, cleverhans {data['throughput']['cleverhans']:.0f} "
              f"images/s (ratio {data['throughput']['ratio']:.2f}).", "",
              *targets_table(data["checks"])]
    return "\n".join(lines) + "\n"


def _num(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def checks(data) -> list[dict]:
    out = []
    for model_name, section in data["models"].items():
        rows = {r["method"]: r for r in section["uap"]}
        art, ours = rows["ART fgsm-UAP"], rows["ours uap (fgsm inner)"]
        speedup = art["seconds"] / ours["seconds"]
        out.append({"check": f"{model_name}: our UAP ≥ {TARGET_SPEEDUP:.0f}x faster than ART fgsm-UAP",
                    "value": f"{speedup:.1f}x", "passed": speedup >= TARGET_SPEEDUP})
        out.append({"check": f"{model_name}: our held-out fooling rate > ART fgsm-UAP's",
                    "value": f"{100 * ours['heldout_fooling_rate']:.1f}% vs {100 * art['heldout_fooling_rate']:.1f}%",
                    "passed": ours["heldout_fooling_rate"] > art["heldout_fooling_rate"]})
    for r in data["ensemble"]["rules"]:
        out.append({"check": f"ensemble UAP [{r['rule']}] time ≤ {TARGET_ENSEMBLE_RATIO:.0f}x single-model UAP",
                    "value": f"{r['ratio']:.2f}x", "passed": r["ratio"] <= TARGET_ENSEMBLE_RATIO})
    t = data["throughput"]["ratio"]
    verdict = "parity (inside ±5%: noise, not a speed-up)" if abs(t - 1.0) <= 0.05 else (
        "faster" if t > 1 else "slower")
    out.append({"check": "PGD-20 throughput at parity with cleverhans or faster (ratio ≥ 0.95)",
                "value": f"{t:.3f}× — {verdict}", "passed": t >= 0.95})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--slow-images", type=int, default=500,
                        help="test images for DeepFool, CW-L2 and Square (default 500)")
    parser.add_argument("--spsa-images", type=int, default=200, help="test images for SPSA (default 200)")
    parser.add_argument("--quick", action="store_true", help="small subsets for a smoke run")
    args = parser.parse_args()
    started = time.perf_counter()

    x_train, y_train = kq.datasets.load("fashion_mnist", "train")
    x_test, y_test = kq.datasets.load("fashion_mnist", "test")
    rng = np.random.default_rng(args.seed)
    x_craft = x_train[rng.choice(len(x_train), 1000, replace=False)]
    x_cal = x_train[rng.choice(len(x_train), 1024, replace=False)]
    if args.quick:
        x_test, y_test, args.slow_images, args.spsa_images = x_test[:1000], y_test[:1000], 50, 20

    data = {"benchmark": "attacks", "command": "./run.sh bench attacks" + (" --quick" if args.quick else ""),
            "machine": machine(), "seed": args.seed, "eps": EPS, "craft_images": len(x_craft),
            "test_images": len(x_test), "slow_images": args.slow_images,
            "spsa_images": args.spsa_images, "models": {}}
    quantized_standard = None
    for model_name, adversarial in (("standard", None), ("FGSM-RS", {"attack": "fgsm_rs", "eps": EPS})):
        model, training = trained_model("cnn_small", args.epochs, args.seed, adversarial=adversarial)
        log(f"{model_name}: {training}")
        copies = {"fp32": model}
        for setting in ("w8a8", "w4a4", "w2a2"):
            copies[setting] = kq.RobustQuantizer.from_setting(setting).quantize(model, x_cal)
        if model_name == "standard":
            quantized_standard = copies
        log("  UAP comparison")
        section = {"training": f"{args.epochs} epochs" + (f", AdversarialModel({adversarial})" if adversarial else ""),
                   "clean_accuracy": kq.metrics.accuracy(model, x_test, y_test),
                   "uap": uap_comparison(model, x_craft, x_test, y_test, args.seed,
                                             art_deepfool=model_name == "standard" and not args.quick),
                   "attacks": {}}
        for setting in ("fp32", "w4a4"):
            log(f"  attack table {setting}")
            section["attacks"][setting] = attack_table(copies[setting], x_test, y_test, args.slow_images,
                                                        args.spsa_images, args.seed)
        data["models"][model_name] = section
    log("ensemble UAP")
    data["ensemble"] = ensemble_section(quantized_standard, x_craft, x_test, y_test, args.seed)
    log("PGD-20 throughput")
    data["throughput"] = pgd_throughput(quantized_standard["fp32"], x_test[:1000], y_test[:1000])
    data["total_seconds"] = time.perf_counter() - started
    data["checks"] = checks(data)
    publish("attacks", args.quick, data, markdown(data))


if __name__ == "__main__":
    main()

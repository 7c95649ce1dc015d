"""Reproduce Zhou et al. 2022, "Guarding against universal adversarial perturbations in
data-driven cloud/edge services", on Fashion-MNIST (their CIFAR-10/100 and SVHN models are
not available here).

Part ``natural`` (§IV-B, Fig. 6-7): a standard-trained ``cnn_small`` at fp32, w8a8, w4a4,
w3a3 and w2a2 (RobustQuantizer PTQ, the CNN2SNN flow the paper uses) under white-box UAPs
(FGSM inner step, L∞) over an ε sweep: direct (crafted on the test images it is scored on)
and indirect (crafted on training images, scored on the test images); the ensemble UAP of
Algorithm 2 over all five models (direct and indirect); and the transfer matrix (UAP crafted
on model i, accuracy of model j; indirect).

Part ``robust`` (§III-A, §IV-C, Fig. 8-10): the shared PGD-AT ``cnn_small``
(``benchmarks/_models.robust_model``) quantized at w8a8 … w4a4; Algorithm 1
(``kq.analysis.search``, PGD-20 at ε = 0.1) chooses the setting on the first 500 images of
the validation split (the last 5,000 training images: never the test set; the shared model
was trained on the whole training split, so they are images it has seen), with the natural
floor at the fp32 clean accuracy minus 2 points; then every setting is scored under the same
UAPs (direct, indirect, ensemble), under PGD-20 and under standard AutoAttack at ε = 0.1
(``fast`` with ``--quick``) with its 95 % interval, the robust accuracy claims rest on.

Expected (the paper): natural quantized models stay vulnerable to UAPs at every precision,
and PTQ of the robust model preserves its UAP and PGD accuracy (≥ 6 bits within a point).

    .venv/bin/python examples/reproduce_zhou2022.py [--quick] [--seed 0] [--part natural|robust|all]
"""

from __future__ import annotations

import numpy as np

import _reproduce as rp  # the reproductions' shared pieces, beside this file
import keras_qrobust as kq

kq.tf.get_logger().setLevel("ERROR")  # predict retracing warnings for the many quantized copies
uap_mod = kq.attacks  # uap, ensemble_uap, uap_transfer_matrix
NATURAL_SETTINGS = ("w8a8", "w4a4", "w3a3", "w2a2")
ROBUST_SETTINGS = ("w8a8", "w7a7", "w6a6", "w5a5", "w4a4")
UAP_EPS = (0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.125)  # L∞; Zhou's sweep reaches 12.5% of the range
PGD_EPS = (0.0, 0.05, 0.1)
AUTOATTACK_EPS = 0.1
TRANSFER_EPS = 0.1
UAP_SETTINGS = ("uap_direct", "uap_indirect", "ensemble_direct", "ensemble_indirect")


def quantized_family(model, settings, samples) -> dict:
    """``{"fp32": model, "wXaY": RobustQuantizer PTQ copy, ...}``."""
    models = {"fp32": model}
    for setting in settings:
        models[setting] = kq.RobustQuantizer.from_setting(setting).quantize(model, samples)
    return models


def accuracy_under(model, x, y, v: np.ndarray) -> float:
    """Accuracy on ``clip(x + v)``."""
    return kq.metrics.accuracy(model, np.clip(x + v, 0.0, 1.0), y)


def uap_grid(models: dict, x_craft, x_test, y_test, seed: int) -> dict:
    """``accuracy[name][setting]`` over :data:`UAP_EPS` for the four UAP settings.

    ``uap_direct``: ``kq.attacks.uap`` crafted on ``x_test`` against the scored model;
    ``uap_indirect``: crafted on ``x_craft`` (training images); ``ensemble_*``: one
    ``ensemble_uap`` (Algorithm 2) over all models, each model scored under it.
    """
    accuracy = {name: {s: [] for s in UAP_SETTINGS} for name in models}
    clean = {name: kq.metrics.accuracy(m, x_test, y_test) for name, m in models.items()}
    for eps in UAP_EPS:
        if eps == 0.0:
            for name in models:
                for s in UAP_SETTINGS:
                    accuracy[name][s].append(clean[name])
            continue
        for name, m in models.items():
            for setting, source in (("uap_direct", x_test), ("uap_indirect", x_craft)):
                v = uap_mod.uap(m, source, eps=eps, seed=seed, verbose=0).perturbation
                accuracy[name][setting].append(accuracy_under(m, x_test, y_test, v))
        for setting, source in (("ensemble_direct", x_test), ("ensemble_indirect", x_craft)):
            v = uap_mod.ensemble_uap(list(models.values()), source, eps=eps, seed=seed, verbose=0).perturbation
            for name, m in models.items():
                accuracy[name][setting].append(accuracy_under(m, x_test, y_test, v))
        rp.log(f"UAP ε={eps:g}: " + ", ".join(f"{n} {100 * accuracy[n]['uap_indirect'][-1]:.1f}%" for n in models))
    return accuracy


def uap_report(models: dict, accuracy: dict, transfer, samples: int, crafted: int, seed: int, description: str):
    provenance = {"attacks": {
        "uap_direct": f"UAP (FGSM inner step, α = ε/5) crafted on the {samples} scored test images, white-box",
        "uap_indirect": f"UAP crafted on {crafted} training images, scored on the test images, white-box",
        "ensemble_direct": "ensemble UAP (Zhou 2022 Algorithm 2, α = ε, per-step model sampling) over all the models, "
                           "crafted on the scored test images",
        "ensemble_indirect": f"ensemble UAP over all the models, crafted on {crafted} training images"},
        "eps": list(UAP_EPS), "norm": "inf", "samples": samples, "seed": seed, "model": description}
    bits = {name: kq.parse_setting(name)[0] for name in models if name != "fp32"}
    transfer_data = None if transfer is None else {"labels": list(transfer.names),
                                                   "accuracy": np.asarray(transfer.accuracy).tolist()}
    return kq.report.RobustnessReport.build(accuracy=accuracy, eps=list(UAP_EPS), attacks=list(UAP_SETTINGS),
                                            provenance=provenance, bits=bits, transfer=transfer_data)


def uap_tables(accuracy: dict, title: str) -> list[str]:
    lines = []
    for setting in UAP_SETTINGS:
        rows = [[name] + [rp.pct(v) for v in accuracy[name][setting]] for name in accuracy]
        lines += [f"### {title}: {setting} — accuracy %", ""]
        lines += rp.markdown_table(["model"] + [f"ε={e:g}" for e in UAP_EPS], rows) + [""]
    return lines


def run_natural(args, folder, data) -> tuple[dict, list[str]]:
    """Part natural: UAP grid, ensemble UAP and transfer matrix on the standard-trained model."""
    (x_train, _), (x_test, y_test) = data
    model, description = rp.natural_model(args.quick, args.seed)
    models = quantized_family(model, NATURAL_SETTINGS, x_train[:1024])
    accuracy = uap_grid(models, x_train, x_test, y_test, args.seed)
    transfer = uap_mod.uap_transfer_matrix(models, x_train, x_test, y_test, eps=TRANSFER_EPS, seed=args.seed,
                                           verbose=0)
    report = uap_report(models, accuracy, transfer, len(x_test), len(x_train), args.seed, description)
    rp.save_report(report, folder / "natural_uap")
    lines = [f"## Natural models ({description})", ""] + uap_tables(accuracy, "natural")
    lines += [f"### Transfer matrix (indirect UAP, ε = {TRANSFER_EPS}): accuracy % of the column model under the "
              "row model's UAP", ""]
    lines += rp.markdown_table(["crafted on \\ scored on"] + list(transfer.names),
                               [[n] + [rp.pct(v) for v in row] for n, row in zip(transfer.names, transfer.accuracy)])
    lines += [""]
    return {"model": description, "accuracy": accuracy, "transfer": transfer.to_dict()}, lines


def run_robust(args, folder, data, search_data) -> tuple[dict, list[str]]:
    """Part robust: Algorithm 1 on the PGD-AT model, then UAP and PGD accuracy per setting."""
    (x_train, _), (x_test, y_test) = data
    model, description = rp.robust_or_quick_model(args.quick, args.seed)
    x_search, y_search = search_data
    clean = kq.metrics.accuracy(model, x_search, y_search)
    floor = max(clean - 0.02, 0.0)
    search = kq.analysis.search(kq.RobustQuantizer(), model, (x_search, y_search),
                                candidates=list(ROBUST_SETTINGS), attack="pgd", eps=0.1, natural_floor=floor,
                                samples=x_train[:1024], seed=args.seed, verbose=0)
    rp.log(search.to_markdown())
    models = quantized_family(model, ROBUST_SETTINGS, x_train[:1024])
    accuracy = uap_grid(models, x_train, x_test, y_test, args.seed)
    rp.save_report(uap_report(models, accuracy, None, len(x_test), len(x_train), args.seed, description),
                   folder / "robust_uap")
    pgd = kq.evaluate(models, (x_test, y_test), attacks=["pgd"], eps=list(PGD_EPS), pgd_steps=20, seed=args.seed,
                      verbose=0)
    pgd.provenance["model"] = description
    rp.save_report(pgd, folder / "robust_pgd")
    autoattack = rp.autoattack_column(models, x_test, y_test, AUTOATTACK_EPS, args.quick, args.seed)
    version = autoattack["fp32"]["version"]
    lines = [f"## Defensive PTQ of the robust model ({description})", "",
             f"### Algorithm 1 on the first {len(x_search)} validation images (fp32 clean {100 * clean:.2f}%, "
             f"floor {100 * floor:.2f}%)", "", search.to_markdown()]
    lines += uap_tables(accuracy, "robust")
    rows = [[name] + [rp.pct(v) for v in pgd.accuracy[name]["pgd"]] + [rp.with_interval(autoattack[name])]
            for name in models]
    lines += [f"### robust: PGD-20 and {version} AutoAttack — accuracy % (AutoAttack with its 95% interval)", ""]
    lines += rp.markdown_table(["model"] + [f"PGD-20 ε={e:g}" for e in PGD_EPS]
                               + [f"AutoAttack ε={AUTOATTACK_EPS:g}"], rows) + [""]
    lines += shape_check(accuracy, pgd.accuracy, autoattack)
    return {"model": description, "search": search.to_dict(), "search_clean": clean, "floor": floor,
            "search_split": "validation", "accuracy": accuracy, "pgd": pgd.accuracy,
            "autoattack": autoattack}, lines


def shape_check(accuracy: dict, pgd: dict, autoattack: dict) -> list[str]:
    """Drop from fp32 (points) of every setting, per attack, at the training ε = 0.1."""
    i_uap, i_pgd = UAP_EPS.index(0.1), PGD_EPS.index(0.1)
    rows = []
    for name in accuracy:
        if name == "fp32":
            continue
        drops = [100 * (accuracy["fp32"][s][i_uap] - accuracy[name][s][i_uap]) for s in UAP_SETTINGS]
        drops.append(100 * (pgd["fp32"]["pgd"][i_pgd] - pgd[name]["pgd"][i_pgd]))
        drops.append(100 * (autoattack["fp32"]["accuracy"] - autoattack[name]["accuracy"]))
        rows.append([name] + [f"{d:+.2f}" for d in drops])
    return ["### Drop from fp32 at ε = 0.1 (points; positive = the quantized model is less accurate)", ""] + \
        rp.markdown_table(["setting"] + list(UAP_SETTINGS) + ["pgd", "autoattack"], rows) + [""]


def main(argv=None) -> dict:
    args = rp.parse_args(__doc__.splitlines()[0], argv, part=(str, "all", "natural, robust or all"),
                         test=(int, 1000, "test images scored (the first N)"),
                         craft=(int, 1000, "training images the indirect UAPs are crafted on"))
    if args.part not in ("natural", "robust", "all"):
        raise SystemExit(f"--part must be natural, robust or all, got {args.part!r}")
    clock = rp.Clock()
    folder = rp.results_dir("zhou2022", args)
    if args.replot:
        rp.replot(folder)
        return {}
    data = rp.fashion_mnist(args.quick, args.craft, args.test, quick_train=200, quick_test=200)
    x_val, y_val = kq.datasets.load("fashion_mnist", "validation")
    n_test, n_search = len(data[1][0]), 200 if args.quick else 500
    search_data = (x_val[:n_search], y_val[:n_search])
    rp.log(f"{n_test} test images scored, {len(data[0][0])} training images for the indirect UAPs, "
           f"{n_search} validation images for Algorithm 1")
    results = {"seed": args.seed, "test": n_test, "craft": len(data[0][0]), "uap_eps": list(UAP_EPS),
               "pgd_eps": list(PGD_EPS)}
    for part, run in (("natural", run_natural), ("robust", run_robust)):
        if args.part not in (part, "all"):
            continue
        part_clock = rp.Clock()
        extra = (search_data,) if part == "robust" else ()
        result, lines = run(args, folder, data, *extra)
        result["seconds"] = round(part_clock.seconds, 1)
        lines += [part_clock.line(f"examples/reproduce_zhou2022.py --part {part}", args.quick), ""]
        results[part] = result
        header = [f"# Zhou et al. 2022 reproduction — part {part}", "",
                  f"Fashion-MNIST; {n_test} test images scored, indirect UAPs crafted on {len(data[0][0])} "
                  f"training images; seed {args.seed}.", ""]
        rp.write_outputs(folder, part, rp.to_jsonable(results[part] | {"test": n_test}), "\n".join(header + lines))
    print(clock.line(f"examples/reproduce_zhou2022.py --part {args.part}", args.quick))
    return results


if __name__ == "__main__":
    main()

"""Reproduce Song, Ranjan & Li 2021, "A layer-wise adversarial-aware quantization optimization
for improving robustness" (arXiv:2110.12308; only the abstract is available here).

The claim: adversarially trained networks lose robustness under quantization, and choosing
each layer's quantization parameters (bits and clipping) by the Lipschitz constant of its
quantization error keeps more of it than a uniform choice. Here, on the shared PGD-AT
``cnn_small`` (Fashion-MNIST, ``benchmarks/_models.robust_model``), for average weight budgets
of 3, 4 and 5 bits per weight (equal model size):

* ``uniform wB`` — every layer at B bits, max scaling (cnn2snn's per-channel max quantizer);
* ``uniform wB + clip`` — every layer at B bits with its σ_max-minimizing clipping ratio;
* ``layer-wise B`` — ``keras_qrobust.analysis.allocate_bits(model, budget=B)``: per-layer
  bits and clipping ratio minimizing ``σ_max(Q(W) − W)`` (Song 2020 eq. 2), lowered greedily
  where σ_max rises least per bit saved, until the average fits the budget.

Weights only (activations stay float), so the comparison is about the weight allocation;
clean, FGSM and PGD-20 (white-box, L∞) accuracy on the first test images, and standard
AutoAttack at ε = 0.1 (``fast`` with ``--quick``) with its 95 % interval, the robust accuracy
claims rest on (PGD-20 is the paper's attack and a smoke test).

    .venv/bin/python examples/reproduce_song2021.py [--quick] [--seed 0]
"""

from __future__ import annotations

import _reproduce as rp  # the reproductions' shared pieces, beside this file
import keras_qrobust as kq
from keras_qrobust.analysis import allocate_bits, layer_costs

BUDGETS = (3, 4, 5)
EPS = (0.0, 0.05, 0.1)  # the model was trained at ε = 0.1
AUTOATTACK_EPS = 0.1


def average_bits(layer_bits: dict, costs) -> float:
    """Weights-weighted mean of the per-layer bits (the model size in bits per weight)."""
    total = sum(c.params for c in costs)
    return sum(layer_bits[c.layer] * c.params for c in costs) / total


def variants(model, costs, budget: int) -> dict:
    """``{name: (RobustQuantizer, layer_bits, layer_clip)}`` for one budget."""
    uniform_bits = {c.layer: budget for c in costs}
    clip = {c.layer: float(c.clip[budget]) for c in costs}
    allocation = allocate_bits(model, budget=float(budget), costs=costs)
    weight_only = dict(activation_bits=None)
    return {
        f"uniform w{budget}": (kq.RobustQuantizer(weight_bits=budget, input_weight_bits=budget, **weight_only),
                               uniform_bits, {c.layer: 1.0 for c in costs}),
        f"uniform w{budget} + clip": (kq.RobustQuantizer(weight_bits=budget, layer_bits=uniform_bits, layer_clip=clip,
                                                         **weight_only), uniform_bits, clip),
        f"layer-wise {budget}": (allocation.quantizer(**weight_only), dict(allocation.layer_bits),
                                 dict(allocation.layer_clip)),
    }


def sigma_sum(costs, layer_bits: dict, layer_clip: dict, model) -> float:
    """Σ over layers of σ_max(Q(W) − W) at the chosen bits and clip (the allocation's objective)."""
    sigma = {}
    for bits, clip in sorted({(layer_bits[c.layer], layer_clip[c.layer]) for c in costs}):
        # layer_costs at one bit width and one clipping ratio: σ_max there, for every layer
        for cost in layer_costs(model, bits_options=(bits,), clip_ratios=(clip,)):
            if (layer_bits[cost.layer], layer_clip[cost.layer]) == (bits, clip):
                sigma[cost.layer] = cost.sigma[bits]
    return sum(sigma[c.layer] for c in costs)


def main(argv=None) -> dict:
    args = rp.parse_args(__doc__.splitlines()[0], argv,
                         test=(int, 1000, "test images scored (the first N)"))
    clock = rp.Clock()
    folder = rp.results_dir("song2021", args)
    if args.replot:
        rp.replot(folder)
        return {}
    (x_train, _), (x_test, y_test) = rp.fashion_mnist(args.quick, 1024, args.test, quick_train=256, quick_test=200)
    model, description = rp.robust_or_quick_model(args.quick, args.seed)
    rp.log(f"model: {description}; scoring {len(x_test)} test images, calibration {len(x_train)}")
    costs = layer_costs(model)
    models, plan = {"fp32": model}, {}
    for budget in BUDGETS:
        for name, (quantizer, bits, clip) in variants(model, costs, budget).items():
            models[name] = quantizer.quantize(model)
            plan[name] = {"budget": budget, "layer_bits": bits, "layer_clip": clip,
                          "average_bits": average_bits(bits, costs), "quantizer": str(quantizer),
                          "sigma_max_sum": sigma_sum(costs, bits, clip, model)}
    report = kq.evaluate(models, (x_test, y_test), attacks=["fgsm", "pgd"], eps=list(EPS), pgd_steps=20,
                         seed=args.seed, bits={}, verbose=0)
    report.provenance.update({"model": description, "weights_only": True})
    rp.save_report(report, folder)
    autoattack = rp.autoattack_column(models, x_test, y_test, AUTOATTACK_EPS, args.quick, args.seed)
    data = {"model": description, "test": int(len(x_test)), "seed": args.seed, "eps": list(EPS),
            "costs": [{"layer": c.layer, "params": c.params, "sigma": c.sigma, "clip": c.clip} for c in costs],
            "plan": plan, "accuracy": report.accuracy, "autoattack": autoattack, "seconds": round(clock.seconds, 1)}
    rp.write_outputs(folder, "summary", rp.to_jsonable(data), markdown(report, autoattack, plan, costs, description,
                                                                       len(x_test), clock, args.quick))
    print(clock.line("examples/reproduce_song2021.py", args.quick))
    return data


def markdown(report, autoattack: dict, plan: dict, costs, description: str, samples: int, clock,
             quick: bool) -> str:
    """The comparison table (per budget) and the per-layer allocations."""
    acc = report.accuracy
    version = next(iter(autoattack.values()))["version"]
    lines = ["# Song et al. 2021 reproduction: layer-wise vs uniform weight bits at equal size", "",
             f"Model: {description}. {samples} test images; FGSM and PGD-20 (L∞, random start, α = 2.5ε/20) and "
             f"{version} AutoAttack at ε = {AUTOATTACK_EPS} (95% Wilson interval), white-box against each "
             "quantized model; weights quantized, activations float.", "",
             "| model | avg bits | Σ σ_max(Q(W) − W) | clean % | FGSM ε=0.05 | FGSM ε=0.1 | PGD ε=0.05 | PGD ε=0.1 "
             f"| AutoAttack ε={AUTOATTACK_EPS} |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = {"fp32": {"average_bits": None, "sigma_max_sum": 0.0}, **plan}
    for name, p in rows.items():
        a = acc[name]
        bits = "32" if p["average_bits"] is None else f"{p['average_bits']:.2f}"
        sigma = "0" if p["average_bits"] is None else f"{p['sigma_max_sum']:.3f}"
        lines.append(f"| {name} | {bits} | {sigma} | {rp.pct(a['pgd'][0])} | "
                     f"{rp.pct(a['fgsm'][1])} | {rp.pct(a['fgsm'][2])} | {rp.pct(a['pgd'][1])} | "
                     f"{rp.pct(a['pgd'][2])} | {rp.with_interval(autoattack[name])} |")
    lines += ["", "## Per-layer bits / clipping ratio", "",
              "| model | " + " | ".join(f"{c.layer} ({c.params} w)" for c in costs) + " |",
              "|---|" + "---|" * len(costs)]
    for name, p in plan.items():
        lines.append(f"| {name} | " + " | ".join(f"{p['layer_bits'][c.layer]} / {p['layer_clip'][c.layer]:.2f}"
                                                   for c in costs) + " |")
    lines += ["", clock.line("examples/reproduce_song2021.py", quick), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Stage 3, attack: every candidate (and the float model) under PGD, UAP, the ensemble UAP
across all of them, and PGD transferred from the surrogate, at ε/2 and ε; and AutoAttack at
ε (Croce & Hein 2020; ``--autoattack`` fast or standard) on the first
``--autoattack-samples`` test inputs, the robust accuracy guard reports.

For a TFLite or ONNX target every candidate is attacked through its integer twin for that
runtime (:func:`keras_qrobust.export.integer_twin`: the file's integer arithmetic forward, the
fake-quant gradients backward), for an Akida target through its Akida twin
(:func:`keras_qrobust.export.akida_twin`: the quantizeml model the ``.fbz`` is converted from),
so the attacked function is the one the file computes; the twin's own check on the file is
recorded.

The accuracy grid goes into the state; the perturbations and the surrogate's adversarial
inputs go into ``attacks.npz`` so the exported model is scored on the very same inputs.
"""

from __future__ import annotations

import weakref

import numpy as np

from .. import attacks, metrics
from .._io import atomic_path
from ..executor import run_tasks, ship_models, unship
from .context import Context, say

__all__ = ["attack_stage", "ATTACKS", "eps_grid", "descriptions", "pgd_inputs", "UAP_PASSES", "autoattack_inputs",
           "autoattack_summary", "attack_tasks", "attack_cell", "model_results", "attacked_model", "TWIN_TARGETS"]

#: target -> the runtime whose integer arithmetic the twin computes bit for bit
TWIN_TARGETS = {"tflite-int8": "tflite", "onnx": "onnx", "akida": "akida"}
_RUNTIME_NAMES = {"tflite": "TFLite", "onnx": "ONNX", "akida": "Akida"}
_TWINS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # model -> {runtime: twin}


def attacked_model(model, target: str, samples=None):
    """What guard attacks for ``model``: for a TFLite, ONNX or Akida target, a RobustQuantizer
    model's twin for that runtime (for Akida also a quantizeml candidate's; built once per model
    and process), else ``model``. Returns ``(model, twin or None)``. ``samples``: data inputs
    the Akida twin is also checked on against its file (beside random ones: where cnn2snn fuses
    layers, the outputs may differ on data and not on noise)."""
    from ..export import akida_twin, integer_twin, is_akida_quantized
    from ..export.lowering import is_robust_quantized

    twinned = is_robust_quantized(model) or (target == "akida" and is_akida_quantized(model))
    if target not in TWIN_TARGETS or not twinned:
        return model, None
    runtime = TWIN_TARGETS[target]
    twins = _TWINS.setdefault(model, {})
    if runtime not in twins:
        twins[runtime] = akida_twin(model, samples) if runtime == "akida" else integer_twin(model, runtime=runtime)
    twin = twins[runtime]
    return twin.model, twin

ATTACKS = ("pgd", "uap", "ensemble_uap", "transfer")
UAP_PASSES = 10


def eps_grid(eps: float) -> list[float]:
    """The ε columns of the grid: 0 (clean), ε/2 and ε."""
    return [0.0, round(eps / 2, 6), float(eps)]


def descriptions(config, names: list[str], uap_inputs: int) -> dict:
    """How each attack column was obtained (for the report's provenance)."""
    k = config.pgd_steps
    return {
        "pgd": f"PGD-{k}, L∞, random start, α = 2.5ε/{k}, CE loss, white-box against the model scored (seed "
               f"{config.seed})",
        "uap": f"UAP (Moosavi-Dezfooli 2017, FGSM inner step α = ε/5, up to {UAP_PASSES} passes) crafted against the "
               f"model scored on {uap_inputs} training inputs, scored on the test inputs (Zhou 2022 indirect)",
        "ensemble_uap": f"ensemble UAP (Zhou 2022 Algorithm 2, a model drawn per step, α = ε) crafted on {uap_inputs} "
                        f"training inputs across {{{', '.join(names)}}}; the one perturbation scored on every model",
        "transfer": f"PGD-{k} crafted on the independently trained surrogate (black-box transfer), scored on the "
                    "model",
    }


def autoattack_inputs(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """The test inputs AutoAttack (and Square on the artifact) run on: the first ``--autoattack-samples``."""
    n = min(ctx.config.autoattack_samples, len(ctx.data.x_test))
    return ctx.data.x_test[:n], ctx.data.y_test[:n]


def autoattack_summary(result) -> dict:
    """An AutoAttack result for the state and the report (without wall-clock seconds, so reruns
    give byte-identical reports)."""
    data = result.to_dict()
    data.pop("seconds", None)
    return data


def pgd_inputs(model, ctx: Context, eps: float) -> np.ndarray:
    """The attack stage's PGD examples of ``model`` at ``eps`` (the remeasure stage scores them again)."""
    return _pgd(model, ctx.data.x_test, ctx.data.y_test, eps, ctx.config.pgd_steps, ctx.config.seed)


def _pgd(model, x, y, eps: float, steps: int, seed: int) -> np.ndarray:
    return attacks.pgd(model, x, y, eps=eps, steps=steps, seed=seed, verbose=0)


def _uap(model, x_craft, eps: float, seed: int) -> np.ndarray:
    return attacks.uap(model, x_craft, eps=eps, max_passes=UAP_PASSES, seed=seed, verbose=0).perturbation


def _with(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.clip(x + v, 0.0, 1.0)


def attack_tasks(names: list[str], columns: list[float]) -> dict:
    """The attack stage's tasks for :func:`keras_qrobust.executor.run_tasks`: per model its
    AutoAttack at ε, and its PGD and its own UAP at each ε column, each a task of its own (every
    attack draws from its own seed, so splitting a model's work changes no number). Listed
    longest kind first — AutoAttack, UAP, PGD — so that workers are dealt the long tasks first."""
    tasks = {f"{name}|autoattack": (name, "autoattack", -1) for name in names}
    for kind in ("uap", "pgd"):
        tasks.update({f"{name}|{kind}|{column}": (name, kind, column) for name in names
                      for column in range(len(columns))})
    return tasks


def attack_cell(shared: dict, name: str, kind: str, column: int):
    """One task of :func:`attack_tasks`: model ``name``'s PGD accuracy, its UAP (accuracy and
    perturbation as a list) at ε column ``column``, or its AutoAttack summary at ε."""
    model, _ = attacked_model(unship(shared["models"][name], shared["trust"]), shared["target"])
    x, y, seed = shared["x"], shared["y"], shared["seed"]
    if kind == "autoattack":
        result = attacks.autoattack(model, shared["x_aa"], shared["y_aa"], eps=shared["eps"],
                                    version=shared["version"], seed=seed, verbose=0)
        return autoattack_summary(result)
    eps = shared["columns"][column]
    if kind == "pgd":
        return metrics.accuracy(model, _pgd(model, x, y, eps, shared["pgd_steps"], seed), y)
    v = _uap(model, shared["x_craft"], eps, seed)
    return {"accuracy": metrics.accuracy(model, _with(x, v), y), "perturbation": v.tolist()}


def model_results(cells: dict, names: list[str], columns: list[float]) -> dict:
    """Per model, the results of its :func:`attack_tasks`: ``pgd`` and ``uap`` accuracies and
    ``uap_perturbations`` by ε column, and ``autoattack``."""
    out = {}
    for name in names:
        uaps = [cells[f"{name}|uap|{c}"] for c in range(len(columns))]
        out[name] = {"pgd": [cells[f"{name}|pgd|{c}"] for c in range(len(columns))],
                     "uap": [u["accuracy"] for u in uaps],
                     "uap_perturbations": [np.asarray(u["perturbation"], np.float32) for u in uaps],
                     "autoattack": cells[f"{name}|autoattack"]}
    return out


def attack_stage(ctx: Context) -> tuple[dict, dict]:
    from tqdm.auto import tqdm

    config, data = ctx.config, ctx.data
    models = {"fp32": ctx.load_artifact("train", "float")}
    models.update({s: ctx.load_artifact("quantize", s) for s in config.candidates})
    surrogate = ctx.load_artifact("train", "surrogate")
    names = list(models)
    twins = {}
    attacked = {}
    for name, model in models.items():
        attacked[name], twin = attacked_model(model, config.target, data.x_test[:256])
        if twin is not None:
            twins[name] = {"exact": twin.exact, "approximated": list(twin.approximated)}
            kind = "Akida" if twin.runtime == "akida" else "integer"
            say(f"{name}: attacking its {kind} twin (the {_RUNTIME_NAMES[twin.runtime]} file's arithmetic)"
                + ("" if twin.exact else f"; not reproduced exactly: {'; '.join(twin.approximated)}"))
    x, y = data.x_test, data.y_test
    x_craft = data.x_train[:config.uap_samples]
    grid = {name: {attack: [metrics.accuracy(m, x, y)] for attack in ATTACKS} for name, m in attacked.items()}
    saved: dict[str, np.ndarray] = {}
    uaps_at_eps: dict[str, np.ndarray] = {}
    columns = eps_grid(config.eps)[1:]
    say(f"attacking {', '.join(names)} with {', '.join(ATTACKS)} at ε = {', '.join(f'{e:g}' for e in columns)} on "
        f"{len(x)} test inputs")
    x_aa, y_aa = autoattack_inputs(ctx)
    tasks = attack_tasks(names, columns)
    progress = tqdm(total=len(tasks) + len(columns) * 2, desc=f"attacks and AutoAttack {config.autoattack}",
                    unit="step")
    shared = {"models": ship_models(models, ctx.executor),
              "trust": ctx.trust_model, "x": x, "y": y, "x_craft": x_craft, "columns": columns, "seed": config.seed,
              "pgd_steps": config.pgd_steps, "x_aa": x_aa, "y_aa": y_aa, "eps": config.eps,
              "version": config.autoattack, "target": config.target}
    # each model's PGD, UAP and AutoAttack: independent tasks (here, or on Ray with the same numbers)
    cells = model_results(run_tasks(attack_cell, tasks, shared=shared, executor=ctx.executor, address=ctx.address,
                                    on_result=lambda key, result: progress.update(1)), names, columns)
    robust = {}
    for name in names:
        grid[name]["pgd"] += cells[name]["pgd"]
        grid[name]["uap"] += cells[name]["uap"]
        for column, v in enumerate(cells[name]["uap_perturbations"]):
            saved[f"uap/{name}/{column}"] = v
        uaps_at_eps[name] = cells[name]["uap_perturbations"][-1]
        robust[name] = cells[name]["autoattack"]
    for column, eps in enumerate(columns):
        ensemble = attacks.ensemble_uap(list(attacked.values()), x_craft, eps=eps, max_passes=UAP_PASSES,
                                        seed=config.seed, verbose=0).perturbation
        saved[f"ensemble_uap/{column}"] = ensemble
        progress.update(1)
        transferred = pgd_inputs(surrogate, ctx, eps)
        saved[f"transfer/{column}"] = transferred
        progress.update(1)
        for name, model in attacked.items():
            grid[name]["ensemble_uap"].append(metrics.accuracy(model, _with(x, ensemble), y))
            grid[name]["transfer"].append(metrics.accuracy(model, transferred, y))
    progress.close()
    # UAP crafted on model i (rows), accuracy of model j (columns), at ε
    matrix = [[metrics.accuracy(attacked[j], _with(x, uaps_at_eps[i]), y) for j in names] for i in names]
    with atomic_path(ctx.folder / "attacks.npz", overwrite=True) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, **saved)
    surrogate_clean = metrics.accuracy(surrogate, x, y)
    summary = {"grid": grid, "names": names, "transfer_matrix": {"labels": names, "accuracy": matrix},
               "descriptions": descriptions(config, names, len(x_craft)), "surrogate_clean": surrogate_clean,
               "test_inputs": int(len(x)), "uap_inputs": int(len(x_craft)), "autoattack": robust,
               "autoattack_inputs": int(len(x_aa)), "integer_twins": twins}
    return {"attacks": "attacks.npz"}, summary

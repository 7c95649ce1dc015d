"""Stages 2, 4, 5 and 6 of guard: quantize, choose, export, remeasure."""

from __future__ import annotations

import os
import shutil

import numpy as np

from .. import metrics
from .._io import atomic_path
from ..export import runtime
from ..export.profile import weight_bytes
from ..layers import TensorQuantizer
from ..analysis.bit_width_search import SettingResult, choose
from ..quantization import RobustQuantizer
from ..quantizers.grid import parse_setting
from .attacking import ATTACKS, attacked_model, autoattack_inputs, eps_grid, pgd_inputs
from .config import TARGETS
from .context import Context, save_model, say

__all__ = ["quantize_stage", "choose_stage", "export_stage", "remeasure_stage", "CALIBRATION_SAMPLES",
           "REPRESENTATIVE_SAMPLES", "FLOOR_MARGIN", "exported_name"]

CALIBRATION_SAMPLES = 1024
REPRESENTATIVE_SAMPLES = 512
FLOOR_MARGIN = 0.05  # default floor: the float model's clean accuracy minus this
SQUARE_P_INIT = 0.8  # AutoAttack's


def candidate_quantizer(setting: str, target: str) -> RobustQuantizer:
    """The RobustQuantizer of a candidate ``setting`` for the export ``target``."""
    # an Akida file returns its scores at accumulator precision: no 8-bit output grid on its twin
    return RobustQuantizer.from_setting(setting, input_weight_bits=8, quantize_output=target != "akida")


def akida_route(quantized) -> str | None:
    """For --target akida, how a candidate reaches Akida: ``None`` when the RobustQuantizer
    model ``quantized`` carries its grids, else why it cannot (its float model is then
    quantized by quantizeml instead, :func:`quantize_stage`)."""
    from ..export.akida import check_akida_compatible

    reasons = check_akida_compatible(quantized)
    # the advice to export the float model instead is what guard then does: not repeated
    return reasons[0].splitlines()[0].split(" Export the float model instead")[0] if reasons else None


def quantize_stage(ctx: Context) -> tuple[dict, dict]:
    """RobustQuantizer PTQ of the float model at every candidate setting. For --target akida,
    a candidate whose grids Akida cannot hold (a residual sum, an average, ...) is quantizeml's
    quantization of the float model at the same bits instead (the function its .fbz computes,
    attacked through its Akida twin)."""
    config, data = ctx.config, ctx.data
    model = ctx.load_artifact("train", "float")
    samples = data.x_train[:CALIBRATION_SAMPLES]
    artifacts, summary = {}, {"calibration_inputs": int(len(samples)), "quantizers": {},
                               "weight_bytes": {"fp32": weight_bytes(model)}}
    for setting in config.candidates:
        quantizer = candidate_quantizer(setting, config.target)
        say(f"quantizing: {quantizer}")
        quantized = quantizer.quantize(model, samples)
        summary["quantizers"][setting] = str(quantizer)
        summary["weight_bytes"][setting] = weight_bytes(quantized)  # at their bit width, for the report
        if config.target == "akida" and (reason := akida_route(quantized)) is not None:
            from ..export.akida import quantize_for_akida

            weight_bits, activation_bits = parse_setting(setting)
            say(f"{setting}: Akida cannot hold the RobustQuantizer grids ({reason}); quantizeml quantizes the float "
                f"model at {setting} (first layer 8 bits) instead")
            quantized = quantize_for_akida(model, samples, weight_bits=weight_bits, activation_bits=activation_bits,
                                           input_weight_bits=8)
            summary["quantizers"][setting] = f"quantizeml {setting}, first layer 8-bit weights (Akida's own grids)"
            summary.setdefault("quantizeml_instead", {})[setting] = reason
        artifacts[setting] = save_model(quantized, ctx.folder, f"candidates/{setting}.keras")
    return artifacts, summary


def choose_stage(ctx: Context) -> tuple[dict, dict]:
    """Zhou 2022 Algorithm 1 on the attack grid: the best worst-case accuracy at ε (the grid's
    attacks and AutoAttack) above the floor."""
    config = ctx.config
    grid = ctx.state.summary("attack")["grid"]
    robust = ctx.state.summary("attack").get("autoattack", {})
    if config.floor is None:
        floor = max(0.0, grid["fp32"]["pgd"][0] - FLOOR_MARGIN)
        floor_source = f"the float model's clean accuracy minus {FLOOR_MARGIN:g} (no --floor)"
    else:
        floor, floor_source = config.floor, "--floor"
    rows = []
    for setting in config.candidates:
        natural = grid[setting]["pgd"][0]
        adversarial = min([grid[setting][attack][-1] for attack in ATTACKS]
                          + ([robust[setting]["robust_accuracy"]] if setting in robust else []))
        rows.append(SettingResult(setting, natural, adversarial, 0.0, natural > floor))
    best = choose(rows)
    summary = {"floor": floor, "floor_source": floor_source, "chosen": best.setting if best else None,
               "rows": [{"setting": r.setting, "natural": r.natural, "adversarial": r.adversarial,
                         "above_floor": r.above_floor} for r in rows]}
    if best is None:
        say(f"no candidate has clean accuracy above the floor {100 * floor:.2f}%")
        return {}, summary
    say(f"chosen: {best.setting} (clean {100 * best.natural:.2f}%, worst-case attacked {100 * best.adversarial:.2f}% "
        f"at ε = {config.eps:g}; floor {100 * floor:.2f}%)")
    relative = f"chosen_{best.setting}.keras"
    with atomic_path(ctx.folder / relative, overwrite=True) as temporary:
        shutil.copyfile(ctx.state.artifact("quantize", best.setting), temporary)
    return {"model": relative}, summary


def exported_name(setting: str, target: str) -> str:
    return f"chosen_{setting}{TARGETS[target]}"


def export_stage(ctx: Context) -> tuple[dict, dict]:
    from .. import export

    config, state = ctx.config, ctx.state
    setting = state.summary("choose")["chosen"]
    representative = ctx.data.x_train[:REPRESENTATIVE_SAMPLES]
    path = ctx.folder / exported_name(setting, config.target)
    weight_bits, _ = parse_setting(setting)
    if config.target == "tflite-int8":
        how = "kq.export.tflite: full-integer int8 TFLite, sub-8-bit grids lowered exactly"
        export.tflite(ctx.load_artifact("choose", "model"), path, representative=representative,
                      overwrite=True)
    elif config.target == "onnx":
        how = "kq.export.onnx: QDQ ONNX" + (", INT4 weights" if weight_bits <= 4 else ", int8 weights")
        export.onnx(ctx.load_artifact("choose", "model"), path, representative=representative,
                    overwrite=True)
    else:
        chosen = ctx.load_artifact("choose", "model")
        how = ("kq.export.akida: " + (f"quantizeml's {setting} quantization of the float model" if
                                      export.is_akida_quantized(chosen) else
                                      f"the chosen {setting} model's weight codes and activation ranges carried into "
                                      "quantizeml") + ", converted by cnn2snn")
        export.akida(chosen, path, samples=representative, overwrite=True)
    say(f"exported {setting} to {path.name} ({how})")
    return {"exported": path.name}, {"how": how, "bytes": path.stat().st_size, "file": path.name}


def _square_both(ctx: Context, deployed, keras_model) -> dict:
    """Square (gradient-free, so it attacks the file itself) at ε on the artifact and, with the
    same seed and budget, on its Keras twin: robust accuracy with 95% Wilson intervals."""
    from ..attacks import square

    config = ctx.config
    x, y = autoattack_inputs(ctx)
    out = {"inputs": int(len(x)), "queries": config.square_queries, "p_init": SQUARE_P_INIT}
    for name, model in (("artifact", deployed), ("keras", keras_model)):
        found = square(model, x, y, eps=config.eps, queries=config.square_queries, p_init=SQUARE_P_INIT,
                       rescale_schedule=True, seed=config.seed, verbose=0)
        robust = int(np.sum(metrics.predict_labels(model, found) == y))
        out[name] = {"robust_accuracy": robust / len(y), "interval95": list(metrics.wilson_interval(robust, len(y)))}
    say(f"Square ({config.square_queries} queries) at ε = {config.eps:g} on {len(x)} inputs: artifact "
        f"{100 * out['artifact']['robust_accuracy']:.2f}%, Keras twin {100 * out['keras']['robust_accuracy']:.2f}%")
    return out


def remeasure_stage(ctx: Context) -> tuple[dict, dict]:
    """Score the exported file in its own runtime on the clean and the attacked test inputs."""
    config, data, state = ctx.config, ctx.data, ctx.state
    # every core: LiteRT runs one thread unless told (integer kernels give the same labels either way)
    deployed = runtime.load(state.artifact("export", "exported"), num_threads=os.cpu_count())
    quantized = ctx.load_artifact("choose", "model")
    keras_model, _ = attacked_model(quantized, config.target)  # what the attack stage attacked
    setting = state.summary("choose")["chosen"]
    keras_row = state.summary("attack")["grid"][setting]
    saved = np.load(state.artifact("attack", "attacks"))
    x, y = data.x_test, data.y_test
    say(f"re-measuring {deployed.path.name} in its runtime ({deployed.format}) on {len(x)} test inputs")
    clean_keras = metrics.predict_labels(keras_model, x)
    clean_deployed = metrics.predict_labels(deployed, x)
    row = {attack: [float(np.mean(clean_deployed == y))] for attack in ATTACKS}
    recomputed = []
    for column, eps in enumerate(eps_grid(config.eps)[1:]):
        x_pgd = pgd_inputs(keras_model, ctx, eps)  # the same seed as the attack stage: the same inputs
        recomputed.append(metrics.accuracy(keras_model, x_pgd, y))
        row["pgd"].append(metrics.accuracy(deployed, x_pgd, y))
        row["uap"].append(metrics.accuracy(deployed, np.clip(x + saved[f"uap/{setting}/{column}"], 0, 1), y))
        row["ensemble_uap"].append(metrics.accuracy(deployed, np.clip(x + saved[f"ensemble_uap/{column}"], 0, 1), y))
        row["transfer"].append(metrics.accuracy(deployed, saved[f"transfer/{column}"], y))
    scores_keras = np.asarray(keras_model.predict(x, verbose=0), np.float64)
    scores_deployed = np.asarray(deployed.predict(x), np.float64)
    output = quantized.layers[-1]  # the OutputQuantizer of a RobustQuantizer model: its step
    summary = {"row": row, "runtime": deployed.format, "agreement": float(np.mean(clean_keras == clean_deployed)),
               "agreement_inputs": int(len(x)),
               "max_score_difference": float(np.max(np.abs(scores_keras - scores_deployed))),
               "output_step": float(output.step) if isinstance(output, TensorQuantizer) else None,
               "pgd_reproduced": bool(np.allclose(recomputed, keras_row["pgd"][1:])),
               "keras_pgd_recomputed": recomputed, "square": _square_both(ctx, deployed, keras_model)}
    say(f"exported model: clean {100 * row['pgd'][0]:.2f}% (Keras {100 * keras_row['pgd'][0]:.2f}%), top-1 agreement "
        f"with the Keras model {100 * summary['agreement']:.2f}%, largest score difference "
        f"{summary['max_score_difference']:.4g}")
    return {}, summary

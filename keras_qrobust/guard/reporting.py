"""Stage 7, report: the RobustnessReport of a guard run (HTML, Markdown, JSON, plots).

Everything in it comes from the checkpointed stage summaries, never from wall clocks or
absolute paths, so the same arguments and seed give byte-identical report files.
"""

from __future__ import annotations

from .._tables import markdown_table, percent
from ..quantizers.grid import parse_setting
from ..report import RobustnessReport
from ..version import code_commit
from .attacking import ATTACKS, eps_grid
from .config import AGREEMENT_FLOOR
from .context import Context

__all__ = ["report_stage", "build_report", "exported_row_name"]


def exported_row_name(setting: str, target: str) -> str:
    return f"{setting} exported ({target})"


def _stages_section(ctx: Context) -> str:
    state, config = ctx.state, ctx.config
    train = state.summary("train")
    choose = state.summary("choose")
    trained = f"adversarial training, {train['recipe']}, {train['epochs']} epochs" if train["trained"] else "skipped"
    lines = [f"Command: `{config.command_line()}`", "",
             f"Data: {ctx.data.describe()} (the first inputs of each split).", "",
             f"- train: {trained} — {train['reason']}. Model: {train['model']}.",
             f"- transfer surrogate: {train['surrogate']}.",
             f"- quantize: RobustQuantizer post-training quantization at {', '.join(config.candidates)}, calibrated on "
             f"{state.summary('quantize')['calibration_inputs']} training inputs{_quantizeml_note(state)}.",
             f"- attack: {', '.join(ATTACKS)} at ε ∈ {{{', '.join(f'{e:g}' for e in eps_grid(config.eps)[1:])}}} on "
             f"{state.summary('attack')['test_inputs']} test inputs; AutoAttack ({config.autoattack}) at "
             f"ε = {config.eps:g} on the first {state.summary('attack').get('autoattack_inputs', 0)}.",
             f"- choose: Zhou 2022 Algorithm 1, chosen {choose['chosen'] or 'none (no candidate above the floor)'}."]
    if choose["chosen"]:
        export = state.summary("export")
        lines += [f"- export: {export['file']} ({export['bytes']} bytes), {export['how']}.",
                  f"- remeasure: the exported file run in its own runtime ({state.summary('remeasure')['runtime']})."]
    else:
        lines += ["- export, remeasure: not run (nothing chosen)."]
    if "robust_check" in train:
        check = train["robust_check"]
        lines += ["", f"Robustness check of the given model before training: clean {percent(check['clean'])}%, "
                      f"PGD-{config.pgd_steps} {percent(check['pgd'])}% at ε = {config.eps:g} on {check['samples']} "
                      "test inputs."]
    return "\n".join(lines)


def _robust_cell(entry: dict) -> str:
    """``"74.60 (70.6–78.2)"``: an AutoAttack robust accuracy with its 95% interval."""
    low, high = entry["robust_interval95"]
    return f"{percent(entry['robust_accuracy'])} ({percent(low)}–{percent(high)})"


def _choice_section(ctx: Context) -> str:
    choose = ctx.state.summary("choose")
    attack = ctx.state.summary("attack")
    grid, robust = attack["grid"], attack.get("autoattack", {})
    eps = ctx.config.eps
    headers = ["setting", "clean %", *(f"{a} % at ε = {eps:g}" for a in ATTACKS),
               f"AutoAttack % at ε = {eps:g} (95% CI)", "worst %", "above floor"]
    rows = []
    for row in choose["rows"]:
        mark = " (chosen)" if row["setting"] == choose["chosen"] else ""
        aa = _robust_cell(robust[row["setting"]]) if row["setting"] in robust else "—"
        rows.append([row["setting"] + mark, percent(row["natural"]),
                     *(percent(grid[row["setting"]][a][-1]) for a in ATTACKS), aa, percent(row["adversarial"]),
                     "yes" if row["above_floor"] else "no"])
    version = ctx.config.autoattack
    intro = (f"Among the candidates with clean accuracy above the floor {percent(choose['floor'])}% "
             f"({choose['floor_source']}), the one with the best worst-case accuracy over the four attacks and "
             f"AutoAttack at ε = {eps:g}; ties go to fewer bits. AutoAttack ({version}: "
             f"{', '.join(next(iter(robust.values()))['attacks']) if robust else 'not run'}) ran on the first "
             f"{attack.get('autoattack_inputs', 0)} test inputs; an input whose gradient is zero or non-finite is "
             "never counted robust.")
    findings = [f"- {name}: {finding}" for name, entry in robust.items() for finding in entry.get("findings", [])]
    return intro + "\n\n" + markdown_table(headers, rows) + ("\n\n" + "\n".join(findings) if findings else "")


def _export_section(ctx: Context) -> str:
    state, config = ctx.state, ctx.config
    setting = state.summary("choose")["chosen"]
    remeasure = state.summary("remeasure")
    keras_row = state.summary("attack")["grid"][setting]
    headers = ["", "clean %", *(f"{a} % at ε = {config.eps:g}" for a in ATTACKS)]
    deployed_row = remeasure["row"]
    label = _attacked_label(state, setting)
    rows = [[label, *(percent(keras_row[a][i]) for a, i in [("pgd", 0)] + _at_eps())],
            [f"{state.summary('export')['file']} ({remeasure['runtime']} runtime)",
             *(percent(deployed_row[a][i]) for a, i in [("pgd", 0)] + _at_eps())]]
    reproduced = ("re-running PGD on the Keras model gave the same accuracies as the attack stage"
                  if remeasure["pgd_reproduced"] else
                  "WARNING: re-running PGD on the Keras model did not reproduce the attack stage's accuracies")
    text = (f"The exported file was loaded with kq.export.load and scored in its runtime. It has no gradients, so its "
            "pgd, uap and ensemble_uap inputs are those crafted against the chosen Keras model (the same seed; "
            f"{reproduced}); its transfer inputs are the surrogate's. Top-1 agreement with the Keras model on the "
            f"clean test inputs: {percent(remeasure['agreement'])}%.\n\n" + markdown_table(headers, rows))
    square = remeasure.get("square")
    if square:
        cells = {k: f"{percent(square[k]['robust_accuracy'])} ({percent(square[k]['interval95'][0])}–"
                    f"{percent(square[k]['interval95'][1])})" for k in ("artifact", "keras")}
        text += ("\n\nSquare (gradient-free: it queries the file itself), L∞ ε = "
                 f"{config.eps:g}, {square['queries']} queries per input, p_init {square['p_init']:g}, on the first "
                 f"{square['inputs']} test inputs:\n\n" + markdown_table(
                     ["", "Square robust % (95% CI)"],
                     [[f"{state.summary('export')['file']} ({remeasure['runtime']} runtime)", cells["artifact"]],
                      [label, cells["keras"]]]))
    return text


def _attacked_label(state, setting: str) -> str:
    """The attacked model's row label: the integer twin (exact or not) or the fake-quant model."""
    twin = state.summary("attack").get("integer_twins", {}).get(setting)
    if twin is None:
        return f"{setting} Keras (fake quant)"
    return f"{setting} Keras (integer twin{'' if twin['exact'] else ', not exact: ' + '; '.join(twin['approximated'])})"


def agreement_verdict(remeasure: dict) -> str:
    """One line: does the exported file compute the model that was attacked?"""
    agreement = remeasure["agreement"]
    step = remeasure.get("output_step")
    largest = remeasure.get("max_score_difference")
    difference = "" if largest is None else f", largest score difference {largest:.4g}" + (
        f" ({largest / step:.1f} output steps)" if step else "")
    measured = (f"top-1 agreement of the exported file with the attacked Keras model: {percent(agreement)}% of "
                f"{remeasure.get('agreement_inputs', 'the')} test inputs{difference}")
    if agreement >= AGREEMENT_FLOOR:
        return f"The exported file computes the attacked model: {measured}."
    return (f"**MISMATCH**: {measured}, below {100 * AGREEMENT_FLOOR:g}%: the robustness measured on the Keras model "
            "does not hold for this file (guard exits 1 unless --allow-mismatch).")


def _at_eps() -> list[tuple[str, int]]:
    """(attack, column) of every attack at the full ε (the last column)."""
    return [(a, -1) for a in ATTACKS]


def _quantizeml_note(state) -> str:
    """The candidates quantizeml quantized instead (--target akida, grids Akida cannot hold)."""
    instead = state.summary("quantize").get("quantizeml_instead", {})  # setting -> why the grids cannot be carried
    if not instead:
        return ""
    reason = next(iter(instead.values()))
    return (f"; for {', '.join(instead)} Akida cannot hold those grids ({reason}), so quantizeml quantized the "
            "float model at the same bits (first layer 8-bit weights), and that quantization is what was attacked "
            "(through its Akida twin) and exported")


def _decision(ctx: Context) -> tuple[str, list]:
    """The report's opening: the chosen setting against float and the other candidates (weights
    in bytes at their bit width, from the quantize stage), and the size/robustness points of the
    trade-off plot."""
    state, config = ctx.state, ctx.config
    sizes = state.summary("quantize")["weight_bytes"]
    choose, attack = state.summary("choose"), state.summary("attack")
    grid, robust = attack["grid"], attack.get("autoattack", {})
    chosen = choose["chosen"]
    eps = config.eps
    if chosen:
        row = next(r for r in choose["rows"] if r["setting"] == chosen)
        agreement = percent(state.summary("remeasure")["agreement"])
        lead = (f"**Chosen: {chosen}**, exported as `{state.summary('export')['file']}` "
                f"({state.summary('export')['bytes']:,} bytes): clean {percent(row['natural'])}%, worst case over "
                f"the attacks {percent(row['adversarial'])}% at ε = {eps:g}; the deployed file agrees with the "
                f"attacked Keras model on {agreement}% of the test inputs. Why: of the "
                f"candidates above the clean-accuracy floor {percent(choose['floor'])}%, it has the best worst-case "
                "accuracy (ties go to fewer bits).")
    else:
        lead = (f"**No candidate chosen**: none has clean accuracy above the floor {percent(choose['floor'])}% "
                f"({choose['floor_source']}); nothing was exported. Lower the floor (--floor) or try more bits.")
    headers = ["model", "weights, bytes", "clean %", f"AutoAttack % at ε = {eps:g} (95% CI)",
               f"worst of all attacks % at ε = {eps:g}", "deployed file agrees %"]
    rows, points = [], []
    for name in ["fp32", *config.candidates]:
        attacked = [grid[name][a][-1] for a in ATTACKS]
        worst = min(attacked + ([robust[name]["robust_accuracy"]] if name in robust else []))
        rows.append([name + (" (chosen)" if name == chosen else ""), f"{sizes[name]:,}", percent(grid[name]["pgd"][0]),
                     _robust_cell(robust[name]) if name in robust else "—", percent(worst),
                     agreement if name == chosen else "—"])
        if name in robust:
            low, high = robust[name]["robust_interval95"]
            points.append({"name": name, "bytes": sizes[name], "robust": robust[name]["robust_accuracy"],
                           "low": low, "high": high, "chosen": name == chosen})
    note = ("Weights are counted at their bit width (⌈n·b/8⌉ bytes for b-bit kernels, biases int32); the exported "
            "file's own size is above. Latency is not in the report (it would differ between two identical runs); "
            "measure it with `kq.export.profile`.")
    return lead + "\n\n" + markdown_table(headers, rows) + "\n\n" + note, points


def build_report(ctx: Context) -> RobustnessReport:
    state, config = ctx.state, ctx.config
    attack = state.summary("attack")
    accuracy = {name: dict(rows) for name, rows in attack["grid"].items()}
    setting = state.summary("choose")["chosen"]
    decision, points = _decision(ctx)
    sections = [{"title": "Decision", "markdown": decision, "lead": True}]
    sections += [{"title": "Deployed file vs attacked model", "markdown": agreement_verdict(state.summary("remeasure"))}
                 ] if setting else []
    sections += [{"title": "Guard run", "markdown": _stages_section(ctx)},
                 {"title": "Choice (Zhou 2022, Algorithm 1)", "markdown": _choice_section(ctx)}]
    descriptions = dict(attack["descriptions"])
    if setting:
        accuracy[exported_row_name(setting, config.target)] = state.summary("remeasure")["row"]
        sections.append({"title": "Exported artifact, re-measured in its runtime", "markdown": _export_section(ctx)})
        descriptions["exported row"] = ("the exported file scored in its own runtime on the inputs crafted against the "
                                        "chosen Keras model (pgd, uap, ensemble_uap) or the surrogate (transfer)")
    provenance = {"attacks": descriptions, "eps": eps_grid(config.eps), "norm": "inf", "samples": attack["test_inputs"],
                  "seed": config.seed, "pgd_steps": config.pgd_steps, "uap_inputs": attack["uap_inputs"],
                  "dataset": ctx.data.name, "command": config.command_line(), "code": code_commit()}
    bits = {s: parse_setting(s)[0] for s in config.candidates}
    return RobustnessReport.build(accuracy=accuracy, eps=eps_grid(config.eps), attacks=list(ATTACKS),
                                  provenance=provenance, bits=bits, transfer=attack["transfer_matrix"],
                                  sections=sections, tradeoff=points or None)


def report_stage(ctx: Context) -> tuple[dict, dict]:
    report = build_report(ctx)
    figures = report.figures()  # drawn once for the HTML and the PNG files
    paths = report.save(ctx.folder, overwrite=True, figures=figures)
    plots = report.save_plots(ctx.folder / "plots", overwrite=True, figures=figures)
    artifacts = {kind: path.name for kind, path in paths.items()}
    artifacts.update({f"plot {i}": f"plots/{p.name}" for i, p in enumerate(plots)})
    return artifacts, {"suspect": report.suspect}

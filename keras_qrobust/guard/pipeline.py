"""The guard pipeline: check every input, then run the stages in order, checkpointing each.

``run(config, out)`` returns the exit code: 0 done, 1 a stage failed, no candidate is
above the floor, or the exported file disagrees with the attacked Keras model (top-1
agreement below ``AGREEMENT_FLOOR``, unless ``allow_mismatch``), 130 interrupted (Ctrl-C);
bad input raises :class:`GuardInputError` (exit 2) before anything is
written. A rerun of the same command resumes after the last finished stage.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from pathlib import Path
from typing import Callable

from .attacking import attack_stage
from .config import AGREEMENT_FLOOR, GuardConfig, GuardInputError
from .context import Context, say
from ..quantizers.grid import parse_setting
from ..inputs import check_above_chance, check_data_fits, fingerprint, load_data, load_model_file
from .reporting import report_stage
from .stages import (CALIBRATION_SAMPLES, akida_route, candidate_quantizer, choose_stage, export_stage, quantize_stage,
                     remeasure_stage)
from .lock import RunLock
from .state import RunState, open_state
from .training import train_stage

__all__ = ["run", "STAGES", "KILL_AFTER_ENV"]

#: stage name -> function(ctx) -> (artifacts, summary), in order
STAGES: dict[str, Callable] = {"train": train_stage, "quantize": quantize_stage, "attack": attack_stage,
                               "choose": choose_stage, "export": export_stage, "remeasure": remeasure_stage,
                               "report": report_stage}
#: only export and remeasure need a chosen model
_NEEDS_CHOICE = ("export", "remeasure")
#: tracebacks of failed stages (the run log and the report hold one-line errors)
DEBUG_LOG = "debug.log"
#: testing hook: SIGKILL this process right after the named stage's checkpoint is written
KILL_AFTER_ENV = "KERAS_QROBUST_GUARD_KILL_AFTER"


def _inputs(config: GuardConfig) -> dict:
    dataset_file = config.dataset if config.dataset.lower().endswith(".npz") else None
    return {"model_sha256": fingerprint(config.model), "dataset_sha256": fingerprint(dataset_file)}


def _check_target(config: GuardConfig, model) -> None:
    """Akida: its packages are installed and the model has a shape cnn2snn takes (before any work)."""
    if config.target != "akida":
        return
    from ..export.akida import _import_akida, check_akida_compatible

    try:
        _import_akida()
    except ImportError as error:
        raise GuardInputError(f"--target akida: {error}") from None
    reasons = check_akida_compatible(model) if model is not None else []
    if reasons:
        raise GuardInputError(f"--target akida: --model cannot be exported to Akida: {'; '.join(reasons)}")


def _check_quantizable(config: GuardConfig, model, data) -> None:
    """The model's layers are ones RobustQuantizer quantizes (a trial run on 32 inputs at the
    first candidate), and for --target akida its quantized copy carries its grids to Akida, so
    an unsupported layer stops the run before training, not after it."""
    from ..transforms import UnsupportedModelError

    # Akida needs the input range [0, 1] the quantize stage finds on its calibration inputs
    samples = data.x_train[:CALIBRATION_SAMPLES if config.target == "akida" else 32]
    try:
        trial = candidate_quantizer(config.candidates[0], config.target).quantize(model, samples)
    except UnsupportedModelError as error:
        raise GuardInputError(f"--model: {str(error).splitlines()[0]}") from None
    if config.target == "akida" and (reason := akida_route(trial)) is not None:
        # such candidates are quantizeml's quantization of the float model, whose weights are 4 or 8 bits
        odd = [s for s in config.candidates if parse_setting(s)[0] not in (4, 8)]
        if odd:
            raise GuardInputError(
                f"--target akida: the RobustQuantizer models of --model cannot carry their grids to Akida ({reason}), "
                f"so quantizeml quantizes the float model, at 4- or 8-bit weights only; drop {', '.join(odd)} from "
                "--candidates (e.g. --candidates w8a8,w4a4)")


def _finished_message(state: RunState, allow_mismatch: bool = False) -> int:
    """Print the outcome (stdout) and where the report is; the exit code of a finished run."""
    choose = state.summary("choose")
    chosen = choose["chosen"]
    say(f"this run is finished: the report is {state.folder / 'report.html'} (also report.md, report.json)")
    if chosen is None:
        print(f"no candidate has clean accuracy above the floor {100 * choose['floor']:.2f}%; see "
              f"{state.folder / 'report.md'}")
        return 1
    row = next(r for r in choose["rows"] if r["setting"] == chosen)
    remeasure = state.summary("remeasure")
    deployed = remeasure["row"]
    worst = min(values[-1] for values in deployed.values())
    robust = state.summary("attack").get("autoattack", {}).get(chosen)
    aa = (f", AutoAttack {100 * robust['robust_accuracy']:.2f}% (95% CI {100 * robust['robust_interval95'][0]:.1f}–"
          f"{100 * robust['robust_interval95'][1]:.1f}, n = {robust['n']})" if robust else "")
    square = remeasure.get("square")
    on_file = (f", Square {100 * square['artifact']['robust_accuracy']:.2f}% (n = {square['inputs']})"
               if square else "")
    print(f"chosen {chosen}: clean {100 * row['natural']:.2f}%{aa}, worst-case attacked "
          f"{100 * row['adversarial']:.2f}% (Keras); exported {state.summary('export')['file']}: clean "
          f"{100 * deployed['pgd'][0]:.2f}%, worst-case attacked {100 * worst:.2f}%{on_file} in its runtime. "
          f"Report: {state.folder / 'report.html'}")
    agreement = remeasure["agreement"]
    if agreement < AGREEMENT_FLOOR:
        what = (f"the exported file agrees with the attacked Keras model on only {100 * agreement:.2f}% of the test "
                f"inputs (< {100 * AGREEMENT_FLOOR:g}%), so the robustness measured on the Keras model does not hold "
                "for it")
        if not allow_mismatch:
            print(f"MISMATCH: {what}; pass --allow-mismatch to accept the file anyway")
            return 1
        print(f"MISMATCH accepted (--allow-mismatch): {what}")
    return 0


def _damage_check(state: RunState | None) -> dict:
    """Forget the first stage whose outputs are missing or changed, and every later stage;
    returns what was found (empty when nothing)."""
    broken = state.damaged() if state is not None else None
    if not broken:
        return {}
    dropped = state.forget_from(broken[0])
    say(f"{broken[1]} is missing or changed since stage {broken[0]} wrote it: re-running {', '.join(dropped)}")
    return {"stage": broken[0], "output": broken[1], "rerun": dropped}


def run(config: GuardConfig, out: str | os.PathLike, allow_mismatch: bool = False, trust_model: bool = False,
        force: bool = False, executor: str = "local", address: str | None = None) -> int:
    """Run (or resume) guard into the folder ``out``; returns the exit code.

    ``allow_mismatch`` only changes the exit code of a run whose exported file disagrees
    with the attacked model (the report says so either way), so it is no argument of the run.
    ``trust_model`` loads a ``--model`` that names code outside Keras, tfmot and keras_qrobust
    (and the run's own models saved from it); ``force`` goes on with a ``--model`` near chance on
    the data; neither changes a result, nor does ``executor``/``address`` (the per-model attack
    cells as Ray tasks, :mod:`keras_qrobust.executor`). One run at a time holds
    the folder (:class:`~keras_qrobust.guard.lock.RunLock`).
    """
    folder = Path(out)
    inputs = _inputs(config)
    state = open_state(folder, config, inputs)  # raises before anything is written
    if state is not None and state.done("report") and state.damaged() is None:
        return _finished_message(state, allow_mismatch)
    model = load_model_file(config.model, trust=trust_model) if config.model else None
    data = load_data(config.dataset, config.train_samples, config.test_samples)
    check_data_fits(data, model)
    _check_target(config, model)
    if model is not None:
        _check_quantizable(config, model, data)
        warning = check_above_chance(model, data, force=force)
        if warning:
            say(f"warning: {warning} (--force)")
    folder.mkdir(parents=True, exist_ok=True)
    with RunLock(folder):
        state = open_state(folder, config, inputs)  # afresh: a run that held the lock may have moved on
        damage = _damage_check(state)
        resumed = state is not None
        ctx = Context(config, data, state if resumed else RunState(folder, config.to_dict(), inputs), model,
                      trust_model=trust_model, executor=executor, address=address)
        return _run_stages(ctx, resumed, damage, allow_mismatch)


def _run_stages(ctx: Context, resumed: bool, damage: dict, allow_mismatch: bool) -> int:
    from ..defenses import set_seed

    config, state, folder = ctx.config, ctx.state, ctx.folder
    state.save()
    state.log("start", resumed=resumed, finished_stages=list(state.stages), **({"damaged": damage} if damage else {}))
    say(f"{'resuming' if resumed else 'starting'} in {folder}: {ctx.data.describe()}")
    kill_after = os.environ.get(KILL_AFTER_ENV)
    for index, (name, stage) in enumerate(STAGES.items()):
        if state.done(name):
            say(f"stage {index + 1}/{len(STAGES)} {name}: reused from the checkpoint")
            state.log("reused", stage=name)
            continue
        if name in _NEEDS_CHOICE and state.summary("choose")["chosen"] is None:
            state.finish(name, {}, {"skipped": "no candidate above the floor"})
            state.log("skipped", stage=name)
            continue
        say(f"stage {index + 1}/{len(STAGES)} {name}")
        state.log("begin", stage=name)
        set_seed(config.seed + index, deterministic_ops=True)  # each stage is reproducible on its own
        start = time.perf_counter()
        try:
            artifacts, summary = stage(ctx)
        except KeyboardInterrupt:
            state.log("interrupted", stage=name)
            say(f"interrupted in stage {name}; rerun the same command to resume from this stage")
            return 130
        except Exception as error:  # noqa: BLE001 - any stage failure ends the run with exit 1
            first = (str(error).strip().splitlines() or [""])[0]
            state.log("failed", stage=name, error=f"{type(error).__name__}: {first}")
            with open(folder / DEBUG_LOG, "a") as debug:
                debug.write(f"run {state.run}, stage {name}:\n{traceback.format_exc()}\n")
            say(f"stage {name} failed: {type(error).__name__}: {first} (traceback in {folder / DEBUG_LOG}); "
                "rerun the same command to resume from this stage")
            return 1
        state.finish(name, artifacts, summary)
        state.log("finished", stage=name, seconds=round(time.perf_counter() - start, 2))
        if kill_after == name:
            os.kill(os.getpid(), signal.SIGKILL)
    return _finished_message(state, allow_mismatch)

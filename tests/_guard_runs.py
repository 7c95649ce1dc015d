"""Running ``keras-qrobust guard`` on the tiny case in subprocesses (tests/conftest.py's
``guard_runs`` fixture, shared by the guard and the report-rendering tests)."""

import json
import os
import subprocess
import sys

from keras_qrobust.guard import KILL_AFTER_ENV


def guard_args(model, data, out, *extra):
    return ["guard", "--model", str(model), "--dataset", str(data), "--epochs", "1", "--surrogate-epochs", "1",
            "--train-samples", "200", "--test-samples", "40", "--pgd-steps", "3", "--uap-samples", "64",
            "--train-attack", "fgsm_rs",
            "--candidates", "w8a8,w4a4", "--seed", "3", "--out", str(out), *extra]


def start_guard(args, kill_after=None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != KILL_AFTER_ENV}
    if kill_after:
        env[KILL_AFTER_ENV] = kill_after
    return subprocess.Popen([sys.executable, "-m", "keras_qrobust.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=400)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def log_events(folder):
    return [json.loads(line) for line in (folder / "run_log.jsonl").read_text().splitlines()]


def guard_runs(tiny_case, root):
    """An interrupted-then-resumed run and an uninterrupted one (same command and seed) in ``root``."""
    model, data = tiny_case
    resumed, straight = root / "resumed", root / "straight"
    uninterrupted = start_guard(guard_args(model, data, straight))  # alongside the other two
    killed = finish(start_guard(guard_args(model, data, resumed), kill_after="quantize"))
    state_after_kill = json.loads((resumed / "guard_state.json").read_text())
    second = finish(start_guard(guard_args(model, data, resumed)))
    uninterrupted = finish(uninterrupted)
    return {"model": model, "data": data, "resumed": resumed, "straight": straight, "killed": killed,
            "state_after_kill": state_after_kill, "second": second, "uninterrupted": uninterrupted}

"""guard on shared folders and untrusted files: the lock on --out, resume that verifies its
outputs, state files that cannot point outside the folder, models that cannot run code."""

import json
import shutil
import subprocess

import pytest
from _guard_runs import guard_args, log_events

from keras_qrobust import cli
from keras_qrobust.guard.lock import LOCK_FILE

REPORTS = ("report.json", "report.md", "report.html")


def _copy(guard_runs, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(guard_runs["straight"], folder)
    return folder


def _state(folder):
    return json.loads((folder / "guard_state.json").read_text())


def _one_line_error(capsys):
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def test_a_folder_held_by_a_live_run_is_refused(guard_runs, tmp_path, capsys):
    folder = _copy(guard_runs, tmp_path)
    (folder / "report.html").unlink()  # so the run would have work to do
    holder = subprocess.Popen(["sleep", "60"])
    try:
        import socket

        (folder / LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "since": "x"}))
        before = (folder / "guard_state.json").read_bytes()
        assert cli.main(guard_args(guard_runs["model"], guard_runs["data"], folder)) == 2
        message = _one_line_error(capsys)
        assert f"in use by another guard run (pid {holder.pid}" in message and "pass another --out" in message
        assert (folder / "guard_state.json").read_bytes() == before and not (folder / "report.html").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and taken over; the deleted report is written again
    assert cli.main(guard_args(guard_runs["model"], guard_runs["data"], folder)) == 0
    assert not (folder / LOCK_FILE).exists()
    for name in REPORTS:
        assert (folder / name).read_bytes() == (guard_runs["straight"] / name).read_bytes(), name


def test_a_deleted_report_is_not_counted_done(guard_runs, tmp_path, capsys):
    folder = _copy(guard_runs, tmp_path)
    (folder / "report.html").unlink()
    assert cli.main(guard_args(guard_runs["model"], guard_runs["data"], folder)) == 0
    assert "report.html is missing or changed since stage report wrote it: re-running report" in capsys.readouterr().err
    assert (folder / "report.html").read_bytes() == (guard_runs["straight"] / "report.html").read_bytes()
    last = [e for e in log_events(folder) if e["event"] == "start"][-1]
    assert last["damaged"] == {"stage": "report", "output": "report.html", "rerun": ["report"]}


def test_a_damaged_export_reruns_export_and_the_stages_after_it(guard_runs, tmp_path, capsys):
    folder = _copy(guard_runs, tmp_path)
    exported = folder / _state(folder)["stages"]["export"]["artifacts"]["exported"]
    exported.write_bytes(exported.read_bytes()[:100])  # truncated
    assert cli.main(guard_args(guard_runs["model"], guard_runs["data"], folder)) == 0
    assert "re-running export, remeasure, report" in capsys.readouterr().err
    assert exported.read_bytes() == (guard_runs["straight"] / exported.name).read_bytes()
    assert (folder / "report.json").read_bytes() == (guard_runs["straight"] / "report.json").read_bytes()


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.update(state_version=1), "has state version 1, this keras_qrobust reads version 2"),
    (lambda s: s["stages"]["quantize"]["artifacts"].update(w4a4="../../elsewhere.keras"), "outside the folder"),
    (lambda s: s["stages"]["quantize"]["artifacts"].update(w4a4="/etc/passwd"), "outside the folder"),
    (lambda s: s["stages"].update(train=[]), "is unreadable"),
])
def test_a_tampered_state_file_gets_one_line(guard_runs, tmp_path, capsys, edit, message):
    folder = _copy(guard_runs, tmp_path)
    state = _state(folder)
    edit(state)
    (folder / "guard_state.json").write_text(json.dumps(state))
    before = sorted(p.name for p in folder.iterdir())
    assert cli.main(guard_args(guard_runs["model"], guard_runs["data"], folder)) == 2
    assert message in _one_line_error(capsys)
    assert sorted(p.name for p in folder.iterdir()) == before


def test_a_model_with_a_lambda_layer_is_refused_unless_trusted(guard_runs, tmp_path, capsys):
    from keras_qrobust import keras

    marker = tmp_path / "marker"
    touch = eval(f"lambda t: (__import__('pathlib').Path({str(marker)!r}).touch(), t)[1]")  # noqa: S307
    inputs = keras.Input((28, 28, 1))
    flat = keras.layers.Flatten()(keras.layers.Lambda(touch)(inputs))
    keras.Model(inputs, keras.layers.Dense(10)(flat)).save(tmp_path / "m.h5")
    marker.unlink()
    out = tmp_path / "out"
    assert cli.main(guard_args(tmp_path / "m.h5", guard_runs["data"], out)) == 2
    message = _one_line_error(capsys)
    assert "a Lambda layer" in message and "--trust-model" in message
    assert not marker.exists() and not out.exists()


def test_no_output_file_of_a_guard_run_holds_a_machine_path(guard_runs):
    import os

    # the runs were given absolute paths of the model and data (tmp folders of this machine)
    roots = {str(guard_runs["model"].parent), str(guard_runs["data"].parent), str(guard_runs["straight"].parent),
             os.getcwd(), os.path.expanduser("~")}
    for folder in (guard_runs["straight"], guard_runs["resumed"]):
        for file in (p for p in folder.rglob("*") if p.is_file()):
            data = file.read_bytes()
            found = [root for root in roots if root.encode() in data]
            assert not found, f"{file.relative_to(folder)} holds {found}"

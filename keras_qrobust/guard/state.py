"""The checkpoint of a guard run: ``guard_state.json`` and ``run_log.jsonl`` in the output folder.

The state file holds the run's config and, per finished stage, its artifacts (paths relative
to the folder) and its summary; it is rewritten atomically (temporary file, then rename)
after each stage, so an interruption leaves either the old or the new state. The run log
gets one JSON line per event with wall times, which stay out of the report.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .._io import write_json
from .config import GuardConfig, GuardInputError

__all__ = ["RunState", "STATE_FILE", "LOG_FILE", "open_state"]

STATE_FILE = "guard_state.json"
LOG_FILE = "run_log.jsonl"
STATE_VERSION = 1


@dataclass
class RunState:
    """The arguments and finished stages of one guard run in ``folder``."""

    folder: Path
    arguments: dict
    inputs: dict  # fingerprints of the input files
    stages: dict = field(default_factory=dict)  # stage name -> {"artifacts": {...}, "summary": {...}}
    run: int = 1  # how many times the command has been started in this folder

    @property
    def path(self) -> Path:
        return self.folder / STATE_FILE

    def done(self, stage: str) -> bool:
        return stage in self.stages

    def artifact(self, stage: str, name: str) -> Path:
        return self.folder / self.stages[stage]["artifacts"][name]

    def summary(self, stage: str) -> dict:
        return self.stages[stage]["summary"]

    def finish(self, stage: str, artifacts: dict, summary: dict) -> None:
        """Record ``stage`` as finished and rewrite the state file atomically."""
        for name, relative in artifacts.items():
            if not (self.folder / relative).exists():
                raise RuntimeError(f"stage {stage} recorded artifact {name} = {relative}, which was not written")
        self.stages[stage] = {"artifacts": dict(artifacts), "summary": summary}
        self.save()

    def save(self) -> None:
        write_json(self.path, {"state_version": STATE_VERSION, "command": "guard", "arguments": self.arguments,
                               "inputs": self.inputs, "run": self.run, "stages": self.stages})

    def log(self, event: str, **fields) -> None:
        """Append one event (with the wall-clock time) to the run log."""
        record = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "run": self.run, "event": event, **fields}
        with open(self.folder / LOG_FILE, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [f"{key}: {old.get(key)!r} before, {new.get(key)!r} now" for key in keys if old.get(key) != new.get(key)]


def _ours(name: str) -> bool:
    # atomic_path's temporary folders (".name.xxxx") are left behind only by a killed write
    return name.startswith(".")


def open_state(folder: Path, config: GuardConfig, inputs: dict) -> Optional[RunState]:
    """The existing checkpoint of this same command in ``folder``, or None for a new run.

    Raises GuardInputError when ``folder`` holds another command's checkpoint or other
    files (nothing is written either way).
    """
    if folder.exists() and not folder.is_dir():
        raise GuardInputError(f"--out {folder} is a file; pass a folder (new, or a guard run's folder)")
    if not folder.exists():
        return None
    state_file = folder / STATE_FILE
    if not state_file.is_file():
        others = sorted(p.name for p in folder.iterdir() if not _ours(p.name))
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise GuardInputError(f"--out {folder} already holds other files ({shown}) and no guard checkpoint; pass a "
                                  "new or empty folder")
        return None
    try:
        saved = json.loads(state_file.read_text())
        arguments, saved_inputs, stages = saved["arguments"], saved["inputs"], saved["stages"]
    except (ValueError, KeyError, TypeError) as error:
        raise GuardInputError(f"--out {folder}: {STATE_FILE} is unreadable ({error}); remove the folder or pass "
                              "another --out") from None
    differences = _differences(arguments, config.to_dict()) + _differences(saved_inputs, inputs)
    if differences:
        raise GuardInputError(f"--out {folder} holds a guard run with other arguments ({'; '.join(differences)}); "
                              "rerun that command, or pass another --out for this one")
    return RunState(folder, arguments, saved_inputs, dict(stages), int(saved.get("run", 1)) + 1)

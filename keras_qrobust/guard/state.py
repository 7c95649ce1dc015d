"""The checkpoint of a guard run: ``guard_state.json`` and ``run_log.jsonl`` in the output folder.

The state file holds the run's config and, per finished stage, its artifacts (paths relative
to the folder, each with the SHA-256 of its bytes) and its summary; it is rewritten atomically
(temporary file, then rename) after each stage, so an interruption leaves either the old or the
new state. A resumed run re-runs the first stage whose outputs are missing or no longer match
their hash, and every stage after it. Paths in a state file never lead outside the folder. The
run log gets one JSON line per event with wall times, which stay out of the report.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .._io import write_json
from .config import GuardConfig, GuardInputError
from ..inputs import fingerprint

__all__ = ["RunState", "STATE_FILE", "LOG_FILE", "open_state"]

STATE_FILE = "guard_state.json"
LOG_FILE = "run_log.jsonl"
STATE_VERSION = 2  # 2: artifact hashes


def _inside(folder: Path, relative) -> bool:
    if not isinstance(relative, str) or Path(relative).is_absolute():
        return False
    try:
        (folder / relative).resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


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
        relative = self.stages[stage]["artifacts"][name]
        if not _inside(self.folder, relative):  # open_state refuses such states; never follow one
            raise GuardInputError(f"{STATE_FILE} in {self.folder} names {relative!r}, outside the folder")
        return self.folder / relative

    def summary(self, stage: str) -> dict:
        return self.stages[stage]["summary"]

    def finish(self, stage: str, artifacts: dict, summary: dict) -> None:
        """Record ``stage`` as finished and rewrite the state file atomically."""
        for name, relative in artifacts.items():
            if not _inside(self.folder, relative) or not (self.folder / relative).exists():
                raise RuntimeError(f"stage {stage} recorded artifact {name} = {relative}, which was not written")
        hashes = {name: fingerprint(str(self.folder / relative)) for name, relative in artifacts.items()}
        self.stages[stage] = {"artifacts": dict(artifacts), "hashes": hashes, "summary": summary}
        self.save()

    def damaged(self) -> Optional[tuple[str, str]]:
        """The first finished stage (in run order) an output of which is missing or no longer
        matches its recorded hash, with that output's name; None when all are intact."""
        for stage, record in self.stages.items():
            for name, relative in record["artifacts"].items():
                path = self.folder / relative
                if not path.exists() or fingerprint(str(path)) != record.get("hashes", {}).get(name):
                    return stage, relative
        return None

    def forget_from(self, stage: str) -> list[str]:
        """Drop ``stage`` and every stage finished after it (they are re-run); returns them."""
        names = list(self.stages)
        dropped = names[names.index(stage):]
        for name in dropped:
            del self.stages[name]
        return dropped

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
        version = saved.get("state_version")
        artifacts = [(stage, relative) for stage, record in stages.items()
                     for relative in record["artifacts"].values()]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise GuardInputError(f"--out {folder}: {STATE_FILE} is unreadable ({type(error).__name__}: {error}); remove "
                              "the folder or pass another --out") from None
    if version != STATE_VERSION:
        raise GuardInputError(f"--out {folder}: {STATE_FILE} has state version {version!r}, this keras_qrobust reads "
                              f"version {STATE_VERSION}; pass a new --out (or finish that run with the version that "
                              "started it)")
    outside = [relative for _, relative in artifacts if not _inside(folder, relative)]
    if outside:
        raise GuardInputError(f"--out {folder}: {STATE_FILE} names {outside[0]!r}, outside the folder (a state file "
                              "only names files inside it); remove the folder or pass another --out")
    differences = _differences(arguments, config.to_dict()) + _differences(saved_inputs, inputs)
    if differences:
        raise GuardInputError(f"--out {folder} holds a guard run with other arguments ({'; '.join(differences)}); "
                              "rerun that command, or pass another --out for this one")
    return RunState(folder, arguments, saved_inputs, dict(stages), int(saved.get("run", 1)) + 1)

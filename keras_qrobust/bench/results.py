"""Results files: a JSON record and a Markdown page per benchmark, without the machine's paths."""

from __future__ import annotations

import os
from pathlib import Path

from .._io import write_json, write_text
from .machine import log

__all__ = ["VERDICT", "without_machine_paths", "write_results", "publish", "targets_table", "run_description"]

VERDICT = {True: "yes", False: "NO", None: "—"}  # None: a figure reported, not a pass/fail check


def without_machine_paths(record, root: str | os.PathLike | None = None):
    """``record`` (nested dicts, lists, strings) with the folder ``root`` (the checkout) cut from
    every path (``/home/me/keras_qrobust/benchmarks/.cache/m.keras`` -> ``benchmarks/.cache/m.keras``),
    the home folder written ``~`` and every ``resumed_from`` path cut to its file name: results
    files carry no path of the machine that made them."""
    if isinstance(record, dict):
        # a resumed training's backup may lie anywhere: its name is what identifies it
        return {k: Path(v).name if k == "resumed_from" and isinstance(v, str) else without_machine_paths(v, root)
                for k, v in record.items()}
    if isinstance(record, list):
        return [without_machine_paths(v, root) for v in record]
    if isinstance(record, str):
        if root is not None:
            record = record.replace(f"{root}/", "").replace(str(root), ".")
        return record.replace(str(Path.home()), "~")
    return record


def write_results(name: str, data: dict, markdown: str, *, folder: str | os.PathLike,
                  root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """``folder/NAME.json`` (``data``) and ``folder/NAME.md`` (``markdown``), both
    :func:`without_machine_paths` of ``root``, each written to a temp file, then renamed."""
    folder = Path(folder)
    json_path = write_json(folder / f"{name}.json", without_machine_paths(data, root))
    md_path = write_text(folder / f"{name}.md", without_machine_paths(markdown, root))
    return json_path, md_path


def publish(name: str, quick: bool, data: dict, markdown: str, *, folder: str | os.PathLike,
            root: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``folder/NAME[_quick].{json,md}`` (:func:`write_results`), print the Markdown and
    say where it went."""
    paths = write_results(f"{name}_quick" if quick else name, data, markdown, folder=folder, root=root)
    print(markdown)
    log(f"wrote {paths[0]} and {paths[1]}")
    return paths


def with_interval(accuracy: float, interval, digits: int = 2) -> str:
    """``74.10 (71.3–76.7)``: an accuracy and its (low, high) interval, in percent."""
    low, high = interval
    return f"{100 * accuracy:.{digits}f} ({100 * low:.1f}–{100 * high:.1f})"


def targets_table(checks: list[dict]) -> list[str]:
    """The "## Targets" Markdown section of a results file: one row per ``{"check", "value",
    "passed"}`` (``passed`` None: a figure reported, not a pass/fail check)."""
    return ["## Targets", "", "| check | measured | met |", "|---|---|---|"] + [
        f"| {c['check']} | {c['value']} | {VERDICT[c['passed']]} |" for c in checks]


def run_description(data: dict) -> str:
    """``Command: `...`. Machine: N CPUs, platform, TensorFlow x, date.`` of a results file."""
    m = data["machine"]
    return (f"Command: `{data['command']}`. Machine: {m['cpus']} CPUs, {m['platform']}, TensorFlow "
            f"{m['packages']['tensorflow']}, {m['date']}.")

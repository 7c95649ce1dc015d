"""Output files and folders: checked before any work (new, or ``--overwrite``; writable), and
the report written into a folder."""

from __future__ import annotations

from pathlib import Path

from .._io import check_new_file
from .errors import UsageError
from .terminal import say

__all__ = ["output_file", "new_folder", "save_report"]


def _check_writable(path: Path, argument: str) -> None:
    """The nearest existing folder above ``path`` lets us write (checked before any work)."""
    import os

    parent = path.parent if not path.is_dir() else path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{argument} {path}: cannot write in {parent}; pass a path in a folder you can write")


def output_file(path: str, suffix: str, overwrite: bool, argument: str) -> Path:
    """``path`` checked before any work: its suffix, that it is new (or ``--overwrite``), writable."""
    try:
        file = check_new_file(path, suffix, overwrite, argument, overwrite_flag="--overwrite")
    except (ValueError, FileExistsError) as error:
        raise UsageError(str(error)) from None
    _check_writable(file, argument)
    return file


def new_folder(path: str, overwrite: bool = False, argument: str = "--out") -> Path:
    """An output folder checked before any work: new or empty (or any folder with ``--overwrite``:
    the files of the same names are replaced), writable."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{argument} {path} is a file; pass a folder")
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise UsageError(f"{argument} {path} is not empty; pass --overwrite to replace the files of the same names in "
                         "it, or a new or empty folder")
    _check_writable(folder, argument)
    return folder


def save_report(report, folder: Path, overwrite: bool = False) -> None:
    """report.{json,md,html} and plots/*.png in ``folder`` (the plots drawn once)."""
    figures = report.figures()
    paths = report.save(folder, overwrite=overwrite, figures=figures)
    report.save_plots(folder / "plots", overwrite=overwrite, figures=figures)
    say(f"report written to {paths['html']}")

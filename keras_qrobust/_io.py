"""Atomic writes: outputs go to a temporary sibling, then are renamed into place."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "check_new_file", "write_text", "write_json"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it to ``path``.

    An existing ``path`` is replaced only with ``overwrite=True`` (FileExistsError
    otherwise, raised before anything is written). On failure nothing at ``path`` changes.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    temporary = workdir / path.name
    try:
        yield temporary
        if not temporary.exists():
            raise RuntimeError(f"nothing was written to {temporary}")
        if temporary.is_dir() and path.exists():
            # os.replace cannot replace a directory: swap through a backup name
            backup = workdir / f"{path.name}.old"
            os.replace(path, backup)
            os.replace(temporary, path)
        else:
            os.replace(temporary, path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def check_new_file(path: str | os.PathLike, suffix: str, overwrite: bool, what: str,
                   overwrite_flag: str = "overwrite=True") -> Path:
    """``path`` as a Path, after checking its suffix and that it may be written (before any work).

    ``what`` names the output in the messages (``"a TFLite export"``, ``"--output"``);
    ``overwrite_flag`` is how the caller allows replacing a file (``"--overwrite"`` on the CLI).
    """
    path = Path(path)
    if path.suffix.lower() != suffix:
        raise ValueError(f"{path}: {what} needs a {suffix} file name")
    if path.is_dir():
        raise ValueError(f"{path} is a folder; {what} needs a file name ending in {suffix}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass {overwrite_flag} to replace it, or another file name")
    return path


def write_text(path: str | os.PathLike, text: str, overwrite: bool = True) -> Path:
    with atomic_path(path, overwrite=overwrite) as temporary:
        temporary.write_text(text)
    return Path(path)


def dumps_json(data, indent: int = 2, _level: int = 0) -> str:
    """``data`` as JSON indented like ``json.dumps(data, indent=2)``, except that a list of
    numbers, strings, booleans or nulls stays on one line: results hold long curves and
    per-input flags, which one value per line makes several times larger and no easier to read."""
    pad, inner = " " * (indent * _level), " " * (indent * (_level + 1))
    if isinstance(data, dict) and data:
        items = [f"{inner}{json.dumps(str(k))}: {dumps_json(v, indent, _level + 1)}" for k, v in data.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(data, (list, tuple)) and data and any(isinstance(v, (dict, list, tuple)) for v in data):
        return "[\n" + ",\n".join(inner + dumps_json(v, indent, _level + 1) for v in data) + "\n" + pad + "]"
    return json.dumps(data)


def write_json(path: str | os.PathLike, data, overwrite: bool = True) -> Path:
    return write_text(path, dumps_json(data) + "\n", overwrite)

"""Resumable benchmarks: results kept under a fingerprint of what they depend on.

A long benchmark keeps every finished piece (a scored row, an attacked chunk) under a
:func:`fingerprint` of the models' weights, the settings and the source code that scored it,
so an interrupted run resumes where it stopped, and a result is stale as soon as any of them
changes. The bytes hashed are part of the stored records' names: keep them as they are.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from .._io import write_json
from .._keras import keras

__all__ = ["files_digest", "source_digest", "fingerprint", "FinishedResults", "resumable"]

#: the installed keras_qrobust package, whose source every benchmark result depends on
PACKAGE = Path(__file__).resolve().parents[1]


def files_digest(files: Iterable[str | os.PathLike]) -> bytes:
    """A SHA-256 over the contents of ``files``, in order (a folder: its ``.py`` files, sorted)."""
    digest = hashlib.sha256()
    for source in files:
        source = Path(source)
        for path in sorted(source.rglob("*.py")) if source.is_dir() else [source]:
            digest.update(path.read_bytes())
    return digest.digest()


def source_digest(*files: str | os.PathLike) -> bytes:
    """A SHA-256 of the code a benchmark result depends on: every module of the keras_qrobust
    package (sorted by path), then ``files`` (the benchmark's own code), in order. Take it once,
    when the benchmark starts, so it is the source the process runs even if the files are
    edited meanwhile."""
    return files_digest([*sorted(PACKAGE.rglob("*.py")), *(Path(f).resolve() for f in files)])


def fingerprint(*models, source: bytes, extra=()) -> str:
    """A SHA-256 over the models' weights (values, shapes, dtypes, in order), ``extra`` (any
    JSON-able settings) and ``source`` (:func:`source_digest`): what a scored result depends on,
    so a result stored under it is stale as soon as any of them changes."""
    digest = hashlib.sha256(source)
    digest.update(json.dumps(list(extra), sort_keys=True, default=str).encode())
    for model in models:
        for weight in model.weights:
            value = np.ascontiguousarray(weight.numpy())
            digest.update(f"{value.dtype}{value.shape}".encode())
            digest.update(value.tobytes())
    return digest.hexdigest()


class FinishedResults:
    """Results a long benchmark has finished, kept in the JSON file ``path`` under their
    :func:`fingerprint`, so an interrupted run resumes where it stopped instead of scoring
    everything again. Saved (temp file, then rename) after every :meth:`put`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._results = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str) -> dict | None:
        return self._results.get(key)

    def put(self, key: str, result: dict) -> None:
        self._results[key] = result
        write_json(self.path, self._results)


def resumable(path: str | os.PathLike):
    """``(callback, info)``: a BackupAndRestore next to the model file ``path``
    (``<stem>.backup``), so an interrupted fit resumes from its last finished epoch (weights,
    optimizer, epoch); ``info`` says when it did (the seconds measured then cover only the
    resumed part)."""
    path = Path(path)
    backup = path.with_name(f"{path.stem}.backup")
    # tf_keras leaves the emptied directory behind once a fit completes
    info = {"resumed_from": backup.name} if any(backup.rglob("checkpoint")) else {}
    return keras.callbacks.BackupAndRestore(str(backup)), info

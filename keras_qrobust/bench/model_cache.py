"""Trained models kept between benchmark runs: a cache folder, and committed checkpoints.

A model a benchmark trains is saved in its cache folder with ``<stem>.json`` beside it: how it
was trained, on which machine, by which code. A model that took CPU hours can be committed to a
checkpoints folder with that record and its SHA-256 (benchmarks/checkpoint.py), so a fresh
clone loads it instead of training it again; ``KQ_RETRAIN=1`` ignores the checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .._io import atomic_path, write_json
from .._keras import keras
from ..model_files import read_model_config, register_named_packages
from .machine import machine

__all__ = ["file_sha256", "save_cached", "load_cached"]


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_cached(model, path: str | os.PathLike, info: dict | None = None, code: str | None = None) -> None:
    """Save ``model`` at ``path`` (written to a temp file, then renamed) and, beside it,
    ``<stem>.json``: ``info`` (how it was trained) with the :func:`~keras_qrobust.bench.machine`
    and ``code`` (the :func:`~keras_qrobust.bench.code_version`) that trained it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        model.save(tmp)
    write_json(path.with_suffix(".json"), {"model": path.name, "training": info or {}, "machine": machine(code),
                                           "code": code})


def load_cached(path: str | os.PathLike, checkpoints: str | os.PathLike | None = None):
    """``(model, info)`` for the model cached at ``path``, else for its committed checkpoint
    ``checkpoints/<name>`` (checked against the SHA-256 in its provenance file ``<stem>.json``;
    ``info`` then holds that provenance: how, where and by which code it was trained), else
    ``None``. ``KQ_RETRAIN=1`` ignores the checkpoints, so everything is trained again."""
    path = Path(path)
    if path.exists():
        record = path.with_suffix(".json")
        register_named_packages(read_model_config(path))
        return keras.models.load_model(path), {"cached": str(path), **(
            {"trained": json.loads(record.read_text())} if record.exists() else {})}
    if checkpoints is None:
        return None
    checkpoint = Path(checkpoints) / path.name
    if os.environ.get("KQ_RETRAIN") == "1" or not checkpoint.exists():
        return None
    provenance = json.loads(checkpoint.with_suffix(".json").read_text())
    if file_sha256(checkpoint) != provenance["sha256"]:
        raise RuntimeError(f"{checkpoint} does not match the SHA-256 in {checkpoint.with_suffix('.json').name}: "
                           "the file changed since it was committed. Restore it with "
                           f"'git checkout -- {checkpoint}', or set KQ_RETRAIN=1 to train the model again.")
    register_named_packages(read_model_config(checkpoint))
    return keras.models.load_model(checkpoint), {"checkpoint": checkpoint.name, "trained": provenance}

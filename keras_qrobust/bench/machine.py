"""What ran a benchmark: the machine, the package versions, the code's git commit; timing and logging."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from ..version import __version__

__all__ = ["log", "timed", "cpu", "machine", "code_version"]

#: the packages whose versions a results file records
PACKAGES = ("tensorflow", "tf_keras", "tensorflow-model-optimization", "numpy")
#: the CPU extensions integer kernels depend on, reported when present
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def log(message: str) -> None:
    """Print ``message`` to stderr (progress; stdout keeps the results)."""
    print(message, file=sys.stderr, flush=True)


def timed(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), wall seconds)``."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def cpu() -> dict:
    """The CPU model and the vector extensions integer kernels depend on (Linux; else unknown):
    latencies, and onnxruntime's u8s8 kernels, differ between CPUs with and without AVX-VNNI."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or None, "flags": None}
    lines = info.splitlines()

    def field(name: str) -> str:  # the first CPU's
        return next((line.split(":", 1)[1] for line in lines if line.startswith(name)), "")

    model, flags = field("model name").strip() or None, field("flags").split()
    return {"model": model, "flags": [flag for flag in CPU_FLAGS if flag in flags]}


def machine(code: str | None = None) -> dict:
    """The ``"machine"`` entry of a results file: Python, platform, CPUs, package versions,
    keras_qrobust's version, ``code`` (the :func:`code_version` that ran) and the date (UTC)."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu": cpu(),
        "packages": versions,
        "keras_qrobust": __version__,
        "code": code,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def code_version(root: str | os.PathLike, paths: Sequence[str] = (), exclude: Sequence[str] = ()) -> str:
    """The git commit checked out at ``root``, with ``+changes`` if files under ``paths`` (all
    of the checkout if none) other than those under ``exclude`` differ from it. Take it once, when
    a benchmark starts: it then names the code the process runs even if a commit is made meanwhile."""
    spec = [*paths, *(f":(exclude){path}" for path in exclude)]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", *spec], cwd=root,
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + ("+changes" if changed else "")

"""What the benchmark scripts share: their folders and the code version, bound to
:mod:`keras_qrobust.bench`, and the attack settings several of them use.

The scripts run as ``python benchmarks/NAME.py`` (``./run.sh bench NAME``), so Python finds
this module beside them; the models they train are in ``_models.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import keras_qrobust.bench as bench

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # the checkout: results files carry no path under it
RESULTS = HERE / "results"
CACHE = HERE / ".cache"
# Models that take CPU hours to train, committed with their provenance (benchmarks/checkpoint.py)
CHECKPOINTS = HERE / "checkpoints"
# the benchmarks' shared modules: every kept result depends on them too (source_digest)
SHARED = (HERE / "_common.py", HERE / "_models.py")

# taken at import: the code this process runs, even if a commit is made meanwhile (results files
# do not count as changes)
CODE_VERSION = bench.code_version(ROOT, paths=("keras_qrobust", "benchmarks"), exclude=("benchmarks/results",))


# Attack settings shared by the benchmarks. SPSA and Square: strong on low-bit models too
# (piecewise-constant outputs need a larger SPSA δ and larger squares, docs/attacks.md).
STRONG_SPSA = dict(steps=100, samples=64, delta=0.03, learning_rate=0.05)
STRONG_SQUARE = dict(queries=1000, p_init=0.3)
CW_L2_BUDGET = 1.0  # a CW-L2 example counts as a success only within this L2 distance


def within_l2_budget(x_adv, x, budget: float = CW_L2_BUDGET):
    """``x_adv`` where its L2 distance to ``x`` is at most ``budget``, else ``x``; and the distances."""
    norms = np.linalg.norm((x_adv - x).reshape(len(x), -1), axis=1)
    mask = (norms <= budget).reshape((-1,) + (1,) * (x.ndim - 1))
    return np.where(mask, x_adv, x), norms


# keras_qrobust.bench, with this checkout's folders and code version (read when called)
def machine() -> dict:
    """The machine and the code (:data:`CODE_VERSION`) of a results file."""
    return bench.machine(CODE_VERSION)


def save_cached(model, path: Path, info: dict | None = None) -> None:
    """Save a trained model in :data:`CACHE` with its training record (benchmarks/checkpoint.py
    commits the two)."""
    bench.save_cached(model, path, info, code=CODE_VERSION)


def load_cached(path: Path):
    """``(model, info)`` cached at ``path``, else committed in :data:`CHECKPOINTS`, else None."""
    return bench.load_cached(path, checkpoints=CHECKPOINTS)


def without_machine_paths(record):
    """``record`` without this checkout's folder and the home folder in its paths."""
    return bench.without_machine_paths(record, root=ROOT)


def write_results(name: str, data: dict, markdown: str) -> tuple[Path, Path]:
    """``results/NAME.{json,md}``."""
    return bench.write_results(name, data, markdown, folder=RESULTS, root=ROOT)


def publish(name: str, quick: bool, data: dict, markdown: str) -> None:
    """Write ``results/NAME[_quick].{json,md}``, print the Markdown and say where it went."""
    bench.publish(name, quick, data, markdown, folder=RESULTS, root=ROOT)


def source_digest(*scripts: Path) -> bytes:
    """A SHA-256 of the code a benchmark result depends on: the keras_qrobust package, the
    shared modules (:data:`SHARED`) and ``scripts`` (the benchmark's own files). Take it once,
    at the benchmark's import."""
    return bench.source_digest(*SHARED, *scripts)


def finished_results(name: str) -> bench.FinishedResults:
    """The results a long benchmark finished, kept in ``CACHE/<name>.json``."""
    return bench.FinishedResults(CACHE / f"{name}.json")

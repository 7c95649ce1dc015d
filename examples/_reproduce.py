"""Shared pieces of the paper reproductions (examples/reproduce_*.py).

Each script parses ``--quick``/``--seed``, writes into ``examples/results/<paper>/`` and prints
its runtime. The models: those the benchmarks trained (``benchmarks/.cache``, or committed in
``benchmarks/checkpoints``), loaded by file name, else trained here with the same recipe and
kept in ``examples/.cache``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

import keras_qrobust as kq
import keras_qrobust.bench as kb
from keras_qrobust.bench import log, write_json, write_text

ROOT = Path(__file__).resolve().parents[1]  # the repository
RESULTS = ROOT / "examples" / "results"
BENCHMARK_MODELS = (ROOT / "benchmarks" / ".cache", ROOT / "benchmarks" / "checkpoints")
MODELS = ROOT / "examples" / ".cache"  # the models trained by these scripts
# the shared PGD-AT cnn_small (benchmarks/_models.robust_model), by its file name there
ROBUST_STEM = "fashion_mnist_cnn_small_e30_s{seed}_dropout0.0_attackpgd_eps0.1_steps7_lrdrop"
ROBUST_DESCRIPTION = "PGD-AT (ε = 0.1, 7 steps), cnn_small without dropout, 30 epochs, LR drop"


def parse_args(description: str, argv: Optional[Sequence[str]] = None, **extra) -> argparse.Namespace:
    """``--quick`` (small slices, a smoke run), ``--seed`` and ``--out`` (results folder).

    ``extra``: more options as ``name=(type, default, help)``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small slices and few epochs (a smoke run)")
    parser.add_argument("--seed", type=int, default=0, help="seed of training, sampling and attacks")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default examples/results/<paper>)")
    parser.add_argument("--replot", action="store_true",
                        help="only re-render report.md/.html from the report.json files of an earlier run")
    for name, (kind, default, text) in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, help=text)
    return parser.parse_args(argv)


def results_dir(paper: str, args: argparse.Namespace) -> Path:
    """``args.out`` or ``examples/results/<paper>`` (``<paper>_quick`` for a quick run)."""
    folder = args.out or RESULTS / (f"{paper}_quick" if args.quick else paper)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Clock:
    """Wall time since construction, for the runtime line every script prints."""

    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def line(self, script: str, quick: bool) -> str:
        return f"{script}{' --quick' if quick else ''}: runtime {self.seconds:.0f} s ({self.seconds / 60:.1f} min) " \
               f"on {os.cpu_count()} CPUs"


def write_outputs(folder: Path, name: str, data: dict, markdown: str) -> None:
    """``folder/name.json`` and ``folder/name.md``; prints the Markdown."""
    write_json(folder / f"{name}.json", data)
    write_text(folder / f"{name}.md", markdown)
    print(markdown)
    log(f"wrote {folder / name}.json and .md")


def save_report(report, folder: Path) -> None:
    """``report.{json,md,html}`` of a RobustnessReport into ``folder`` (replacing older ones)."""
    report.save(folder, overwrite=True)
    log(f"wrote {folder}/report.json, report.md, report.html")


def replot(folder: Path) -> None:
    """Re-render every ``report.json`` under ``folder`` (Markdown and HTML; the numbers are the run's)."""
    for path in sorted(folder.rglob("report.json")):
        save_report(kq.report.RobustnessReport.load(path), path.parent)


def fashion_mnist(quick: bool, train: int, test: int, quick_train: int = 2000, quick_test: int = 300):
    """``(x_train, y_train), (x_test, y_test)``: the first ``train``/``test`` images (or the quick sizes)."""
    x_train, y_train = kq.datasets.load("fashion_mnist", "train")
    x_test, y_test = kq.datasets.load("fashion_mnist", "test")
    n_train, n_test = (quick_train, quick_test) if quick else (train, test)
    return (x_train[:n_train], y_train[:n_train]), (x_test[:n_test], y_test[:n_test])


def saved_model(stem: str):
    """The model saved as ``<stem>.keras`` by the benchmarks, else by these scripts; else None."""
    for folder in (*BENCHMARK_MODELS, MODELS):
        if (folder / f"{stem}.keras").exists():
            return kq.load_model(folder / f"{stem}.keras")
    return None


def cnn_small(epochs: int, seed: int, adversarial: Optional[dict] = None):
    """cnn_small trained on the Fashion-MNIST training images (``adversarial``:
    AdversarialModel arguments), as the benchmarks train it, so their copy is used if they
    have one; else trained here and kept in ``examples/.cache``."""
    tag = "".join(f"_{k}{v}" for k, v in sorted((adversarial or {}).items()))
    stem = f"fashion_mnist_cnn_small_e{epochs}_s{seed}{tag}"  # the benchmarks' file name
    if (model := saved_model(stem)) is not None:
        return model
    x, y = kq.datasets.load("fashion_mnist", "train")
    kq.defenses.set_seed(seed, deterministic_ops=True)
    model = kq.zoo.cnn_small()
    trainer = kq.defenses.AdversarialModel(model, **adversarial) if adversarial else model
    kq.defenses.train_classifier(trainer, x, y, epochs=epochs, batch_size=128, seed=seed,
                                 verbose=2 if adversarial else 0)
    MODELS.mkdir(parents=True, exist_ok=True)
    model.save(MODELS / f"{stem}.keras")
    return model


def robust_or_quick_model(quick: bool, seed: int):
    """The shared PGD-AT cnn_small (``benchmarks/_models.robust_model``), only if the benchmarks
    saved it; in ``--quick`` mode a 1-epoch FGSM-RS cnn_small instead. Returns ``(model, description)``."""
    if quick:
        model = cnn_small(1, seed, adversarial={"attack": "fgsm_rs", "eps": 0.1})
        return model, "FGSM-RS (ε = 0.1) cnn_small, 1 epoch (quick stand-in for the PGD-AT model)"
    stem = ROBUST_STEM.format(seed=seed)
    model = saved_model(stem)
    if model is None:
        raise SystemExit(f"the shared PGD-AT model is not cached yet (benchmarks/.cache/{stem}.keras); run again "
                         "once it exists (or use --quick)")
    return model, ROBUST_DESCRIPTION


def natural_model(quick: bool, seed: int):
    """The standard-trained cnn_small (8 epochs; 1 in ``--quick`` mode)."""
    epochs = 1 if quick else 8
    return cnn_small(epochs, seed), f"cnn_small, standard training, {epochs} epoch{'s' if epochs > 1 else ''}"


def pct(value: float) -> str:
    return f"{100 * value:.2f}"


def autoattack_column(models: dict, x, y, eps: float, quick: bool, seed: int) -> dict:
    """Standard AutoAttack (``fast`` when ``quick``) at ``eps`` on every model: ``{name: {"accuracy",
    "interval95", "n", "version"}}``, the robust accuracy a claim rests on."""
    version = "fast" if quick else "standard"
    report = kq.evaluate(models, (x, y), attacks=["autoattack"], eps=[eps], seed=seed,
                         options={"autoattack": {"version": version}}, verbose=0)
    out = {}
    for name in models:
        accuracy = report.accuracy[name]["autoattack"][0]
        low, high = kq.metrics.wilson_interval(round(accuracy * len(y)), len(y))
        out[name] = {"accuracy": accuracy, "interval95": [low, high], "n": int(len(y)), "version": version}
    return out


def with_interval(cell: dict) -> str:
    """``74.10 (71.3–76.7)``: an :func:`autoattack_column` cell, in percent."""
    return kb.with_interval(cell["accuracy"], cell["interval95"])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
    """A Markdown table as lines."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def to_jsonable(value):
    """numpy scalars and arrays as plain Python (for JSON)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value

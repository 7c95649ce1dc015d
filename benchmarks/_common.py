"""Shared pieces of the benchmark scripts: machine facts, trained models, result files."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras_qrobust as kq  # noqa: E402
from keras_qrobust._io import write_json, write_text  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CACHE = HERE / ".cache"
# Models that take CPU hours to train, committed with their provenance (benchmarks/checkpoint.py)
CHECKPOINTS = HERE / "checkpoints"


# Attack settings shared by the benchmarks. SPSA and Square: strong on low-bit models too
# (piecewise-constant outputs need a larger SPSA δ and larger squares, docs/attacks.md).
STRONG_SPSA = dict(steps=100, samples=64, delta=0.03, learning_rate=0.05)
STRONG_SQUARE = dict(queries=1000, p_init=0.3)
CW_L2_BUDGET = 1.0  # a CW-L2 example counts as a success only within this L2 distance


def timed(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), wall seconds)``."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def within_l2_budget(x_adv, x, budget: float = CW_L2_BUDGET):
    """``x_adv`` where its L2 distance to ``x`` is at most ``budget``, else ``x``; and the distances."""
    norms = np.linalg.norm((x_adv - x).reshape(len(x), -1), axis=1)
    mask = (norms <= budget).reshape((-1,) + (1,) * (x.ndim - 1))
    return np.where(mask, x_adv, x), norms


def _cpu() -> dict:
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
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
    return {"model": model, "flags": [flag for flag in wanted if flag in flags]}


def machine() -> dict:
    import importlib.metadata as md

    versions = {}
    for package in ("tensorflow", "tf_keras", "tensorflow-model-optimization", "numpy"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu": _cpu(),
        "packages": versions,
        "keras_qrobust": kq.__version__,
        "code": CODE_VERSION,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def model_path(name: str, epochs: int, seed: int = 0, dataset: str = "fashion_mnist",
               adversarial: dict | None = None, lr_drop: bool = False, model_kwargs: dict | None = None,
               split: str = "train", ema: float | None = None) -> Path:
    """Where :func:`trained_model` caches the model these arguments train."""
    tag = "" if split == "train" else f"_{split}"
    tag += "".join(f"_{k}{v}" for k, v in sorted((model_kwargs or {}).items()))
    tag += "" if not adversarial else "_" + "_".join(f"{k}{v}" for k, v in sorted(adversarial.items()))
    tag += "_lrdrop" if lr_drop else ""
    tag += "" if ema is None else f"_ema{ema:g}"
    return CACHE / f"{dataset}_{name}_e{epochs}_s{seed}{tag}.keras"


def lr_drop_schedule(epochs: int, drop_epochs: int, learning_rate: float = 1e-3):
    """``(callback, drop_at)``: ``learning_rate``, then 10x lower for the last ``drop_epochs``
    epochs (from epoch index ``drop_at``)."""
    drop_at = epochs - drop_epochs
    callback = kq.keras.callbacks.LearningRateScheduler(
        lambda epoch: learning_rate if epoch < drop_at else learning_rate / 10)
    return callback, drop_at


def save_cached(model, path: Path, info: dict | None = None) -> None:
    """Save ``model`` at ``path`` in benchmarks/.cache (written to a temp file, then renamed)
    and, beside it, ``<stem>.json``: ``info`` (how it was trained) with the machine and the code
    that trained it, which benchmarks/checkpoint.py commits with the model."""
    path.parent.mkdir(exist_ok=True)
    with kq._io.atomic_path(path, overwrite=True) as tmp:
        model.save(tmp)
    write_json(path.with_suffix(".json"), {"model": path.name, "training": info or {}, "machine": machine(),
                                           "code": CODE_VERSION})


def code_version() -> str:
    """The git commit of this checkout (with ``+changes`` if the library or the benchmarks' code
    differ from it; results files do not count)."""
    import subprocess

    root = HERE.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "keras_qrobust", "benchmarks",
                                  ":(exclude)benchmarks/results"], cwd=root,
                                 capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit + ("+changes" if changed else "")


# taken at import: the code this process runs, even if a commit is made meanwhile
CODE_VERSION = code_version()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_cached(path: Path):
    """``(model, info)`` for the model cached at ``path``, else for its committed checkpoint
    (``CHECKPOINTS/<name>``, checked against the SHA-256 in its provenance file; ``info`` then
    holds that provenance: how, where and by which code it was trained), else ``None``.
    ``KQ_RETRAIN=1`` ignores the committed checkpoints, so everything is trained again."""
    if path.exists():
        record = path.with_suffix(".json")
        return kq.keras.models.load_model(path), {"cached": str(path), **(
            {"trained": json.loads(record.read_text())} if record.exists() else {})}
    checkpoint = CHECKPOINTS / path.name
    if os.environ.get("KQ_RETRAIN") == "1" or not checkpoint.exists():
        return None
    provenance = json.loads(checkpoint.with_suffix(".json").read_text())
    if file_sha256(checkpoint) != provenance["sha256"]:
        raise RuntimeError(f"{checkpoint} does not match the SHA-256 in {checkpoint.with_suffix('.json').name}: "
                           "the file changed since benchmarks/checkpoint.py committed it. Restore it with "
                           f"'git checkout -- benchmarks/checkpoints/{checkpoint.name}', or set KQ_RETRAIN=1 to "
                           "train the model again.")
    return kq.keras.models.load_model(checkpoint), {"checkpoint": checkpoint.name, "trained": provenance}


def trained_model(name: str, epochs: int, seed: int = 0, dataset: str = "fashion_mnist",
                  adversarial: dict | None = None, lr_drop: bool = False, model_kwargs: dict | None = None,
                  split: str = "train", ema: float | None = None):
    """A zoo model trained on a training split (cached in benchmarks/.cache).

    ``adversarial``: AdversarialModel arguments (e.g. ``{"attack": "fgsm_rs", "eps": 0.1}``)
    for adversarial training; None trains normally. ``lr_drop``: Adam at 1e-3, then 1e-4 for
    the last quarter of the epochs. ``model_kwargs``: zoo constructor arguments (e.g.
    ``{"dropout": 0.0}``). ``split``: ``"train"`` (all training images) or ``"fit"`` (without
    the validation split). ``ema``: weight averaging with this momentum.
    """
    path = model_path(name, epochs, seed, dataset, adversarial, lr_drop, model_kwargs, split, ema)
    if (found := load_cached(path)) is not None:
        return found
    x, y = kq.datasets.load(dataset, split)
    CACHE.mkdir(exist_ok=True)
    kq.defenses.set_seed(seed, deterministic_ops=True)
    model = kq.zoo.get(name, input_shape=x.shape[1:], num_classes=int(y.max()) + 1, **(model_kwargs or {}))
    trainer = kq.defenses.AdversarialModel(model, **adversarial) if adversarial else model
    start = time.perf_counter()
    backup, resumed = resumable(path)
    callbacks = [backup]
    if lr_drop:
        callbacks.append(lr_drop_schedule(epochs, max(1, epochs // 4))[0])
    kq.defenses.train_classifier(trainer, x, y, epochs=epochs, batch_size=128, seed=seed, callbacks=callbacks,
                                 verbose=2 if adversarial else 0, ema_momentum=ema)
    seconds = time.perf_counter() - start
    info = {"train_seconds": round(seconds, 1), **resumed}
    save_cached(model, path, info)
    return model, info


def resumable(path: Path):
    """``(callback, info)``: a BackupAndRestore next to ``path``, so an interrupted fit resumes
    from its last finished epoch (weights, optimizer, epoch); ``info`` says when it did (the
    seconds measured then cover only the resumed part)."""
    backup = CACHE / f"{path.stem}.backup"
    # tf_keras leaves the emptied directory behind once a fit completes
    info = {"resumed_from": backup.name} if any(backup.rglob("checkpoint")) else {}
    return kq.keras.callbacks.BackupAndRestore(str(backup)), info


# The PGD-AT model of the defenses, export and reproduction scripts (Madry 2018, ε = 0.1,
# 7 steps, α = 2.5ε/7): cnn_small without dropout, 30 epochs, learning rate 10x lower for the
# last quarter. With dropout 0.25 and 20 epochs it reached 84.4% clean / 75.6% PGD-20.
ROBUST_EPS = 0.1
ROBUST_RECIPE = dict(name="cnn_small", epochs=30, adversarial={"attack": "pgd", "eps": ROBUST_EPS, "steps": 7},
                     lr_drop=True, model_kwargs={"dropout": 0.0})


def describe_objective(adversarial: dict, clean_weight: float = 0.0) -> str:
    """``"PGD-AT (ε = 0.1, 7 steps)"`` or ``"TRADES (β = 3, ε = 0.1, 7 steps)"``."""
    mixed = f", clean-loss weight {clean_weight:g}" if clean_weight else ""
    if adversarial["attack"] == "trades":
        return f"TRADES (β = {adversarial.get('beta', 6.0):g}, ε = {adversarial['eps']}, {adversarial['steps']} steps)"
    return f"{adversarial['attack'].upper()}-AT (ε = {adversarial['eps']}, {adversarial['steps']} steps{mixed})"


def describe_recipe(recipe: dict) -> str:
    """One line saying what a :func:`trained_model` recipe trains."""
    attack, kwargs = recipe["adversarial"], recipe.get("model_kwargs") or {}
    width = f" of width {kwargs['width']}" if kwargs.get("width", 1) != 1 else ""
    dropout = " without dropout" if kwargs.get("dropout") == 0.0 else ""
    split = " on the fit split (validation held out)" if recipe.get("split", "train") == "fit" else ""
    ema = f", weight averaging (EMA {recipe['ema']:g})" if recipe.get("ema") is not None else ""
    return (f"{describe_objective(attack)}, {recipe['name']}{width}"
            f"{dropout}, {recipe['epochs']} epochs{', LR drop' if recipe.get('lr_drop') else ''}{ema}{split}")


ROBUST_DESCRIPTION = describe_recipe(ROBUST_RECIPE)


def robust_model(seed: int = 0, cached_only: bool = False):
    """The shared PGD-AT cnn_small (trained once, then cached); with ``cached_only``,
    ``(None, {})`` unless it is cached already."""
    path = model_path(seed=seed, **ROBUST_RECIPE)
    if cached_only and not (path.exists() or (CHECKPOINTS / path.name).exists()):
        return None, {}
    model, info = trained_model(seed=seed, **ROBUST_RECIPE)
    return model, {**info, "training": ROBUST_DESCRIPTION}


# Adversarial fine-tuning of the robust models and their quantized copies (quantization-aware
# for the copies: their fake quantizers pass straight-through gradients to the float shadow
# weights), by default with the PGD-AT objective of ROBUST_RECIPE.
FINE_TUNE = ROBUST_RECIPE["adversarial"]


def adversarially_fine_tuned(model, x, y, epochs: int, learning_rate: float, drop_epochs: int, seed: int,
                             path: Path | None, clean_weight: float = 0.0, record: dict | None = None,
                             adversarial: dict = FINE_TUNE):
    """``model`` after ``epochs`` of adversarial training (``adversarial``: AdversarialModel
    arguments; clean-loss weight ``clean_weight``) on ``(x, y)`` with Adam at ``learning_rate``,
    10x lower for the last ``drop_epochs``; saved at ``path`` (an interrupted fine-tuning resumes
    from its last finished epoch), with ``record`` added to the training record saved beside it.
    Returns ``(model, info)``."""
    kq.defenses.set_seed(seed, deterministic_ops=True)
    trainer = kq.defenses.compile_classifier(
        kq.defenses.AdversarialModel(model, clean_weight=clean_weight, **adversarial), learning_rate)
    schedule, drop_at = lr_drop_schedule(epochs, drop_epochs, learning_rate)
    callbacks, resumed = [schedule], {}
    if path is not None:
        backup, resumed = resumable(path)
        callbacks.append(backup)
    start = time.perf_counter()
    trainer.fit(x, y, epochs=epochs, batch_size=128, verbose=2, callbacks=callbacks)
    seconds = time.perf_counter() - start
    drop = f" then {learning_rate / 10:g} from epoch {drop_at + 1}" if drop_at < epochs else ""
    info = {"fine_tune": f"{describe_objective(adversarial, clean_weight)}, {epochs} epochs, "
                         f"Adam {learning_rate:g}{drop}",
            "train_seconds": round(seconds, 1), **resumed}
    if path is not None:
        save_cached(model, path, {**info, **(record or {})})
    return model, info


def fine_tuned_copy(model, setting: str, x, y, x_cal, epochs: int, learning_rate: float = 1e-3, seed: int = 0,
                    cache_stem: str | None = None, adversarial: dict = FINE_TUNE):
    """The ``setting`` ("w3" = 3-bit weight-only on clipped grids, or "wXaY") PTQ copy of
    ``model``, then ``epochs`` of adversarial training (``adversarial``, PGD-AT by default) on
    ``(x, y)``, the learning rate 10x lower for the last half (cached as
    ``CACHE/<cache_stem>_ft<setting>[_<objective>]_e<epochs>_lr<learning_rate>.keras``; an
    interrupted fine-tuning resumes from its last finished epoch)."""
    objective = "" if adversarial == FINE_TUNE else "_" + "_".join(f"{k}{v}" for k, v in sorted(adversarial.items()))
    path = (CACHE / f"{cache_stem}_ft{setting}{objective}_e{epochs}_lr{learning_rate:g}.keras"
            if cache_stem else None)
    if path is not None and (found := load_cached(path)) is not None:
        return found
    if setting == "w3":
        # start from the σ_max-optimal clipping ratio per layer (Song 2021; the plain max grid
        # loses ~50 points here and fine-tuning recovers it slowly); the first weight layer reads
        # the input and keeps 8 bits (input_weight_bits), so it keeps the max grid
        costs = kq.analysis.layer_costs(model, bits_options=(3,))[1:]
        clip = {cost.layer: cost.clip[3] for cost in costs}
        copy = kq.RobustQuantizer(weight_bits=3, activation_bits=None, layer_clip=clip).quantize(model)
    else:
        copy = kq.RobustQuantizer.from_setting(setting).quantize(model, x_cal)
    return adversarially_fine_tuned(copy, x, y, epochs, learning_rate, epochs // 2, seed, path,
                                    adversarial=adversarial)


# Candidate recipes for the defenses' Adv. model (issue 19), each trained on the fit split (the
# training images without the last 5,000) and chosen on the validation split by
# benchmarks/recipes.py: TRADES (Zhang 2019) at two trade-offs, and PGD-AT, all on cnn_small of
# width 2 (Madry 2018 §4: adversarial training needs capacity) with weight averaging (Gowal 2020 §4.4).
_WIDE = dict(ROBUST_RECIPE, model_kwargs={"dropout": 0.0, "width": 2})
_TRADES = {"attack": "trades", "eps": ROBUST_EPS, "steps": 7}
RECIPE_CANDIDATES = {
    "trades6-ema": dict(_WIDE, adversarial={**_TRADES, "beta": 6.0}, split="fit", ema=0.999),
    "trades3-ema": dict(_WIDE, adversarial={**_TRADES, "beta": 3.0}, split="fit", ema=0.999),
    "pgd-ema": dict(_WIDE, split="fit", ema=0.999),
}

# The model `./run.sh demo` starts from (issue 21: the first screen shows a robust quantized model
# within minutes): the chosen recipe's objective on the default width-1 cnn_small, 15 epochs —
# about a quarter of the Adv. model's compute per epoch. benchmarks/demo_model.py trains and
# scores it on the validation split; benchmarks/checkpoint.py commits it.
DEMO_RECIPE = dict(ROBUST_RECIPE, epochs=15, adversarial={**_TRADES, "beta": 3.0}, split="fit", ema=0.999)

# The defenses' Adv. model: the candidate benchmarks/results/recipes.md chose (the highest
# validation AutoAttack accuracy among those with validation clean accuracy ≥ 87%). Its
# quantized copies are fine-tuned with the same objective, on the same fit split.
DEFENSE_CHOICE = "trades3-ema"
DEFENSE_RECIPE = RECIPE_CANDIDATES[DEFENSE_CHOICE]
DEFENSE_FINE_TUNE = DEFENSE_RECIPE["adversarial"]
DEFENSE_DESCRIPTION = describe_recipe(DEFENSE_RECIPE)


def defense_model_path(seed: int = 0) -> Path:
    """Where :func:`defense_model` caches its model."""
    return model_path(seed=seed, **DEFENSE_RECIPE)


def defense_model(seed: int = 0):
    """The defenses benchmark's Adv. model (``DEFENSE_RECIPE``, trained once, then cached) and
    its training info."""
    model, info = trained_model(seed=seed, **DEFENSE_RECIPE)
    return model, {**info, "training": DEFENSE_DESCRIPTION}


DEFENSE_FINE_TUNE_EPOCHS = 4


def defense_fine_tuned(model, setting: str, seed: int = 0, epochs: int = DEFENSE_FINE_TUNE_EPOCHS):
    """The AT-ft copy of the Adv. model ``model``: its ``setting`` PTQ copy (calibrated on 1,024
    fit-split images) after ``epochs`` of ``DEFENSE_FINE_TUNE`` on the fit split (cached beside
    the Adv. model), its input rounding that of its exported files. Returns ``(model, info)``."""
    x, y = kq.datasets.load("fashion_mnist", "fit")
    x_cal = x[np.random.default_rng(seed).choice(len(x), 1024, replace=False)]
    tuned, info = fine_tuned_copy(model, setting, x, y, x_cal, epochs, seed=seed,
                                  cache_stem=defense_model_path(seed).stem, adversarial=DEFENSE_FINE_TUNE)
    # copies quantized before input quantizers rounded half to even, like their files' callers
    kq.quantize.round_inputs_half_even(tuned)
    return tuned, info


def source_digest(*scripts: Path) -> bytes:
    """A SHA-256 of the code a benchmark result depends on: the keras_qrobust package, this
    module and ``scripts`` (the benchmark's own files). Take it once, at the benchmark's import,
    so it is the source the process runs even if the files are edited meanwhile."""
    library = sorted((HERE.parent / "keras_qrobust").rglob("*.py"))
    return files_digest([*library, Path(__file__).resolve(), *(Path(s).resolve() for s in scripts)])


def files_digest(files) -> bytes:
    """A SHA-256 over the contents of ``files``, in order (a folder: its ``.py`` files, sorted)."""
    digest = hashlib.sha256()
    for source in files:
        source = Path(source)
        for path in sorted(source.rglob("*.py")) if source.is_dir() else [source]:
            digest.update(path.read_bytes())
    return digest.digest()


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
    """Results a long benchmark has finished, kept in ``CACHE/<name>.json`` under their
    :func:`fingerprint`, so an interrupted run resumes where it stopped instead of scoring
    everything again. Saved (temp file, then rename) after every :meth:`put`."""

    def __init__(self, name: str):
        self.path = CACHE / f"{name}.json"
        self._results = json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str) -> dict | None:
        return self._results.get(key)

    def put(self, key: str, result: dict) -> None:
        self._results[key] = result
        CACHE.mkdir(exist_ok=True)
        write_json(self.path, self._results)


def without_machine_paths(record):
    """``record`` (nested dicts, lists, strings) with this checkout's folder cut from every path
    (``/home/me/keras_qrobust/benchmarks/.cache/m.keras`` -> ``benchmarks/.cache/m.keras``) and
    the home folder written ``~`` and every ``resumed_from`` path cut to its file name: results
    files carry no path of the machine that made them."""
    if isinstance(record, dict):
        # a resumed training's backup may lie anywhere: its name is what identifies it
        return {k: Path(v).name if k == "resumed_from" and isinstance(v, str) else without_machine_paths(v)
                for k, v in record.items()}
    if isinstance(record, list):
        return [without_machine_paths(v) for v in record]
    if isinstance(record, str):
        return record.replace(f"{HERE.parent}/", "").replace(str(HERE.parent), ".").replace(str(Path.home()), "~")
    return record


def write_results(name: str, data: dict, markdown: str) -> tuple[Path, Path]:
    json_path = write_json(RESULTS / f"{name}.json", without_machine_paths(data))
    md_path = write_text(RESULTS / f"{name}.md", without_machine_paths(markdown))
    return json_path, md_path


VERDICT = {True: "yes", False: "NO", None: "—"}  # None: a figure reported, not a pass/fail check


def targets_table(checks: list[dict]) -> list[str]:
    """The "## Targets" Markdown section of a results file."""
    return ["## Targets", "", "| check | measured | met |", "|---|---|---|"] + [
        f"| {c['check']} | {c['value']} | {VERDICT[c['passed']]} |" for c in checks]


def publish(name: str, quick: bool, data: dict, markdown: str) -> None:
    """Write ``results/NAME[_quick].{json,md}``, print the Markdown and say where it went."""
    paths = write_results(f"{name}_quick" if quick else name, data, markdown)
    print(markdown)
    log(f"wrote {paths[0]} and {paths[1]}")


def run_description(data: dict) -> str:
    """``Command: `...`. Machine: N CPUs, platform, TensorFlow x, date.`` of a results file."""
    m = data["machine"]
    return (f"Command: `{data['command']}`. Machine: {m['cpus']} CPUs, {m['platform']}, TensorFlow "
            f"{m['packages']['tensorflow']}, {m['date']}.")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

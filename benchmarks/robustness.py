"""The published robustness figures: the Adv. model and its deployed w4a4 copy on the test set.

This is the one script that reads the Fashion-MNIST test set for the robustness claims (issue
19): the recipe was chosen on the validation split (benchmarks/recipes.py), the models are
trained on the fit split, and this scores them once.

Models: the defenses' Adv. model (``_models.defense_model``, float) and its w4a4 copy
fine-tuned with the same objective through its fake quantizers (``_models.defense_fine_tuned``,
"AT-ft w4a4"), whose full-integer TFLite file is the deployed artifact.

For each model, on the first ``--images`` test images (all 10,000 by default), L∞ ε = 0.1:
clean accuracy and standard AutoAttack (APGD-CE, APGD-T, FAB-T, Square 5,000 iterations, each
on the inputs still robust), robust accuracy with its 95 % Wilson interval. The run is split
into chunks of ``--chunk`` images. Each finished chunk is a committed record in
benchmarks/results/robustness_chunks/ (per input: robust, clean-correct, the attack that broke
it; for the model with a deployed file also the file's and the twin's labels at the chunk's
AutoAttack points, under the file's SHA-256), named by a fingerprint of the model, the chunk,
the seed and the source files standard AutoAttack and the quantized layers run. A run — on this
machine or after a fresh clone — resumes at its first chunk without a record; the points
themselves are kept only in benchmarks/.cache/robustness_points/ (untracked), and a chunk whose
file labels are missing for the current file and whose points are gone is attacked again.

For the deployed artifact (the w4a4 TFLite file, run by LiteRT): its agreement with the Keras
twin on every clean test image and on every AutoAttack point (the breaking point where the twin
was broken, else the input), its accuracy on those points, and Square (``--square-queries``)
run on the file itself on the first ``--square-images`` images. The artifact's robust accuracy
is the per-input worst case: not broken by AutoAttack on the twin, correct on the twin's
AutoAttack point, and not broken by Square on the file (inputs beyond the Square slice are
counted on the AutoAttack points alone). AutoAttack's points lie at the twin's decision
boundary, where a one-step rounding difference between the twin and the file decides the
label: their agreement there is reported beside the clean agreement.

Targets (issue 19): Adv. ≥ 76 % under AutoAttack with clean ≥ 87 %; the deployed w4a4 artifact
within 1.5 points of the Adv. model.

    ./run.sh bench robustness                    # writes benchmarks/results/robustness.{json,md}
    ./run.sh bench robustness --images 1000      # a shorter run, written as robustness_quick.*
"""

from __future__ import annotations

import argparse
import base64
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import keras_qrobust as kq
from _common import CACHE, CODE_VERSION, machine, publish
from _models import DEFENSE_DESCRIPTION, defense_fine_tuned, defense_model
from keras_qrobust.bench import atomic_path, file_sha256, files_digest, fingerprint, log, run_description, \
    targets_table, write_text

EPS = 0.1
TARGET_CLEAN, TARGET_ROBUST, TARGET_GAP = 0.87, 0.76, 0.015
TEST_IMAGES = 10_000
# A chunk's AutoAttack result depends on the code standard AutoAttack runs and on how the
# Keras model computes, not on the rest of the library: its record is keyed by those sources
# only, so other changes do not throw away hours of finished chunks. The file is scored afresh.
_ATTACK_SOURCES = ("attacks", "layers", "quantizers", "metrics.py", "_keras.py")
CHUNKS = Path(__file__).resolve().parent / "results" / "robustness_chunks"
POINTS = CACHE / "robustness_points"


def attack_source_digest() -> bytes:
    package = Path(kq.__file__).resolve().parent
    return files_digest([*(package / name for name in _ATTACK_SOURCES), Path(__file__).resolve()])


SOURCE = attack_source_digest()


class ChunkRecords:
    """Finished chunks, one JSON file each in ``folder`` (written to a temp file, then renamed)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def get(self, key: str) -> dict | None:
        path = self.folder / f"{key[:24]}.json"
        if not path.exists():
            return None
        record = json.loads(path.read_text())
        return record if record.get("key") == key else None

    def put(self, key: str, record: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"key": key, **record}, separators=(",", ":")) + "\n"
        write_text(self.folder / f"{key[:24]}.json", text)


# A chunk record is committed (40 of them under the repository's 5 MB cap), so its per-input
# arrays are stored compactly: flags as base64 bit strings, labels as digit strings, the inputs
# each attack broke as index lists.
def pack_flags(flags) -> str:
    return base64.b64encode(np.packbits(np.asarray(flags, bool)).tobytes()).decode("ascii")


def unpack_flags(text: str, count: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8))[:count].astype(bool)


def pack_labels(labels) -> str:
    labels = np.asarray(labels)
    if labels.size and not 0 <= labels.min() <= labels.max() <= 9:
        raise ValueError("a chunk record stores labels as digits: 10 classes at most")
    return "".join(str(int(v)) for v in labels)


def unpack_labels(text: str) -> np.ndarray:
    return np.array([int(c) for c in text], np.int64)


def pack_broken_by(broken_by, clean_correct) -> dict:
    """``{what broke it: [indices]}`` for the inputs neither robust nor clean mistakes."""
    out: dict = {}
    for i, label in enumerate(broken_by):
        if label not in ("", "clean"):
            out.setdefault(str(label), []).append(i)
    return out


def unpack_broken_by(record: dict, count: int) -> np.ndarray:
    broken_by = np.where(unpack_flags(record["clean_correct"], count), "", "clean").astype(object)
    for label, indices in record["broken_by"].items():
        broken_by[indices] = label
    return broken_by


def file_labels(twin, artifact, points: np.ndarray) -> dict:
    """The twin's and the file's labels at ``points``, and the largest score difference between
    them, over all points and over the points where the labels differ."""
    twin_scores = twin.predict(points, batch_size=500, verbose=0)
    file_scores = artifact.predict(points)
    twin_labels, labels = twin_scores.argmax(axis=1), file_scores.argmax(axis=1)
    difference = np.abs(twin_scores - file_scores).max(axis=1)
    differs = twin_labels != labels
    return {"twin_labels": pack_labels(twin_labels), "file_labels": pack_labels(labels),
            "largest_score_difference": float(difference.max()),
            "largest_where_disagreeing": float(difference[differs].max()) if differs.any() else 0.0}


def chunked_autoattack(name: str, model, x, y, chunk: int, seed: int, records, deployed=None) -> dict:
    """Standard AutoAttack on ``(x, y)`` chunk by chunk (each chunk a record in ``records``;
    ``None``: nothing kept). ``deployed``: ``(artifact, sha256 of its file)``, whose labels at
    each chunk's AutoAttack points are recorded too. Returns per-input arrays (``robust``,
    ``clean_correct``, ``broken_by`` and with ``deployed`` ``twin_labels``, ``file_labels`` at the
    points and the largest score differences) and the summed seconds."""
    parts = []
    for start in range(0, len(x), chunk):
        stop = min(start + chunk, len(x))
        key = fingerprint(model, source=SOURCE, extra=("autoattack-standard", start, stop, EPS, seed))
        part = records.get(key) if records is not None else None
        point_file = POINTS / f"{key}.npy"
        needs_file = deployed is not None and deployed[1] not in (part or {}).get("deployed", {})
        points = None
        if part is None or (needs_file and not point_file.exists()):
            result = kq.attacks.autoattack(model, x[start:stop], y[start:stop], eps=EPS, version="standard",
                                           seed=seed, verbose=0)
            part = {"model": name, "images": [start, stop], "code": CODE_VERSION,
                    "robust": pack_flags(result.robust), "clean_correct": pack_flags(result.clean_correct),
                    "broken_by": pack_broken_by(result.broken_by, result.clean_correct),
                    "seconds": {k: round(v, 1) for k, v in result.seconds.items()},
                    "findings": list(result.findings), "settings": result.settings, "deployed": {}}
            points = result.x_adv.astype(np.float32)
            if records is not None:
                POINTS.mkdir(parents=True, exist_ok=True)
                with atomic_path(point_file, overwrite=True) as temporary:
                    with open(temporary, "wb") as handle:
                        np.save(handle, points)
        if needs_file:
            points = np.load(point_file) if points is None else points
            part["deployed"] = {**part.get("deployed", {}), deployed[1]: file_labels(model, deployed[0], points)}
        if records is not None and (points is not None or needs_file):
            records.put(key, part)
        parts.append((stop - start, part))
        done = np.concatenate([unpack_flags(p["robust"], n) for n, p in parts])
        log(f"{name}: images {start}–{stop - 1} done, robust so far {done.mean():.2%} of {len(done)}")
    seconds: dict = {}
    for _, part in parts:
        for attack, value in part["seconds"].items():
            seconds[attack] = seconds.get(attack, 0.0) + value
    out = {"robust": np.concatenate([unpack_flags(p["robust"], n) for n, p in parts]),
           "clean_correct": np.concatenate([unpack_flags(p["clean_correct"], n) for n, p in parts]),
           "broken_by": np.concatenate([unpack_broken_by(p, n) for n, p in parts])}
    if deployed is not None:
        files = [p["deployed"][deployed[1]] for _, p in parts]
        for key in ("twin_labels", "file_labels"):
            out[key] = np.concatenate([unpack_labels(f[key]) for f in files])
        for key in ("largest_score_difference", "largest_where_disagreeing"):
            out[key] = max(f[key] for f in files)
    findings = sorted({f for _, p in parts for f in p["findings"]})
    return {**out, "seconds": seconds, "findings": findings, "settings": parts[0][1]["settings"]}


def summary(robust: np.ndarray, clean_correct: np.ndarray, broken_by=None, seconds=None) -> dict:
    low, high = kq.metrics.wilson_interval(int(robust.sum()), len(robust))
    clean_low, clean_high = kq.metrics.wilson_interval(int(clean_correct.sum()), len(clean_correct))
    row = {"n": int(len(robust)), "clean_accuracy": float(clean_correct.mean()),
           "clean_interval95": [clean_low, clean_high], "robust_accuracy": float(robust.mean()),
           "robust_interval95": [low, high]}
    if broken_by is not None:
        names = [b for b in dict.fromkeys(broken_by) if b not in ("", "clean")]
        row["broken_by"] = {b: int(np.sum(broken_by == b)) for b in names}
    if seconds is not None:
        row["seconds"] = {k: round(v, 1) for k, v in seconds.items()}
    return row


def deployed_rows(twin, artifact, x, y, attacked: dict, args) -> dict:
    """The artifact's agreement with ``twin`` and its robust accuracy (module docstring)."""
    twin_clean = kq.metrics.predict_labels(twin, x)
    file_clean = kq.metrics.predict_labels(artifact, x)
    twin_labels, adv_labels = attacked["twin_labels"], attacked["file_labels"]
    survived_points = adv_labels == y
    start = time.perf_counter()
    n_square = min(args.square_images, len(x))
    square = kq.attacks.autoattack(artifact, x[:n_square], y[:n_square], eps=EPS, attacks=["square"],
                                   options={"square": {"queries": args.square_queries}}, seed=args.seed, verbose=0)
    square_seconds = time.perf_counter() - start
    # conservative: robust only if no attack broke the twin, the file is right at the twin's
    # AutoAttack point, and Square did not break the file
    robust = attacked["robust"] & survived_points
    robust[:n_square] &= square.robust
    step = next((float(layer.step) for layer in twin.layers if isinstance(layer, kq.layers.OutputQuantizer)), None)
    differs = adv_labels != twin_labels
    return {
        "clean_agreement": float(np.mean(twin_clean == file_clean)),
        "clean_accuracy": float(np.mean(file_clean == y)),
        "autoattack_points_agreement": float(np.mean(~differs)),
        "autoattack_points_disagreeing": int(differs.sum()),
        "largest_score_difference": attacked["largest_score_difference"],
        "largest_score_difference_where_disagreeing": attacked["largest_where_disagreeing"],
        "output_step": step,
        "accuracy_on_autoattack_points": float(survived_points.mean()),
        "square_on_file": {**summary(square.robust, square.clean_correct), "queries": args.square_queries,
                           "seconds": round(square_seconds, 1)},
        "robust": summary(robust, file_clean == y),
    }


def run(args) -> dict:
    x_test, y_test = kq.datasets.load("fashion_mnist", "test")
    x, y = x_test[:args.images], y_test[:args.images]
    adv, adv_info = defense_model(args.seed)
    w4a4, w4a4_info = defense_fine_tuned(adv, "w4a4", args.seed)
    # only the full run's chunks are committed; a shorter run keeps its own in the cache
    records = None if args.rescore else ChunkRecords(CHUNKS if args.images == TEST_IMAGES
                                                     else CACHE / "robustness_chunks_quick")
    with tempfile.TemporaryDirectory() as folder:
        path = kq.export.tflite(w4a4, Path(folder) / "w4a4.tflite")
        size, file_sha = path.stat().st_size, file_sha256(path)
        artifact = kq.export.load(path)
        rows = {}
        for name, model, deployed in (("Adv.", adv, None), ("AT-ft w4a4", w4a4, artifact)):
            attacked = chunked_autoattack(name, model, x, y, args.chunk, args.seed, records,
                                          None if deployed is None else (deployed, file_sha))
            rows[name] = {"params": int(model.count_params()),
                          "autoattack": {**summary(attacked["robust"], attacked["clean_correct"],
                                                   attacked["broken_by"], attacked["seconds"]),
                                         "findings": attacked["findings"]},
                          "settings": attacked["settings"]}
            if deployed is not None:
                rows[name]["deployed"] = {"file": "w4a4.tflite", "bytes": size, "sha256": file_sha,
                                          **deployed_rows(model, deployed, x, y, attacked, args)}
    command = "./run.sh bench robustness" + (f" --images {args.images}" if args.images != TEST_IMAGES else "")
    return {"command": command, "machine": machine(), "eps": EPS, "images": int(len(x)), "seed": args.seed,
            "chunk": args.chunk, "models": rows, "checks": checks(rows),
            "training": {"Adv.": adv_info, "AT-ft w4a4": w4a4_info}}


def checks(rows: dict) -> list[dict]:
    adv = rows["Adv."]["autoattack"]
    deployed = rows["AT-ft w4a4"]["deployed"]["robust"]
    gap = adv["robust_accuracy"] - deployed["robust_accuracy"]
    return [
        {"check": f"Adv. clean ≥ {TARGET_CLEAN:.0%}", "value": f"{adv['clean_accuracy']:.2%}",
         "passed": adv["clean_accuracy"] >= TARGET_CLEAN},
        {"check": f"Adv. AutoAttack ≥ {TARGET_ROBUST:.0%}", "value": f"{adv['robust_accuracy']:.2%}",
         "passed": adv["robust_accuracy"] >= TARGET_ROBUST},
        {"check": f"deployed w4a4 file within {100 * TARGET_GAP:g} points of Adv. (robust)",
         "value": f"{deployed['robust_accuracy']:.2%} ({100 * gap:.2f} below)", "passed": gap <= TARGET_GAP},
    ]


def pct(value: float) -> str:
    return f"{100 * value:.2f}"


def interval(row: dict, key: str) -> str:
    low, high = row[key]
    return f"{100 * low:.1f}–{100 * high:.1f}"


def steps(deployed: dict, key: str) -> str:
    """A score difference, also in output steps when the step is known."""
    value, step = deployed[key], deployed["output_step"]
    return f"{value:.4g}" + (f" = {value / step:.1f} output steps" if step else "")


def markdown(data: dict) -> str:
    lines = ["# Robust accuracy on the test set (AutoAttack, and the deployed file)", "",
             f"{run_description(data)} Code {data['machine'].get('code', 'unknown')}. Fashion-MNIST, the first "
             f"{data['images']} test images, L∞ ε = {data['eps']}, seed {data['seed']}; standard AutoAttack in chunks "
             f"of {data['chunk']}. Adv.: {DEFENSE_DESCRIPTION} (chosen on the validation split: "
             "[recipes](recipes.md)); AT-ft w4a4: its w4a4 copy fine-tuned with the same objective for 4 epochs.", "",
             "| model | params | clean % (95% CI) | AutoAttack % (95% CI) | broken by | seconds per attack |",
             "|---|---|---|---|---|---|"]
    for name, row in data["models"].items():
        aa = row["autoattack"]
        broken = ", ".join(f"{k} {v}" for k, v in aa["broken_by"].items())
        seconds = ", ".join(f"{k} {v:.0f}" for k, v in aa["seconds"].items())
        lines.append(f"| {name} (Keras) | {row['params']:,} | {pct(aa['clean_accuracy'])} "
                     f"({interval(aa, 'clean_interval95')}) | {pct(aa['robust_accuracy'])} "
                     f"({interval(aa, 'robust_interval95')}) | {broken} | {seconds} |")
        for finding in aa["findings"]:
            lines.append(f"| | | | ! {finding} | | |")
    deployed = data["models"]["AT-ft w4a4"]["deployed"]
    square, robust = deployed["square_on_file"], deployed["robust"]
    lines += ["", "## The deployed w4a4 file (full-integer TFLite, LiteRT)", "",
              "| measure | value |", "|---|---|",
              f"| size | {deployed['bytes']:,} B |",
              f"| top-1 agreement with the Keras twin, clean test images | {pct(deployed['clean_agreement'])}% |",
              f"| clean accuracy | {pct(deployed['clean_accuracy'])}% |",
              "| top-1 agreement with the twin on the twin's AutoAttack points | "
              f"{pct(deployed['autoattack_points_agreement'])}% ({deployed['autoattack_points_disagreeing']} "
              f"differ; largest score difference there {steps(deployed, 'largest_score_difference_where_disagreeing')}"
              f", anywhere {steps(deployed, 'largest_score_difference')}) |",
              f"| accuracy on the twin's AutoAttack points | {pct(deployed['accuracy_on_autoattack_points'])}% |",
              f"| Square ({square['queries']} queries) on the file, first {square['n']} images | "
              f"{pct(square['robust_accuracy'])}% ({interval(square, 'robust_interval95')}), "
              f"{square['seconds']:.0f} s |",
              f"| robust accuracy of the file (worst case of all three, n = {robust['n']}) | "
              f"{pct(robust['robust_accuracy'])}% ({interval(robust, 'robust_interval95')}) |", ""]
    lines += targets_table(data["checks"])
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=TEST_IMAGES, help="test images (default: all 10,000)")
    parser.add_argument("--chunk", type=int, default=500, help="images per resumable AutoAttack chunk")
    parser.add_argument("--square-images", type=int, default=1000, help="images Square attacks on the file")
    parser.add_argument("--square-queries", type=int, default=1000, help="Square's queries on the file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rescore", action="store_true", help="attack every chunk again (records untouched)")
    args = parser.parse_args(argv)
    for name in ("chunk", "square_images", "square_queries"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive count")
    if not 1 <= args.images <= TEST_IMAGES:
        parser.error(f"--images must be between 1 and {TEST_IMAGES}")
    data = run(args)
    publish("robustness", args.images != TEST_IMAGES, data, markdown(data))


if __name__ == "__main__":
    main()

"""How far the deployed w4a4 file is from the Adv. model, paired on the same test inputs.

benchmarks/robustness.py scores the Adv. model and its deployed w4a4 copy on the test set and
checks the difference of their robust accuracies against issue 19's target (within 1.5
points). Both are measured on the same inputs, so their outcomes are correlated and two
separate intervals say little about the difference: this script states each difference paired
(``kq.paired``: Newcombe's method-10 95 % interval, McNemar's exact test), input by input:

- Adv. vs the AT-ft w4a4 Keras twin under AutoAttack: what quantizing and fine-tuning cost;
- the twin vs the deployed file: what the file costs on top (its labels at the twin's AutoAttack
  points, and Square on the file);
- Adv. vs the deployed file: the target;
- and the same for clean accuracy.

It attacks nothing with AutoAttack: the per-input outcomes are the robustness run's committed
chunk records (benchmarks/results/robustness_chunks/), and a missing chunk is an error. The
file's Square outcomes, which robustness.py sums but does not keep per input, are computed again
with the run's seed and settings, and their count is checked against results/robustness.json.
This is a separate script because robustness.py's own source is part of its chunks' key.

    ./run.sh bench robustness_gap                 # after ./run.sh bench robustness
    ./run.sh bench robustness_gap --images 2000   # the first finished chunks only (a _quick result)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import keras_qrobust as kq
from _common import RESULTS, machine, publish
from _models import defense_fine_tuned, defense_model
from keras_qrobust.bench import file_sha256, run_description, targets_table
from robustness import CHUNKS, EPS, POINTS, TARGET_GAP, TEST_IMAGES, ChunkRecords, chunked_autoattack

DEPLOYED = "AT-ft w4a4"


class RecordedChunks(ChunkRecords):
    """The robustness run's chunk records, read only: a chunk without a record (or without the
    file's labels and the points to compute them) is an error here, never attacked."""

    def __init__(self, folder: Path, file_sha: str):
        super().__init__(folder)
        self.file_sha = file_sha

    def get(self, key: str) -> dict:
        record = super().get(key)
        if record is None:
            raise SystemExit(f"robustness_gap: no AutoAttack record {key[:24]}.json in {self.folder}: run "
                             "`./run.sh bench robustness` first (or pass --images up to its finished chunks)")
        if (record["model"] == DEPLOYED and self.file_sha not in record.get("deployed", {})
                and not (POINTS / f"{key}.npy").exists()):
            raise SystemExit(f"robustness_gap: chunk {record['images']} has no labels of the w4a4 file "
                             f"{self.file_sha[:12]}: run `./run.sh bench robustness` first")
        return record

    def put(self, key: str, record: dict) -> None:
        """Read only: the labels computed from kept points are used, not written."""


def run_settings(images: int | None) -> dict:
    """The robustness run's settings, from results/robustness.json (``images`` overrides)."""
    path = RESULTS / "robustness.json"
    settings = {"images": TEST_IMAGES, "chunk": 500, "seed": 0, "square_images": 1000, "square_queries": 1000}
    recorded = None
    if path.exists():
        recorded = json.loads(path.read_text())
        square = recorded["models"][DEPLOYED]["deployed"]["square_on_file"]
        settings.update(images=recorded["images"], chunk=recorded["chunk"], seed=recorded["seed"],
                        square_images=square["n"], square_queries=square["queries"])
    elif images is None:
        raise SystemExit("robustness_gap: results/robustness.json is missing: run `./run.sh bench robustness` "
                         "first (or pass --images up to its finished chunks)")
    if images is not None:
        if images % settings["chunk"] and images != TEST_IMAGES:
            raise SystemExit(f"robustness_gap: --images must be a multiple of the run's chunk ({settings['chunk']})")
        settings["images"] = images
        settings["square_images"] = min(settings["square_images"], images)
    return {**settings, "recorded": recorded}


def pair(a: np.ndarray, b: np.ndarray) -> dict:
    return kq.paired.paired_difference(a, b).to_dict()


def run(args) -> dict:
    settings = run_settings(args.images)
    n, seed = settings["images"], settings["seed"]
    x_test, y_test = kq.datasets.load("fashion_mnist", "test")
    x, y = x_test[:n], y_test[:n]
    adv, _ = defense_model(seed)
    w4a4, _ = defense_fine_tuned(adv, "w4a4", seed)
    with tempfile.TemporaryDirectory() as folder:
        path = kq.export.tflite(w4a4, Path(folder) / "w4a4.tflite")
        file_sha = file_sha256(path)
        artifact = kq.export.load(path)
        records = RecordedChunks(CHUNKS, file_sha)
        adv_run = chunked_autoattack("Adv.", adv, x, y, settings["chunk"], seed, records)
        twin_run = chunked_autoattack(DEPLOYED, w4a4, x, y, settings["chunk"], seed, records, (artifact, file_sha))
        file_clean = kq.metrics.predict_labels(artifact, x) == y
        n_square = settings["square_images"]
        square = kq.attacks.autoattack(artifact, x[:n_square], y[:n_square], eps=EPS, attacks=["square"],
                                       options={"square": {"queries": settings["square_queries"]}}, seed=seed,
                                       verbose=0)
    # the same per-input worst case robustness.py counts for the file
    file_robust = twin_run["robust"] & (twin_run["file_labels"] == y)
    file_robust[:n_square] &= square.robust
    consistency = None
    recorded = settings["recorded"]
    if recorded is not None and n == recorded["images"]:
        published = recorded["models"][DEPLOYED]["deployed"]
        expected = {"file robust": round(published["robust"]["robust_accuracy"] * n),
                    "Square on the file": round(published["square_on_file"]["robust_accuracy"] * n_square)}
        found = {"file robust": int(file_robust.sum()), "Square on the file": int(square.robust.sum())}
        if expected != found:
            raise SystemExit(f"robustness_gap: the per-input counts {found} differ from results/robustness.json's "
                             f"{expected}: the file or the code changed since that run; run it again")
        consistency = found
    gap = pair(adv_run["robust"], file_robust)
    return {
        "command": "./run.sh bench robustness_gap" + (f" --images {args.images}" if args.images else ""),
        "machine": machine(), "eps": EPS, "images": n, "seed": seed, "file_sha256": file_sha,
        "square_on_file": {"images": n_square, "queries": settings["square_queries"]},
        "matches_robustness_json": consistency,
        "robust": {"Adv. − twin": pair(adv_run["robust"], twin_run["robust"]),
                   "twin − file": pair(twin_run["robust"], file_robust),
                   "Adv. − file": gap},
        "clean": {"Adv. − twin": pair(adv_run["clean_correct"], twin_run["clean_correct"]),
                  "twin − file": pair(twin_run["clean_correct"], file_clean),
                  "Adv. − file": pair(adv_run["clean_correct"], file_clean)},
        "checks": [{"check": f"deployed w4a4 file within {100 * TARGET_GAP:g} points of Adv. (robust, paired)",
                    "value": f"{100 * gap['difference']:.2f} points (95% CI {100 * gap['interval95'][0]:.2f} to "
                             f"{100 * gap['interval95'][1]:.2f})",
                    "passed": gap["difference"] <= TARGET_GAP}],
    }


def cell(d: dict) -> str:
    low, high = d["interval95"]
    verdict = "a difference" if d["p_value"] < 0.05 else "inside the noise"
    return (f"{100 * d['difference']:+.2f} ({100 * low:+.2f} to {100 * high:+.2f}) | {d['only_a']} | {d['only_b']} "
            f"| {d['p_value']:.3g}: {verdict}")


def markdown(data: dict) -> str:
    names = {"Adv. − twin": ("Adv. (Keras)", "AT-ft w4a4 twin (Keras)"),
             "twin − file": ("AT-ft w4a4 twin (Keras)", "the w4a4 file (LiteRT)"),
             "Adv. − file": ("Adv. (Keras)", "the w4a4 file (LiteRT)")}
    square = data["square_on_file"]
    lines = ["# The deployed w4a4 file against the Adv. model, paired", "",
             f"{run_description(data)} Code {data['machine'].get('code', 'unknown')}. Fashion-MNIST, the first "
             f"{data['images']} test images, L∞ ε = {data['eps']}, seed {data['seed']}. Per-input outcomes of the "
             "robustness run ([robustness](robustness.md)): standard AutoAttack on each Keras model; the file "
             f"(SHA-256 {data['file_sha256'][:12]}…) counts as robust only where the twin survived AutoAttack, the "
             f"file is right at the twin's AutoAttack point and (first {square['images']} images) Square with "
             f"{square['queries']} queries on the file did not break it.", ""]
    if data["matches_robustness_json"]:
        lines += [f"Recomputed counts equal results/robustness.json's: {data['matches_robustness_json']}.", ""]
    lines += ["A − B in points, the 95% interval of Newcombe's method 10, the inputs only A or only B gets right, "
              "McNemar's exact p (p ≥ 0.05 is inside the noise).", ""]
    for kind, title in (("robust", "Robust accuracy"), ("clean", "Clean accuracy")):
        lines += [f"## {title}", "", "| A | B | A % | B % | A − B (95% CI) | only A | only B | p |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, (a, b) in names.items():
            d = data[kind][key]
            lines.append(f"| {a} | {b} | {100 * d['accuracy_a']:.2f} | {100 * d['accuracy_b']:.2f} | {cell(d)} |")
        lines.append("")
    lines += targets_table(data["checks"])
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=None,
                        help="only the first IMAGES test images (a multiple of the run's chunk; default: the run's)")
    args = parser.parse_args(argv)
    if args.images is not None and not 1 <= args.images <= TEST_IMAGES:
        parser.error(f"--images must be between 1 and {TEST_IMAGES}")
    data = run(args)
    publish("robustness_gap", data["images"] != TEST_IMAGES, data, markdown(data))


if __name__ == "__main__":
    main()

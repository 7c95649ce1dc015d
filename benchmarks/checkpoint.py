"""Commit a trained model next to the benchmarks, with its provenance.

A model trained by a benchmark is cached in benchmarks/.cache, which a fresh clone does not
have. This copies a cached model (without its optimizer state) into benchmarks/checkpoints/
with a provenance file: how it was trained and in how many seconds, on which machine, by which
commit, and the file's SHA-256. The ``.keras`` zip is stored deflated (Keras reads it as it
is); a quantized copy's kernels are already their grid values
(``kq.quantization.grid_valued_kernels``, applied by ``_models`` after fine-tuning), which
deflate well. ``_models``/``keras_qrobust.bench.load_cached`` then loads the
checkpoint when the cache misses (checking the SHA-256), and the results name it. Set
``KQ_RETRAIN=1`` to ignore the checkpoints and train everything again.

The checked-out tree stays under 5 MB (issue 22): committed are the demo's model (0.84 MB),
the defenses' Adv. model (the squeezed width-2 cnn_small recipes.md chose, 0.68 MB) and its
AT-ft w4a4 copy (0.24 MB). The other models (the unsqueezed width-2 recipe candidates take
3.6 MB each; the other fine-tuned copies) are trained on first use into benchmarks/.cache.

    .venv/bin/python benchmarks/checkpoint.py add STEM [STEM ...]   # STEM: a model in benchmarks/.cache
    .venv/bin/python benchmarks/checkpoint.py list                  # the checkpoints, each verified
    .venv/bin/python benchmarks/checkpoint.py repack NAME [NAME ...] # store a committed .keras deflated
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile

import numpy as np

import _common
import keras_qrobust as kq
from keras_qrobust.bench import atomic_path, file_sha256, log, write_json


def add(stem: str) -> None:
    model_file, record = _common.CACHE / f"{stem}.keras", _common.CACHE / f"{stem}.json"
    if not model_file.exists():
        sys.exit(f"{model_file} does not exist: name a model in benchmarks/.cache by its stem "
                 "(its file name without .keras), after the benchmark that trains it has run.")
    if not record.exists():
        sys.exit(f"{record} does not exist: it is the training record _common.save_cached writes beside the "
                 "model. A model without one cannot be committed, since its provenance is unknown; train it again.")
    target = _common.CHECKPOINTS / model_file.name
    if target.exists():
        sys.exit(f"{target} exists already: remove it (git rm) first to replace it.")
    target.parent.mkdir(exist_ok=True)
    model = kq.keras.models.load_model(model_file, compile=False)  # uncompiled: saved without optimizer state
    with atomic_path(target) as tmp:
        model.save(tmp)
        deflate(tmp)
    provenance = {**_common.without_machine_paths(json.loads(record.read_text())), "sha256": file_sha256(target),
                  "bytes": target.stat().st_size, "parameters": int(model.count_params())}
    write_json(target.with_suffix(".json"), provenance)
    log(f"wrote {target} ({provenance['bytes'] / 1e6:.1f} MB) and {target.with_suffix('.json').name}")


def deflate(path) -> None:
    """Rewrite the zip at ``path`` with every member deflated (level 9), in the same order."""
    with zipfile.ZipFile(path) as stored:
        members = [(info, stored.read(info.filename)) for info in stored.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
        for info, data in members:
            out.writestr(info.filename, data)


def repack(name: str) -> None:
    """Store the committed checkpoint ``name`` (a ``.keras`` file in benchmarks/checkpoints/)
    deflated, for one committed before ``add`` deflated: the same members, so the same weights
    (checked), under a new SHA-256 and size in its provenance, whose other fields are kept."""
    model_file = _common.CHECKPOINTS / name
    provenance_file = model_file.with_suffix(".json")
    if not model_file.exists() or not provenance_file.exists():
        sys.exit(f"{model_file} or its provenance {provenance_file.name} does not exist: name a committed "
                 "checkpoint (see 'checkpoint.py list').")
    provenance = json.loads(provenance_file.read_text())
    if file_sha256(model_file) != provenance["sha256"]:
        sys.exit(f"{model_file} does not match the SHA-256 in {provenance_file.name}: restore it "
                 f"('git checkout -- {model_file}') before repacking.")
    before = kq.keras.models.load_model(model_file, compile=False).get_weights()
    with atomic_path(model_file, overwrite=True) as tmp:
        tmp.write_bytes(model_file.read_bytes())
        deflate(tmp)
        after = kq.keras.models.load_model(tmp, compile=False).get_weights()
        if len(before) != len(after) or any(not np.array_equal(a, b) for a, b in zip(before, after)):
            raise RuntimeError(f"repacking {model_file} changed its weights; the file is left as it was")
    write_json(provenance_file, {**provenance, "sha256": file_sha256(model_file), "bytes": model_file.stat().st_size})
    log(f"repacked {model_file.name}: {provenance['bytes']:,} -> {model_file.stat().st_size:,} B")


def list_checkpoints() -> None:
    for provenance_file in sorted(_common.CHECKPOINTS.glob("*.json")):
        provenance = json.loads(provenance_file.read_text())
        model_file = provenance_file.with_suffix(".keras")
        ok = model_file.exists() and file_sha256(model_file) == provenance["sha256"]
        print(f"{model_file.name}: {'verified' if ok else 'MISSING OR CHANGED'}; trained by {provenance['code']} "
              f"on {provenance['machine']['date']}: {provenance['training']}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("add", help="commit cached models").add_argument("stems", nargs="+")
    commands.add_parser("list", help="list and verify the checkpoints")
    commands.add_parser("repack", help="store committed checkpoints deflated").add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "add":
        for stem in args.stems:
            add(stem)
    elif args.command == "repack":
        for name in args.names:
            repack(name)
    else:
        list_checkpoints()


if __name__ == "__main__":
    main()

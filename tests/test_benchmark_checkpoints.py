"""The benchmarks' model store: cached models with their training record, committed checkpoints
(verified by SHA-256, ignored with KQ_RETRAIN=1) and the fingerprints that key kept results
(keras_qrobust.bench, bound to the benchmarks' folders by benchmarks/_common.py)."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

import keras_qrobust.bench as bench
from keras_qrobust._keras import keras

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the scripts' folder, as they run

import _common  # noqa: E402
import _models  # noqa: E402
import checkpoint  # noqa: E402


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(_common, "CHECKPOINTS", tmp_path / "checkpoints")
    monkeypatch.delenv("KQ_RETRAIN", raising=False)
    return tmp_path


def tiny_model(seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    return model


def test_save_cached_writes_the_training_record(store):
    path = _common.CACHE / "m.keras"
    _common.save_cached(tiny_model(), path, {"train_seconds": 1.5})
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["training"] == {"train_seconds": 1.5}
    assert record["model"] == "m.keras" and record["machine"]["cpus"] and record["code"]


def test_a_committed_checkpoint_loads_when_the_cache_misses(store):
    model = tiny_model()
    _common.save_cached(model, _common.CACHE / "m.keras", {"train_seconds": 2.0})
    checkpoint.add("m")
    provenance = json.loads((_common.CHECKPOINTS / "m.json").read_text())
    assert provenance["sha256"] == bench.file_sha256(_common.CHECKPOINTS / "m.keras")
    assert provenance["parameters"] == model.count_params()
    import zipfile

    with zipfile.ZipFile(_common.CHECKPOINTS / "m.keras") as stored:  # stored deflated
        assert {info.compress_type for info in stored.infolist()} == {zipfile.ZIP_DEFLATED}

    (_common.CACHE / "m.keras").unlink()
    loaded, info = _common.load_cached(_common.CACHE / "m.keras")
    assert info["checkpoint"] == "m.keras" and info["trained"]["training"] == {"train_seconds": 2.0}
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_the_cache_comes_first_and_nothing_found_is_none(store):
    assert _common.load_cached(_common.CACHE / "absent.keras") is None
    _common.save_cached(tiny_model(), _common.CACHE / "m.keras", {"train_seconds": 3.0})
    info = _common.load_cached(_common.CACHE / "m.keras")[1]
    assert info["cached"] == str(_common.CACHE / "m.keras") and info["trained"]["training"] == {"train_seconds": 3.0}


def test_a_changed_checkpoint_is_refused_and_retrain_ignores_checkpoints(store, monkeypatch):
    _common.save_cached(tiny_model(), _common.CACHE / "m.keras", {})
    checkpoint.add("m")
    (_common.CACHE / "m.keras").unlink()
    monkeypatch.setenv("KQ_RETRAIN", "1")
    assert _common.load_cached(_common.CACHE / "m.keras") is None
    monkeypatch.delenv("KQ_RETRAIN")
    with open(_common.CHECKPOINTS / "m.keras", "ab") as f:
        f.write(b"x")
    with pytest.raises(RuntimeError, match="does not match the SHA-256.*KQ_RETRAIN=1"):
        _common.load_cached(_common.CACHE / "m.keras")


def test_repack_deflates_a_stored_checkpoint_and_keeps_its_weights_and_record(store):
    import zipfile

    model = tiny_model()
    _common.save_cached(model, _common.CACHE / "m.keras", {"train_seconds": 4.0})
    checkpoint.add("m")
    target, provenance_file = _common.CHECKPOINTS / "m.keras", _common.CHECKPOINTS / "m.json"
    with zipfile.ZipFile(target) as deflated:  # as committed before add deflated: members stored
        members = [(info.filename, deflated.read(info.filename)) for info in deflated.infolist()]
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as stored:
        for name, data in members:
            stored.writestr(name, data)
    provenance = json.loads(provenance_file.read_text())
    provenance.update(sha256=bench.file_sha256(target), bytes=target.stat().st_size)
    provenance_file.write_text(json.dumps(provenance))

    checkpoint.repack("m.keras")
    repacked = json.loads(provenance_file.read_text())
    assert repacked["sha256"] == bench.file_sha256(target) != provenance["sha256"]
    assert repacked["bytes"] == target.stat().st_size < provenance["bytes"]
    assert {k: v for k, v in repacked.items() if k not in ("sha256", "bytes")} == \
        {k: v for k, v in provenance.items() if k not in ("sha256", "bytes")}
    with zipfile.ZipFile(target) as stored:
        assert {info.compress_type for info in stored.infolist()} == {zipfile.ZIP_DEFLATED}
        assert [(info.filename, stored.read(info.filename)) for info in stored.infolist()] == members
    (_common.CACHE / "m.keras").unlink()
    for a, b in zip(model.get_weights(), _common.load_cached(_common.CACHE / "m.keras")[0].get_weights()):
        np.testing.assert_array_equal(a, b)

    with open(target, "ab") as f:  # a changed file is not repacked over
        f.write(b"x")
    with pytest.raises(SystemExit, match="does not match the SHA-256"):
        checkpoint.repack("m.keras")
    with pytest.raises(SystemExit, match="does not exist"):
        checkpoint.repack("absent.keras")


def test_add_refuses_a_model_without_record_or_an_existing_checkpoint(store):
    with pytest.raises(SystemExit, match="does not exist"):
        checkpoint.add("m")
    model = tiny_model()
    _common.CACHE.mkdir()
    model.save(_common.CACHE / "m.keras")
    with pytest.raises(SystemExit, match="training record"):
        checkpoint.add("m")
    _common.save_cached(model, _common.CACHE / "m.keras", {})
    checkpoint.add("m")
    with pytest.raises(SystemExit, match="exists already"):
        checkpoint.add("m")


def test_fingerprints_follow_weights_settings_and_source(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text("a = 1\n")
    source = _common.source_digest(script)
    model, other = tiny_model(0), tiny_model(1)
    key = bench.fingerprint(model, source=source, extra=("row", 0.1))
    assert key == bench.fingerprint(model, source=_common.source_digest(script), extra=("row", 0.1))
    assert key != bench.fingerprint(other, source=source, extra=("row", 0.1))
    assert key != bench.fingerprint(model, source=source, extra=("row", 0.2))
    script.write_text("a = 2\n")
    assert key != bench.fingerprint(model, source=_common.source_digest(script), extra=("row", 0.1))


def test_fingerprints_and_digests_keep_their_values():
    """Kept results (benchmarks/results/coverage_rows/*.json, the .cache records) are named by
    these hashes: a change to the bytes hashed would orphan every one of them."""
    model = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(3)])
    model.set_weights([np.arange(12, dtype=np.float32).reshape(4, 3) / 10, np.arange(3, dtype=np.float32)])
    assert bench.fingerprint(model, source=b"src", extra=("row", 0.1)) == (
        "90dc3e3dbd5be1dfd682883de4a321f74c5e1be7912dc319efb13fd713b95565")
    assert bench.fingerprint(model, model, source=b"", extra=[]) == (
        "324225d1013360bbc3a4566be3799a0c1d4e75041a03399acbb5db36b57c2c11")


def test_files_digest_hashes_contents_in_order_and_folders_by_their_sorted_modules(tmp_path):
    (tmp_path / "pkg").mkdir()
    for name, text in (("b.py", "b"), ("a.py", "a"), ("notes.txt", "n")):
        (tmp_path / "pkg" / name).write_text(text)
    (tmp_path / "x.json").write_text("x")
    assert bench.files_digest([tmp_path / "x.json", tmp_path / "pkg"]) == hashlib.sha256(b"xab").digest()
    script = tmp_path / "run.py"
    script.write_text("s")
    assert _common.source_digest(script) == bench.files_digest(
        [*sorted(Path(bench.__file__).resolve().parents[1].rglob("*.py")), *_common.SHARED, script])


def test_finished_results_are_kept_across_runs(tmp_path):
    kept = bench.FinishedResults(tmp_path / "cells.json")
    assert kept.get("k") is None
    kept.put("k", {"accuracy": 0.5})
    assert bench.FinishedResults(tmp_path / "cells.json").get("k") == {"accuracy": 0.5}


def test_recipe_descriptions_say_what_is_trained():
    assert _models.ROBUST_DESCRIPTION == "PGD-AT (ε = 0.1, 7 steps), cnn_small without dropout, 30 epochs, LR drop"
    assert _models.DEFENSE_DESCRIPTION == (
        "TRADES (β = 2, ε = 0.1, 7 steps), cnn_small of width 2 without dropout, a 1x1 squeeze to 16 channels "
        "before fc1, 30 epochs, LR drop, weight averaging (EMA 0.999), trained in bfloat16 arithmetic (mixed "
        "precision) on the fit split (validation held out)")
    assert _models.describe_objective(_models.DEFENSE_FINE_TUNE) == "TRADES (β = 2, ε = 0.1, 7 steps)"
    assert _models.describe_objective(_models.FINE_TUNE, 0.5) == "PGD-AT (ε = 0.1, 7 steps, clean-loss weight 0.5)"


def test_the_defense_model_is_the_recipe_chosen_on_validation():
    """The Adv. model _models trains is the one benchmarks/results/recipes.json chose: a changed
    choice must change the code, not only the results file."""
    import recipes

    data = json.loads((_common.RESULTS / "recipes.json").read_text())
    in_use = recipes.in_use(data)
    assert in_use == _models.DEFENSE_CHOICE
    assert data["candidates"][in_use]["recipe"] == _models.DEFENSE_DESCRIPTION


def test_results_records_name_a_resumed_backup_without_its_path():
    record = {"training": {"train_seconds": 1.0, "resumed_from": "/home/someone/cache/m.backup"},
              "stages": [{"resumed_from": "/tmp/x/s.backup"}], "note": "/kept/as/is"}
    assert _common.without_machine_paths(record) == {"training": {"train_seconds": 1.0, "resumed_from": "m.backup"},
                                                      "stages": [{"resumed_from": "s.backup"}], "note": "/kept/as/is"}


def test_results_files_hold_no_path_of_the_machine(tmp_path, monkeypatch):
    from pathlib import Path

    root = _common.HERE.parent
    record = {"cached": f"{root}/benchmarks/.cache/m.keras", "runs": [f"ran in {root}"],
              "home": f"{Path.home()}/data.npz", "count": 3}
    assert _common.without_machine_paths(record) == {"cached": "benchmarks/.cache/m.keras", "runs": ["ran in ."],
                                                     "home": "~/data.npz", "count": 3}
    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    paths = _common.write_results("probe", record, f"model at {root}/benchmarks/.cache/m.keras")
    for path in paths:
        assert str(root) not in path.read_text()

"""The execution interface: local and Ray give the same numbers; lost workers are retried;
finished results are kept and skipped; Ray missing is a one-line install hint."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust.executor import INSTALL_HINT, run_tasks

ray = pytest.importorskip("ray", reason=f"the Ray executor needs Ray: {INSTALL_HINT}")


def test_evaluate_on_ray_equals_local(local_ray, tiny_case):
    model_file, data_file = tiny_case
    model = kq.load_model(model_file)
    data = np.load(data_file)
    x, y = data["x_test"][:48], data["y_test"][:48]
    quantized = kq.RobustQuantizer.from_setting("w4a4").quantize(model, data["x_train"][:100])
    models = {"tiny": model, "tiny w4a4": quantized}
    grid = dict(attacks=["fgsm", "pgd"], eps=[0.0, 0.05, 0.1], pgd_steps=5, seed=3, verbose=0)
    local = kq.evaluate(models, (x, y), **grid)
    distributed = kq.evaluate(models, (x, y), executor="ray", **grid)
    assert distributed.accuracy == local.accuracy  # bit for bit: the same seeds, CPU kernels
    pgd = local.accuracy["tiny"]["pgd"]
    assert pgd[0] > pgd[-1]  # the attacks did something (not an all-clean grid)


def test_autoattack_shards_on_ray_equal_local(local_ray, tiny_case, tmp_path):
    """AutoAttack over shards of the test inputs: one task per shard, the same numbers on Ray;
    the UAP cell stays whole (its perturbation is crafted on all inputs)."""
    model = kq.load_model(tiny_case[0])
    data = np.load(tiny_case[1])
    x, y = data["x_test"][:40], data["y_test"][:40]
    grid = dict(attacks=["autoattack", "uap"], eps=[0.0, 0.1], seed=1, options={"autoattack": {"version": "fast"}},
                verbose=0)
    local = kq.evaluate({"tiny": model}, (x, y), shard_size=16, folder=tmp_path, **grid)
    assert len(list(tmp_path.glob("*.json"))) == 3 + 1  # AutoAttack: 16 + 16 + 8 inputs; UAP: one task
    distributed = kq.evaluate({"tiny": model}, (x, y), shard_size=16, executor="ray", **grid)
    assert distributed.accuracy == local.accuracy
    whole = kq.evaluate({"tiny": model}, (x, y), **grid)
    assert whole.accuracy["tiny"]["uap"] == local.accuracy["tiny"]["uap"]
    robust = local.accuracy["tiny"]["autoattack"]
    assert robust[1] < robust[0] and (robust[1] * 40).is_integer()
    with pytest.raises(ValueError, match="shard_size must be a positive integer"):
        kq.evaluate({"tiny": model}, (x, y), shard_size=0, **grid)


def test_transfer_matrix_on_ray_equals_local_and_a_rerun_crafts_only_missing_rows(local_ray, tiny_case, tmp_path,
                                                                                   monkeypatch):
    """The UAP transfer matrix: one task per crafting model; Ray gives the local matrix and
    perturbations exactly; with ``folder`` a rerun reuses the kept rows."""
    model = kq.load_model(tiny_case[0])
    data = np.load(tiny_case[1])
    quantized = kq.RobustQuantizer.from_setting("w4a4").quantize(model, data["x_train"][:100])
    models = {"tiny": model, "tiny w4a4": quantized}
    args = (models, data["x_train"][:64], data["x_test"][:48], data["y_test"][:48])
    settings = dict(eps=0.15, seed=2, verbose=0, max_passes=2)
    local = kq.attacks.uap_transfer_matrix(*args, **settings)
    distributed = kq.attacks.uap_transfer_matrix(*args, executor="ray", folder=tmp_path, **settings)
    np.testing.assert_array_equal(distributed.accuracy, local.accuracy)
    np.testing.assert_array_equal(distributed.fooling_rate, local.fooling_rate)
    for name in models:
        np.testing.assert_array_equal(distributed.perturbations[name], local.perturbations[name])
    assert local.accuracy[0, 0] < local.clean_accuracy[0]  # the UAP did something
    kept = sorted(tmp_path.glob("*.json"))
    assert len(kept) == 2
    kept[1].unlink()
    uap_module = sys.modules["keras_qrobust.attacks.uap.transfer"]  # where the matrix rows call `uap`
    crafted = []
    original = uap_module.uap
    monkeypatch.setattr(uap_module, "uap", lambda model, *a, **k: crafted.append(model) or original(model, *a, **k))
    rerun = kq.attacks.uap_transfer_matrix(*args, folder=tmp_path, **settings)
    np.testing.assert_array_equal(rerun.accuracy, local.accuracy)
    assert len(crafted) == 1 and len(list(tmp_path.glob("*.json"))) == 2
    with pytest.raises(ValueError, match="executor must be one of"):
        kq.attacks.uap_transfer_matrix(*args, executor="spark", **settings)


def _dies_once(shared, marker: str, value: int) -> int:
    """Kills its worker process the first time it runs for ``marker``, then succeeds."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died")
        os._exit(1)
    return value * shared["factor"]


def test_a_lost_worker_is_retried(local_ray, tmp_path):
    tasks = {f"task {i}": (str(tmp_path / f"marker{i}"), i) for i in range(3)}
    results = run_tasks(_dies_once, tasks, shared={"factor": 10}, executor="ray", max_retries=2)
    assert results == {"task 0": 0, "task 1": 10, "task 2": 20}
    assert all((tmp_path / f"marker{i}").read_text() == "died" for i in range(3))  # each worker died once


def _square(shared, value: int) -> int:
    return value * value


def _must_not_run(shared, value: int) -> int:
    raise AssertionError("a finished task ran again")


def test_finished_results_are_kept_and_skipped(tmp_path):
    tasks = {"a": (2,), "b": (3,)}
    assert run_tasks(_square, tasks, folder=tmp_path) == {"a": 4, "b": 9}
    assert len(list(tmp_path.glob("*.json"))) == 2
    assert run_tasks(_must_not_run, tasks, folder=tmp_path) == {"a": 4, "b": 9}
    seen = []
    run_tasks(_square, {**tasks, "c": (4,)}, folder=tmp_path, on_result=lambda k, r: seen.append((k, r)))
    assert sorted(seen) == [("a", 4), ("b", 9), ("c", 16)]


def _threads(shared, value: int) -> list:
    from keras_qrobust._keras import tf

    total = float(tf.reduce_sum(tf.ones((64, 64))))  # TensorFlow running in this worker
    return [tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(), total]


def test_a_ray_task_uses_the_cpus_it_reserved(local_ray):
    """Without pinning, TensorFlow in each worker would use every core of the node."""
    results = run_tasks(_threads, {f"task {i}": (i,) for i in range(4)}, executor="ray")
    assert all(r == [1, 1, 4096.0] for r in results.values()), results
    with pytest.raises(ValueError, match="cpus_per_task must be a positive integer"):
        run_tasks(_threads, {"a": (1,)}, executor="ray", cpus_per_task=0)


def test_ray_missing_is_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(ImportError, match=r"pip install 'keras-qrobust\[ray\]'"):
        run_tasks(_square, {"a": (2,)}, executor="ray")
    with pytest.raises(ValueError, match="executor must be one of local, ray"):
        run_tasks(_square, {"a": (2,)}, executor="dask")


def test_cli_evaluate_on_ray(local_ray, tiny_case, tmp_path, monkeypatch, capsys):
    from keras_qrobust import cli

    model_file, data_file = tiny_case
    base = ["evaluate", "--model", str(model_file), "--dataset", str(data_file), "--attacks", "fgsm",
            "--eps", "0,0.1", "--test-samples", "40"]
    assert cli.main([*base, "--out", str(tmp_path / "local")]) == 0
    assert cli.main([*base, "--ray", "--out", str(tmp_path / "ray")]) == 0
    local, distributed = (json.loads((tmp_path / f / "report.json").read_text()) for f in ("local", "ray"))
    assert distributed["accuracy"] == local["accuracy"]
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "ray", None)
    assert cli.main([*base, "--ray", "auto", "--out", str(tmp_path / "none")]) == 2
    assert "--ray needs Ray: pip install 'keras-qrobust[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_guard_attack_stage_on_ray_equals_the_local_run(local_ray, guard_runs, tmp_path):
    """guard's attack stage with its per-model tasks on Ray (a copy of the uninterrupted local
    run's folder, its trained and quantized models) gives that run's attack summary and
    attacks.npz exactly."""
    import shutil

    from _guard_runs import guard_args

    from keras_qrobust import cli
    from keras_qrobust.guard import GuardConfig
    from keras_qrobust.guard.attacking import attack_stage
    from keras_qrobust.guard.context import Context
    from keras_qrobust.inputs import load_data
    from keras_qrobust.guard.pipeline import _inputs
    from keras_qrobust.guard.state import open_state

    folder = tmp_path / "run"
    shutil.copytree(guard_runs["straight"], folder)
    local_attacks = dict(np.load(folder / "attacks.npz"))
    args = cli._build_parser().parse_args(guard_args(guard_runs["model"], guard_runs["data"], folder))
    config = GuardConfig.from_args(args)
    state = open_state(folder, config, _inputs(config))
    data = load_data(config.dataset, config.train_samples, config.test_samples)
    artifacts, summary = attack_stage(Context(config, data, state, executor="ray"))
    assert json.loads(json.dumps(summary)) == state.summary("attack")
    distributed = dict(np.load(folder / artifacts["attacks"]))
    assert distributed.keys() == local_attacks.keys()
    for key, value in local_attacks.items():
        np.testing.assert_array_equal(distributed[key], value, err_msg=key)

"""The execution interface: local and Ray give the same numbers; lost workers are retried;
finished results are kept and skipped; Ray missing is a one-line install hint."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust.executor import INSTALL_HINT, run_tasks

ray = pytest.importorskip("ray", reason=f"the Ray executor needs Ray: {INSTALL_HINT}")


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance on this machine with 2 CPUs and no dashboard (no network)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}})
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # tests/ is not importable in workers
    yield
    ray.shutdown()


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


def test_ray_missing_is_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(ImportError, match=r"pip install 'keras-qrobust\[ray\]'"):
        run_tasks(_square, {"a": (2,)}, executor="ray")
    with pytest.raises(ValueError, match="executor must be one of local, ray"):
        run_tasks(_square, {"a": (2,)}, executor="dask")


def test_cli_evaluate_on_ray(local_ray, tiny_case, tmp_path, monkeypatch, capsys):
    import json

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


def test_guard_on_ray_writes_the_local_report(guard_runs, tmp_path):
    """The same guard command with --ray (each model's PGD, UAP and AutoAttack as Ray tasks, in a
    Ray instance the run starts) writes the uninterrupted local run's report byte for byte."""
    from _guard_runs import finish, guard_args, start_guard

    folder = tmp_path / "ray"
    run = finish(start_guard(guard_args(guard_runs["model"], guard_runs["data"], folder, "--ray")))
    assert run.returncode == 0, run.stderr[-2000:]
    for name in ("report.json", "report.md"):
        assert (folder / name).read_bytes() == (guard_runs["straight"] / name).read_bytes(), name

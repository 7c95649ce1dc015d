"""The bit-width search on the execution interface: every candidate is a task; Ray gives the local
run's rows; kept rows are skipped on resume; a callable attack Ray cannot import is refused in
one line."""

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust.analysis import bit_width_search as search_module
from keras_qrobust.executor import INSTALL_HINT

pytest.importorskip("ray", reason=f"the Ray executor needs Ray: {INSTALL_HINT}")

CANDIDATES = ["w8a8", "w4a4", "w2a2"]


@pytest.fixture(scope="module")
def case(tiny_case):
    model_file, data_file = tiny_case
    data = np.load(data_file)
    return kq.load_model(model_file), (data["x_test"][:40], data["y_test"][:40]), data["x_train"][:100]


def _table(result):
    return result.best, [(r.setting, r.natural, r.adversarial, r.above_floor) for r in result.rows]


def test_search_on_ray_equals_local_and_a_rerun_skips_kept_rows(local_ray, case, tmp_path, monkeypatch):
    model, data, samples = case
    rq = kq.RobustQuantizer()
    grid = dict(candidates=CANDIDATES, attack="pgd", eps=0.1, natural_floor=0.3, samples=samples, seed=3, verbose=0)
    local = kq.analysis.search(rq, model, data, **grid)
    distributed = kq.analysis.search(rq, model, data, executor="ray", folder=tmp_path, **grid)
    assert _table(distributed) == _table(local)  # bit for bit: same seed, CPU kernels
    assert any(r.adversarial < r.natural for r in local.rows)  # the attack did something
    kept = sorted(tmp_path.glob("*.json"))
    assert len(kept) == len(CANDIDATES)
    kept[0].unlink()  # as if the run had stopped before that candidate finished
    stamps = {p: p.stat().st_mtime_ns for p in kept[1:]}
    calls = []
    original = search_module.evaluate_setting
    monkeypatch.setattr(search_module, "evaluate_setting", lambda q, *a: calls.append(q.setting) or original(q, *a))
    resumed = kq.analysis.search(rq, model, data, folder=tmp_path, **grid)  # the rerun here, in this process
    assert len(calls) == 1 and _table(resumed) == _table(local)
    assert {p: p.stat().st_mtime_ns for p in kept[1:]} == stamps  # the kept rows were only read
    strict = kq.analysis.search(rq, model, data, folder=tmp_path, **{**grid, "natural_floor": 0.99})
    assert len(calls) == 1 and strict.best is None  # the floor is applied to the kept rows, not keyed
    assert [r.natural for r in strict.rows] == [r.natural for r in local.rows]
    calls.clear()
    kq.analysis.search(rq, model, data, folder=tmp_path, **{**grid, "candidates": CANDIDATES[:1], "seed": 4})
    assert calls == CANDIDATES[:1]  # another seed is another key: the kept row is not reused


def test_a_module_level_attack_is_sent_by_reference_and_a_lambda_is_refused(local_ray, case, tmp_path):
    model, data, samples = case
    rq = kq.RobustQuantizer()
    grid = dict(candidates=CANDIDATES[:2], eps=0.1, samples=samples, verbose=0)
    local = kq.analysis.search(rq, model, data, attack=kq.attacks.fgsm, **grid)
    assert _table(kq.analysis.search(rq, model, data, attack=kq.attacks.fgsm, executor="ray", **grid)) == _table(local)
    for where in (dict(executor="ray"), dict(folder=tmp_path)):
        with pytest.raises(ValueError, match="pass a registry name") as error:
            kq.analysis.search(rq, model, data, attack=lambda m, x, y, eps: x, **grid, **where)
        assert "\n" not in str(error.value) and "<lambda>" in str(error.value)
    assert not list(tmp_path.iterdir())  # refused before anything ran

"""Zhou 2022 Algorithm 1: robustness-driven bit-width search."""

import numpy as np
import pytest

import keras_qrobust as kq


def test_wxay_grid():
    assert kq.wxay_grid(2, 8) == ["w8a8", "w7a7", "w6a6", "w5a5", "w4a4", "w3a3", "w2a2"]
    assert kq.wxay_grid(3, 4, equal=False) == ["w4a4", "w4a3", "w3a4", "w3a3"]
    with pytest.raises(ValueError, match="low"):
        kq.wxay_grid(5, 2)


def only_survives(setting):
    """An 'attack' that leaves the model built for ``setting`` alone and blanks every other input."""
    def attack(model, x, y, eps):
        return x if model.name.endswith(setting) else np.zeros_like(x)
    return attack


def test_search_picks_the_best_adversarial_setting_above_the_floor(fashion_slice, trained_cnn):
    (x_train, _), (x, y) = fashion_slice
    rq = kq.RobustQuantizer()
    candidates = ["w8a8", "w4a4", "w2a2"]
    result = kq.analysis.search(rq, trained_cnn, (x, y), candidates, attack=only_survives("w4a4"), eps=0.1,
                                samples=x_train[:256], verbose=0)
    rows = {row.setting: row for row in result.rows}
    assert list(rows) == candidates
    assert rows["w4a4"].adversarial == pytest.approx(rows["w4a4"].natural)
    assert rows["w8a8"].adversarial < rows["w8a8"].natural
    assert result.best == "w4a4" and result.best_bits == (4, 4)
    # a floor above w4a4's natural accuracy rules it out: the best of the rest wins
    floor = rows["w4a4"].natural + 1e-6
    result = kq.analysis.search(rq, trained_cnn, (x, y), candidates, attack=only_survives("w4a4"), natural_floor=floor,
                       samples=x_train[:256], verbose=0)
    eligible = [r for r in result.rows if r.natural > floor]
    assert result.best == (max(eligible, key=lambda r: r.adversarial).setting if eligible else None)
    assert "w4a4" != result.best
    # nothing above a floor of 99.99%
    result = kq.analysis.search(rq, trained_cnn, (x, y), candidates, attack="fgsm", natural_floor=0.9999,
                                samples=x_train[:256], verbose=0)
    assert result.best is None and result.best_bits == (None, None)
    assert "none above the floor" in result.to_markdown()


def test_search_with_a_real_attack_scores_below_natural(fashion_slice, trained_cnn):
    (x_train, _), (x, y) = fashion_slice
    result = kq.analysis.search(kq.RobustQuantizer(), trained_cnn, (x[:200], y[:200]), ["w8a8", "w4a4"],
                                attack="fgsm", eps=0.1, samples=x_train[:256], verbose=0)
    for row in result.rows:
        assert row.adversarial < row.natural
    assert result.best in ("w8a8", "w4a4")
    assert result.to_dict()["rows"][0]["setting"] == "w8a8"


def test_search_rejects_bad_input(fashion_slice, trained_cnn):
    _, (x, y) = fashion_slice
    rq = kq.RobustQuantizer()
    with pytest.raises(ValueError, match="attack"):
        kq.analysis.search(rq, trained_cnn, (x, y), ["w8a8"], attack="cw", verbose=0)
    with pytest.raises(ValueError, match="wXaY"):
        kq.analysis.search(rq, trained_cnn, (x, y), ["8bit"], verbose=0)
    with pytest.raises(ValueError, match="natural_floor"):
        kq.analysis.search(rq, trained_cnn, (x, y), ["w8a8"], natural_floor=85, verbose=0)
    with pytest.raises(ValueError, match="labels"):
        kq.analysis.search(rq, trained_cnn, (x, y[:10]), ["w8a8"], verbose=0)
    with pytest.raises(ValueError, match="empty"):
        kq.analysis.search(rq, trained_cnn, (x, y), [], verbose=0)

import numpy as np
import pytest
from scipy import stats

import keras_qrobust as kq
from keras_qrobust.paired import mcnemar_exact_p, paired_difference


@pytest.mark.parametrize("only_a, only_b", [(0, 0), (10, 0), (5, 5), (30, 12), (3, 17), (400, 350)])
def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_inputs(only_a, only_b):
    expected = 1.0 if only_a + only_b == 0 else stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert mcnemar_exact_p(only_a, only_b) == pytest.approx(expected, rel=1e-9)


def test_counts_difference_and_verdict():
    a = np.array([1, 1, 1, 0, 0, 1, 1, 0], bool)
    b = np.array([1, 0, 0, 0, 1, 1, 0, 0], bool)
    result = paired_difference(a, b)
    assert (result.n, result.only_a, result.only_b) == (8, 3, 1)
    assert result.difference == pytest.approx(5 / 8 - 3 / 8)
    low, high = result.interval95
    assert low < result.difference < high and not result.significant()
    assert "inside the noise" in str(result) and result.to_dict()["only_a"] == 3
    same = paired_difference(a, a)
    assert same.difference == 0 and same.p_value == 1.0 and same.interval95[0] <= 0 <= same.interval95[1]
    assert kq.paired.paired_difference is paired_difference


def test_a_consistent_lead_is_significant_where_unpaired_intervals_overlap():
    rng = np.random.default_rng(0)
    b = rng.random(1000) < 0.75
    a = b.copy()
    a[np.flatnonzero(~b)[:25]] = True  # A gets 25 more right and nothing less: 77.5% vs 75%
    result = paired_difference(a, b)
    unpaired_a, unpaired_b = kq.metrics.wilson_interval(a.sum(), 1000), kq.metrics.wilson_interval(b.sum(), 1000)
    assert unpaired_a[0] < unpaired_b[1]  # the separate intervals overlap
    assert result.significant() and result.interval95[0] > 0


def test_the_interval_covers_the_true_difference_95_percent_of_the_time():
    # both right 70%, only A 6%, only B 4%, neither 20%: true difference +2 points
    rng = np.random.default_rng(1)
    cells = np.array([0.70, 0.06, 0.04, 0.20])
    covered, runs = 0, 2000
    for _ in range(runs):
        kind = rng.choice(4, size=500, p=cells)
        low, high = paired_difference(np.isin(kind, (0, 1)), np.isin(kind, (0, 2))).interval95
        covered += low <= 0.02 <= high
    assert 0.935 <= covered / runs <= 0.97, covered / runs


@pytest.mark.parametrize("a, b, match", [
    ([1, 0], [1, 0, 1], "score the same inputs"),
    ([[1, 0]], [[1, 0]], "1-D array"),
    ([], [], "non-empty"),
    ([0.5, 1], [1, 1], "booleans"),
])
def test_bad_outcomes(a, b, match):
    with pytest.raises(ValueError, match=match):
        paired_difference(a, b)

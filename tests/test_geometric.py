"""Gorsline 2021 geometric model and critical attack strength."""

import math

import numpy as np
import pytest

import keras_qrobust as kq

a = kq.analysis


@pytest.mark.parametrize("n,q", [(2, 2), (4, 3), (5, 1), (784, 4)])
def test_simplex_height_is_n_volume_over_surface(n, q):
    s = math.sqrt(n) * 2.0 ** (-q)
    volume = s**n / math.factorial(n) * math.sqrt((n + 1) / 2**n) if n < 100 else None  # eq. 5
    surface = (n + 1) * s ** (n - 1) / math.factorial(n - 1) * math.sqrt(n / 2 ** (n - 1)) if n < 100 else None
    h = a.simplex_height(n, q)
    if volume is not None:
        assert h == pytest.approx(n * volume / surface, rel=1e-12)
    assert h == pytest.approx(s / math.sqrt(2 * n * (n + 1)), rel=1e-12)
    assert a.mean_boundary_distance(n, q) == pytest.approx(h / (n + 1), rel=1e-12)


def test_eq8_approximates_the_mean_distance_for_large_n():
    for q in (1, 4, 8):
        exact, approx = a.mean_boundary_distance(784, q), a.mean_boundary_distance_approx(784, q)
        assert approx == pytest.approx(exact, rel=0.01)
    assert a.mean_boundary_distance_approx(2, 2) != pytest.approx(a.mean_boundary_distance(2, 2), rel=0.01)


def test_bound_matches_the_closed_form_and_is_a_distribution():
    n, q = 4, 3
    h = a.simplex_height(n, q)
    eps = np.linspace(0, 1.5 * h, 301)
    bound = a.geometric_lower_bound(eps, n, q)
    expected = np.where(eps < h, (1 - eps / h) ** n, 0.0)  # 1 − F(ε), eq. 13-14
    np.testing.assert_allclose(bound, expected, atol=1e-12)
    assert bound[0] == 1.0 and np.all(np.diff(bound) <= 1e-15)
    # F is the integral of f(ε) = n(h − ε)^(n−1)/h^n (eq. 12)
    f = n * (h - eps[eps < h]) ** (n - 1) / h**n
    integral = np.concatenate([[0.0], np.cumsum((f[1:] + f[:-1]) / 2 * np.diff(eps[eps < h]))])
    np.testing.assert_allclose(a.boundary_distance_cdf(eps[eps < h], n, q), integral, atol=1e-4)
    # the mean of f is h/(n + 1) (eq. 9)
    grid = np.linspace(0, h, 200001)
    density = n * (h - grid) ** (n - 1) / h**n
    assert np.trapezoid(grid * density, grid) == pytest.approx(a.mean_boundary_distance(n, q), rel=1e-6)


def test_bound_is_stable_for_image_sized_n_and_rejects_bad_input():
    bound = a.geometric_lower_bound([0.0, 1e-6, 1e-4], 784, 8)
    assert bound[0] == 1.0 and 0.0 <= bound[2] < bound[1] < 1.0
    with pytest.raises(ValueError, match="eps"):
        a.geometric_lower_bound([-0.1], 4, 3)
    with pytest.raises(ValueError, match="n"):
        a.geometric_lower_bound([0.1], 0, 3)


def test_fit_recovers_the_dimension_of_a_synthetic_curve():
    q = 2
    eps = np.linspace(0, 0.2, 41)
    measured = a.geometric_lower_bound(eps, 12.0, q)
    fit = a.fit_geometric_bound(eps, measured, q)
    assert fit.n == pytest.approx(12.0, rel=0.02) and fit.rmse < 1e-3
    higher = np.minimum(measured + 0.1, 1.0)
    assert a.fit_geometric_bound(eps, higher, q).n < fit.n  # a gentler decline fits a smaller n


def test_critical_attack_strength_is_where_the_bits_agree():
    eps = np.array([0.0, 0.05, 0.1, 0.15, 0.2])
    table = {1: [0.70, 0.55, 0.40, 0.20, 0.00],
             4: [0.85, 0.60, 0.41, 0.10, 0.00],
             8: [0.90, 0.62, 0.39, 0.05, 0.00]}
    assert a.critical_attack_strength(table, eps).eps == 0.1
    assert a.critical_attack_strength(table, eps, min_mean_accuracy=-1.0).eps == 0.2  # all at 0: trivially equal
    assert a.critical_attack_strength(np.array(list(table.values())), eps).eps == 0.1
    with pytest.raises(ValueError, match="bit widths"):
        a.critical_attack_strength({1: [0.5, 0.4]}, [0.0, 0.1])

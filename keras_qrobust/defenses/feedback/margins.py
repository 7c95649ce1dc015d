"""Feedback learning, steps 1 and 2: the distance to the decision boundary along random
directions and the per-class margins (Song, Wang & Li 2019; docs/methods.md).

For each ``(x, y)`` and ``K`` random unit directions ``d`` (random signs for L∞, normalised
Gaussians for L2), ``r(x, d) = min {t ≤ t_max : argmax f(clip(x + t·d)) ≠ y}``, found on a grid
of 20 steps and refined by 10 bisection steps; ``r = t_max`` when nothing flips. The per-class
mean ``r̄_c`` over the correct examples of class ``c`` is the margin criterion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from ..._keras import tf
from ...attacks._common import (
    AttackModel,
    batches,
    check_count,
    check_inputs,
    check_norm,
    check_positive,
    clip_key,
    compiled,
    to_box,
)
from .._common import Clip, attack_model_of, seed_or_entropy

__all__ = ["BoundaryDistances", "boundary_distance", "class_margins"]


# ----------------------------------------------------------------------------- directions
def _random_directions(seed: int, index: np.ndarray, count: int, shape: tuple, norm: str) -> np.ndarray:
    """``d_ik`` for the examples ``index``: ``(len(index), count, *shape)``, unit ``norm``.

    Each example draws from its own stream ``(seed, 0, i)``, so the directions of example
    ``i`` do not depend on the batching and can be drawn again for any subset.
    """
    size = (count, int(np.prod(shape)))
    out = np.empty((len(index), *size), np.float32)
    for row, i in enumerate(index):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, int(i))))
        if norm == "inf":
            out[row] = rng.integers(0, 2, size, dtype=np.int8) * 2 - 1
        else:
            gauss = rng.standard_normal(size)
            out[row] = gauss / np.linalg.norm(gauss, axis=1, keepdims=True)
    return out.reshape((len(index), count, *shape))


def _unit(directions: np.ndarray, norm: str) -> np.ndarray:
    """Scale each direction (rows of ``(N, K, ...)``) to unit ``norm``."""
    flat = directions.reshape(directions.shape[0], directions.shape[1], -1).astype(np.float64)
    size = np.abs(flat).max(-1) if norm == "inf" else np.linalg.norm(flat, axis=-1)
    if np.any(size == 0):
        raise ValueError("directions contain an all-zero direction; every direction needs a non-zero norm")
    return (flat / size[..., None]).reshape(directions.shape).astype(np.float32)


def _check_directions(directions, x: np.ndarray, norm: str) -> tuple[Optional[np.ndarray], int]:
    """``(given unit directions or None, K)`` from an int ``K`` or an ``(N, K, *input)`` array."""
    if isinstance(directions, (np.ndarray, list, tuple)):
        given = np.asarray(directions, np.float32)
        if given.ndim != x.ndim + 1 or given.shape[0] != len(x) or given.shape[2:] != x.shape[1:]:
            raise ValueError(
                f"directions has shape {given.shape}; give an int K or an array shaped "
                f"(N, K, {', '.join(map(str, x.shape[1:]))}) with N = {len(x)}"
            )
        if given.shape[1] == 0 or not np.all(np.isfinite(given)):
            raise ValueError("directions must hold at least one finite direction per input")
        return _unit(given, norm), given.shape[1]
    return None, check_count(directions, "directions")

# ----------------------------------------------------------------------------- boundary distance
@dataclass(frozen=True, eq=False)
class BoundaryDistances:
    """Distances to the decision boundary along random directions.

    Attributes:
        distances: ``(N, K)`` ``r(x_i, d_ik)``; ``t_max`` where no flip was found within
            ``t_max``, 0 for inputs the model already misclassifies.
        labels: ``(N,)`` the labels ``y``.
        correct: ``(N,)`` whether the model classifies ``x_i`` as ``y_i``.
        num_classes: classes of the model.
        norm: the direction norm.
        t_max: the search limit.
        input_shape: shape of one input.
        seed: the seed of the random directions (drawn from fresh entropy when none was given).
    """

    distances: np.ndarray
    labels: np.ndarray
    correct: np.ndarray
    num_classes: int
    norm: str
    t_max: float
    input_shape: tuple
    seed: int
    given: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def count(self) -> int:
        """``K``, directions per input."""
        return int(self.distances.shape[1])

    def directions(self, index=None) -> np.ndarray:
        """The unit directions ``d_ik`` of the inputs ``index`` (default all):
        ``(len(index), K, *input_shape)``."""
        index = np.arange(len(self.labels)) if index is None else np.asarray(index, np.int64).reshape(-1)
        if self.given is not None:
            return self.given[index]
        return _random_directions(self.seed, index, self.count, self.input_shape, self.norm)

    def class_margins(self) -> np.ndarray:
        """``r̄_c``: mean of ``r(x, d)`` over the correctly classified inputs of class ``c``
        and their directions, ``(num_classes,)``; NaN for a class without any."""
        margins = np.full(self.num_classes, np.nan)
        for c in range(self.num_classes):
            rows = self.correct & (self.labels == c)
            if rows.any():
                margins[c] = float(self.distances[rows].mean())
        return margins


def _search(model: AttackModel, x: tf.Tensor, d: tf.Tensor, y: tf.Tensor, t_max: tf.Tensor,
            clip: Optional[tuple], grid: int, bisection: int) -> tf.Tensor:
    """``r = min {t ≤ t_max : argmax f(clip(x + t·d)) ≠ y}`` per row, on a grid then by bisection.

    Grid ``t_j = t_max·j/grid``: the first flipping ``t_j`` brackets the boundary in
    ``(t_{j−1}, t_j]``; ``bisection`` halvings then keep the upper end flipped and the lower
    end not, so the returned ``r`` always flips and lies within ``t_max/(grid·2^bisection)``
    above the first crossing the grid sees. 0 where ``x`` itself is misclassified, ``t_max``
    where nothing flips.
    """
    rank = x.shape.rank

    def flipped(t: tf.Tensor) -> tf.Tensor:
        point = to_box(x + tf.reshape(t, [-1] + [1] * (rank - 1)) * d, clip)
        return tf.not_equal(tf.argmax(model.logits(point), axis=-1), y)

    zeros = tf.zeros(tf.shape(y), tf.float32)
    wrong = flipped(zeros)
    width = t_max / grid

    def grid_step(j, hi, found):
        t = t_max * tf.cast(j, tf.float32) / grid
        hit = flipped(zeros + t) & ~found
        return j + 1, tf.where(hit, t, hi), found | hit

    _, hi, found = tf.while_loop(
        lambda j, hi, found: (j <= grid) & ~tf.reduce_all(found), grid_step,
        (tf.constant(1), tf.where(wrong, zeros, zeros + t_max), wrong))
    active = found & ~wrong

    def bisect(i, lo, hi):
        mid = (lo + hi) / 2.0
        hit = flipped(mid)
        return i + 1, tf.where(active & ~hit, mid, lo), tf.where(active & hit, mid, hi)

    _, _, hi = tf.while_loop(lambda i, lo, hi: (i < bisection) & tf.reduce_any(active), bisect,
                             (tf.constant(0), tf.where(active, hi - width, hi), hi))
    return hi


def _distance_fn(attack_model: AttackModel, clip: Optional[tuple], grid: int, bisection: int):
    """``run(x (B, ...), d (B, K, ...), y (B,), t_max) -> r (B, K)``, compiled once per model."""
    shape = attack_model.input_shape
    specs = [tf.TensorSpec((None, *shape), tf.float32), tf.TensorSpec((None, None, *shape), tf.float32),
             tf.TensorSpec((None,), tf.int64), tf.TensorSpec((), tf.float32)]

    def factory(get_model):
        @tf.function(input_signature=specs, autograph=False)
        def run(x, d, y, t_max):
            count = tf.shape(d)[1]
            points = tf.repeat(x, count, axis=0)
            r = _search(get_model(), points, tf.reshape(d, tf.shape(points)), tf.repeat(y, count), t_max,
                        clip, grid, bisection)
            return tf.reshape(r, (-1, count))

        return run

    return compiled(attack_model, ("boundary_distance", clip, grid, bisection), factory)


def boundary_distance(model, x, y, *, t_max: float, directions: Union[int, np.ndarray] = 8, norm="inf",
                      grid: int = 20, bisection: int = 10, clip: Clip = (0.0, 1.0), batch_size: int = 64,
                      seed: Optional[int] = None, output: str = "auto") -> BoundaryDistances:
    """Distance from each ``(x_i, y_i)`` to the decision boundary along random directions.

    ``r(x, d) = min {t ≤ t_max : argmax f(clip(x + t·d)) ≠ y}`` (Song et al. 2019; docs/methods.md)
    for ``K = directions`` random unit directions per input: random signs ``d ∈ {−1, 1}^D``
    (``‖d‖∞ = 1``) for ``norm="inf"``, normalised Gaussians (``‖d‖₂ = 1``) for ``norm="2"``,
    drawn per input from ``seed``. ``r`` is located on a ``grid`` of steps ``t_max/grid`` and
    refined by ``bisection`` halvings (resolution ``t_max/(grid·2^bisection)``, see
    :func:`_search`); ``r = t_max`` when nothing flips, ``r = 0`` for misclassified inputs.

    Args:
        model: a tf_keras classifier (an AdversarialModel is read through its wrapped model).
        x: inputs in ``clip``.
        y: their integer labels.
        t_max: the largest distance searched (in the units of ``norm``).
        directions: ``K``, or your own directions as an ``(N, K, *input_shape)`` array
            (each scaled to unit ``norm``).
        batch_size: inputs per compiled call (``batch_size·K`` model inputs).

    Returns:
        a :class:`BoundaryDistances`.
    """
    attack_model = attack_model_of(model, output)
    t_max = check_positive(t_max, "t_max")
    norm = check_norm(norm)
    grid = check_count(grid, "grid")
    bisection = check_count(bisection, "bisection", minimum=0)
    batch_size = check_count(batch_size, "batch_size")
    x, y = check_inputs(attack_model, x, y, clip, require_labels=True)
    given, count = _check_directions(directions, x, norm)
    seed = seed_or_entropy(seed)
    run = _distance_fn(attack_model, clip_key(clip), grid, bisection)
    limit = tf.constant(t_max, tf.float32)
    parts = []
    for part in batches(len(x), batch_size):
        d = given[part] if given is not None else _random_directions(
            seed, np.arange(part.start, part.stop), count, attack_model.input_shape, norm)
        parts.append(run(tf.constant(x[part]), tf.constant(d), tf.constant(y[part]), limit).numpy())
    distances = np.concatenate(parts)
    # r > 0 along every direction exactly when the clean input is classified as y
    return BoundaryDistances(distances, y, distances[:, 0] > 0, attack_model.num_classes, norm, t_max,
                             attack_model.input_shape, seed, given)


def class_margins(model, x, y, *, t_max: float, **kwargs) -> np.ndarray:
    """Per-class margin ``r̄_c`` (``(num_classes,)``, NaN for a class with no correctly
    classified input): :meth:`BoundaryDistances.class_margins` of :func:`boundary_distance`,
    whose keyword arguments (``directions``, ``norm``, ``grid``, ``bisection``, ``seed`` ...)
    it takes."""
    return boundary_distance(model, x, y, t_max=t_max, **kwargs).class_margins()

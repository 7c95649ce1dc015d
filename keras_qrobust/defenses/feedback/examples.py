"""Feedback learning, step 3: examples just past the decision boundary, most for the classes
with the smallest margin (Song, Wang & Li 2019; docs/methods.md).

``x' = clip(x + min((1 + γ)·r, t_max)·d)`` labelled ``y`` (``γ = 0.1``), ``0.5·N`` examples in
all, class ``c`` getting a share ``∝ 1/r̄_c``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Union

import numpy as np

from ...attacks._common import check_eps, check_positive, clip_key
from .._common import Clip
from .margins import BoundaryDistances, boundary_distance

__all__ = ["FeedbackExamples", "examples_from_distances", "feedback_counts", "generate_feedback_examples"]

_CHUNK = 1024  # examples whose directions are regenerated at once when generating


@dataclass(frozen=True, eq=False)
class FeedbackExamples:
    """Generated examples ``x' = clip(x + min((1 + γ)·r, t_max)·d)`` labelled ``y``.

    Attributes:
        x: the examples.
        y: their labels (the labels of their sources).
        source: index of the original input of each example.
        direction: which of the source's ``K`` directions it moved along.
        step: ``min((1 + γ)·r, t_max)``, how far it moved.
        counts: examples per class (``∝ 1/r̄_c``).
        distances: the :class:`BoundaryDistances` they were made from.
    """

    x: np.ndarray
    y: np.ndarray
    source: np.ndarray
    direction: np.ndarray
    step: np.ndarray
    counts: np.ndarray
    distances: BoundaryDistances

    @property
    def margins(self) -> np.ndarray:
        """``r̄_c`` measured before generating."""
        return self.distances.class_margins()


def feedback_counts(margins: np.ndarray, total: int) -> np.ndarray:
    """Examples per class: ``n_c ∝ 1/r̄_c`` with ``Σ n_c = total`` (largest remainder
    rounding); 0 for classes whose margin is NaN (no correctly classified input)."""
    margins = np.asarray(margins, np.float64)
    measured = np.isfinite(margins)
    if not measured.any():
        raise ValueError(
            "the model classifies none of the given inputs correctly, so there is no margin to "
            "widen: train it first, or give it inputs it gets right"
        )
    weights = np.where(measured, 1.0 / np.where(measured, margins, 1.0), 0.0)
    share = total * weights / weights.sum()
    counts = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def _pick_pairs(result: BoundaryDistances, counts: np.ndarray, rng: np.random.Generator) -> tuple:
    """``counts[c]`` (input, direction) pairs of correctly classified class-``c`` inputs,
    without replacement while there are enough, sorted by input."""
    sources, directions = [], []
    for c in np.flatnonzero(counts):
        inputs = np.flatnonzero(result.correct & (result.labels == c))
        pairs = len(inputs) * result.count
        pick = rng.choice(pairs, size=int(counts[c]), replace=int(counts[c]) > pairs)
        sources.append(inputs[pick // result.count])
        directions.append(pick % result.count)
    source, direction = np.concatenate(sources), np.concatenate(directions)
    order = np.argsort(source, kind="stable")
    return source[order], direction[order]


def _chunks(source: np.ndarray) -> Iterator[np.ndarray]:
    """Positions of ``source`` (sorted) split so each chunk spans at most ``_CHUNK`` inputs."""
    unique = np.unique(source)
    for start in range(0, len(unique), _CHUNK):
        inputs = unique[start: start + _CHUNK]
        yield np.flatnonzero((source >= inputs[0]) & (source <= inputs[-1]))


def examples_from_distances(result: BoundaryDistances, x, *, gamma: float = 0.1, fraction: float = 0.5,
                            clip: Clip = (0.0, 1.0), stream: int = 0) -> FeedbackExamples:
    """:func:`generate_feedback_examples` from distances already measured on ``x``.

    ``stream`` picks an independent draw of the (input, direction) pairs from ``result.seed``
    (one per feedback round).
    """
    x = np.asarray(x, np.float32)
    if len(x) != len(result.labels) or x.shape[1:] != tuple(result.input_shape):
        raise ValueError(f"x has shape {x.shape}; the distances were measured on {len(result.labels)} inputs "
                         f"shaped {tuple(result.input_shape)}")
    gamma, fraction, clip = check_eps(gamma, "gamma"), check_positive(fraction, "fraction"), clip_key(clip)
    counts = feedback_counts(result.class_margins(), max(1, int(round(fraction * len(x)))))
    rng = np.random.default_rng(np.random.SeedSequence(result.seed, spawn_key=(1, stream)))
    source, direction = _pick_pairs(result, counts, rng)
    step = np.minimum((1.0 + gamma) * result.distances[source, direction], result.t_max).astype(np.float32)
    generated = np.empty((len(source), *x.shape[1:]), np.float32)
    for rows in _chunks(source):
        inputs, position = np.unique(source[rows], return_inverse=True)
        d = result.directions(inputs)[position, direction[rows]]
        moved = x[source[rows]] + step[rows].reshape((-1,) + (1,) * (x.ndim - 1)) * d
        generated[rows] = moved if clip is None else np.clip(moved, clip[0], clip[1])
    return FeedbackExamples(generated, result.labels[source], source, direction, step, counts, result)


def generate_feedback_examples(model, x, y, *, t_max: float, directions: Union[int, np.ndarray] = 8,
                               norm="inf", gamma: float = 0.1, fraction: float = 0.5, grid: int = 20,
                               bisection: int = 10, clip: Clip = (0.0, 1.0), batch_size: int = 64,
                               seed: Optional[int] = None, output: str = "auto") -> FeedbackExamples:
    """Examples just past the decision boundary, most for the classes with the smallest margin.

    With ``r`` and ``d`` from :func:`boundary_distance` (same arguments) and ``r̄_c`` the
    class margins (docs/methods.md, after Song et al. 2019):

        x' = clip(x + min((1 + γ)·r, t_max)·d),  labelled y,

    ``round(fraction·N)`` examples in all, class ``c`` getting ``n_c ∝ 1/r̄_c`` of them
    (:func:`feedback_counts`), each from a correctly classified ``(x, d)`` pair of class ``c``
    drawn at random (without replacement while the class has enough pairs). Pairs with no
    flip within ``t_max`` give ``x + t_max·d``. Every ``x'`` stays within ``t_max`` of its
    source (in ``norm``) and inside ``clip``.

    Raises ValueError when the model gets none of ``x`` right.
    """
    check_eps(gamma, "gamma")
    check_positive(fraction, "fraction")
    result = boundary_distance(model, x, y, t_max=t_max, directions=directions, norm=norm, grid=grid,
                               bisection=bisection, clip=clip, batch_size=batch_size, seed=seed, output=output)
    return examples_from_distances(result, x, gamma=gamma, fraction=fraction, clip=clip)

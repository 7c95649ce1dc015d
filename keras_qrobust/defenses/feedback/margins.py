"""Feedback learning: widen the margins of the classes closest to the decision boundary.

Song, Wang & Li 2019, "Feedback learning for improving the robustness of neural networks";
the steps are DESIGN.md §3's:

1. For each correctly classified ``(x, y)`` and ``K`` random unit directions ``d`` (random
   signs for L∞, normalised Gaussians for L2), the boundary distance along ``d`` is
   ``r(x, d) = min {t ≤ t_max : argmax f(clip(x + t·d)) ≠ y}``, found on a grid of 20 steps
   and refined by 10 bisection steps; ``r = t_max`` when nothing flips.
2. The per-class mean ``r̄_c`` over the correct examples of class ``c`` is the margin
   criterion.
3. Generate ``x' = clip(x + min((1 + γ)·r, t_max)·d)`` labelled ``y`` (just past the boundary,
   ``γ = 0.1``), ``0.5·N`` examples in all, class ``c`` getting a share ``∝ 1/r̄_c``.
4. Fine-tune on the original plus generated examples, 5 epochs at 0.1× the learning rate;
   2 rounds.

:func:`feedback_learning` runs the whole loop; :class:`keras_qrobust.callbacks.FeedbackLearning`
does it inside ``model.fit``.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence, Union

import numpy as np

from .._keras import check_model, keras, tf
from ..attacks._common import (
    AttackModel,
    as_attack_model,
    batches,
    check_array,
    check_count,
    check_eps,
    check_inputs,
    check_norm,
    check_positive,
    clip_key,
    compiled,
    to_box,
)
from .adversarial import AdversarialModel

__all__ = [
    "BoundaryDistances",
    "FeedbackExamples",
    "FeedbackHistory",
    "boundary_distance",
    "class_margins",
    "feedback_counts",
    "generate_feedback_examples",
    "examples_from_distances",
    "feedback_learning",
]

Clip = Optional[Sequence[float]]
_CHUNK = 1024  # examples whose directions are regenerated at once when generating


# ----------------------------------------------------------------------------- helpers
def classifier_of(model) -> "keras.Model":
    """The classifier a model stands for: the wrapped model of an AdversarialModel."""
    model = check_model(model)
    return model.model if isinstance(model, AdversarialModel) else model


def _attack_model(model, output: str) -> AttackModel:
    return model if isinstance(model, AttackModel) else as_attack_model(classifier_of(model), output)


def check_data(data, name: str = "data", clip: Clip = (0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """``data = (x, y)`` as float32 inputs in ``clip`` and one int64 label per input
    (the checks that need no model)."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"{name} must be a tuple (x, y) of numpy arrays, got {type(data).__name__}")
    try:
        x = check_array(data[0], clip)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{name}: {error}") from None
    y = np.asarray(data[1])
    if y.ndim == 2 and y.shape[1] > 1:
        raise ValueError(f"{name}: y must be integer class labels, not one-hot: use y.argmax(-1)")
    y = y.reshape(-1)
    if len(y) != len(x):
        raise ValueError(f"{name}: x has {len(x)} inputs but y has {len(y)} labels")
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.mod(y, 1) == 0) or y.min() < 0:
        raise ValueError(f"{name}: y must hold integer class labels >= 0")
    return x, y.astype(np.int64)


def _seed(seed: Optional[int]) -> int:
    if seed is None:
        return int(np.random.SeedSequence().entropy)
    return check_count(seed, "seed", minimum=0)


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

    ``r(x, d) = min {t ≤ t_max : argmax f(clip(x + t·d)) ≠ y}`` (Song et al. 2019; DESIGN.md §3)
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
    attack_model = _attack_model(model, output)
    t_max = check_positive(t_max, "t_max")
    norm = check_norm(norm)
    grid = check_count(grid, "grid")
    bisection = check_count(bisection, "bisection", minimum=0)
    batch_size = check_count(batch_size, "batch_size")
    x, y = check_inputs(attack_model, x, y, clip, require_labels=True)
    given, count = _check_directions(directions, x, norm)
    seed = _seed(seed)
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


# ----------------------------------------------------------------------------- generation
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
    class margins (DESIGN.md §3, after Song et al. 2019):

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


# ----------------------------------------------------------------------------- retraining
def check_settable_learning_rate(optimizer, scale: float) -> None:
    """Raise unless ``optimizer``'s learning rate can be scaled by ``scale`` (a constant rate)."""
    if scale == 1.0:
        return
    raw = getattr(optimizer, "_learning_rate", None)
    if raw is None:  # legacy optimizers keep it among their hyperparameters
        raw = getattr(optimizer, "_hyper", {}).get("learning_rate")
    if isinstance(raw, keras.optimizers.schedules.LearningRateSchedule):
        raise ValueError(
            f"the optimizer's learning rate is a {type(raw).__name__} schedule, which cannot be "
            f"scaled by lr_scale={scale:g} for the fine-tune: compile with a constant learning "
            "rate (and keras.callbacks.LearningRateScheduler for a schedule) or pass lr_scale=1.0"
        )


@contextlib.contextmanager
def scaled_learning_rate(optimizer, scale: float) -> Iterator[None]:
    """Multiply the optimizer's constant learning rate by ``scale`` inside the block."""
    check_settable_learning_rate(optimizer, scale)
    if scale == 1.0:
        yield
        return
    original = float(keras.backend.get_value(optimizer.learning_rate))
    optimizer.learning_rate = original * scale
    try:
        yield
    finally:
        optimizer.learning_rate = original


def warn_uneven_batches(model, size: int, batch_size: int, who: str) -> None:
    """Warn when ``size`` examples in batches of ``batch_size`` do not split evenly over the
    replicas of the ``tf.distribute`` strategy ``model`` was built under.

    Keras's compiled loss divides each replica's mean loss by the number of replicas, which is
    the global-batch mean only when every replica gets as many examples: a batch of 33 on two
    replicas (17 + 16) weighs the examples of the smaller share more.
    """
    replicas = model.distribute_strategy.num_replicas_in_sync
    last = size % batch_size or batch_size
    if replicas > 1 and (batch_size % replicas or last % replicas):
        warnings.warn(
            f"{who}: the fine-tune's {size} examples in batches of {batch_size} (the last of {last}) do not "
            f"split evenly over the {replicas} replicas; Keras averages the replicas' mean losses with equal "
            "weights, so an uneven batch's gradient is not exactly that of its mean loss. Choose batch_size and "
            "the data size (plus round(fraction·N) generated examples) so that every batch is a multiple of "
            "the replicas", stacklevel=3)


def check_compiled(model, who: str) -> None:
    if getattr(model, "optimizer", None) is None or getattr(model, "compiled_loss", None) is None:
        raise ValueError(
            f"{who} fine-tunes the model, so it must be compiled first, e.g. "
            "kq.training.compile_classifier(model) or model.compile(optimizer, loss)"
        )


@dataclass
class FeedbackHistory:
    """What :func:`feedback_learning` did.

    Attributes:
        margins: per-class margins ``r̄_c``: before each round and after the last
            (``rounds + 1`` arrays ``(num_classes,)``; all measured along the same directions).
        counts: examples generated per class, per round.
        fit: the Keras ``History.history`` of each round's fine-tune.
    """

    margins: list = field(default_factory=list)
    counts: list = field(default_factory=list)
    fit: list = field(default_factory=list)

    @property
    def margin_mean(self) -> list:
        """Mean of the per-class margins (classes with a margin), per measurement."""
        return [float(np.nanmean(m)) for m in self.margins]


def feedback_learning(model, data, *, t_max: float, rounds: int = 2, epochs: int = 5, lr_scale: float = 0.1,
                      directions: int = 8, norm="inf", gamma: float = 0.1, fraction: float = 0.5,
                      batch_size: int = 32, grid: int = 20, bisection: int = 10, clip: Clip = (0.0, 1.0),
                      seed: Optional[int] = None, validation_data=None, verbose: int = 0) -> FeedbackHistory:
    """Feedback learning (Song et al. 2019; DESIGN.md §3): ``rounds`` times, measure the class
    margins on ``data``, generate ``fraction·N`` feedback examples
    (:func:`generate_feedback_examples`) and fine-tune ``model`` on ``data`` plus them for
    ``epochs`` epochs at ``lr_scale`` × its learning rate (restored afterwards).

    ``model`` must be compiled with a constant learning rate; an AdversarialModel fine-tunes
    adversarially (its ``train_step``) and is measured through its wrapped classifier. Every
    measurement uses the same directions (``seed``), so the margins of successive rounds are
    paired; each round draws its own examples. Shuffling during ``fit`` follows TensorFlow's
    global seed (:func:`keras_qrobust.training.set_seed`).

    Under a ``tf.distribute`` strategy (``model`` built and compiled inside its scope) the
    margins are measured with the mirrored weights and ``fit`` splits each fine-tune batch
    (``batch_size`` is the global batch) over the replicas; a warning says when a batch does not
    split evenly (see :func:`warn_uneven_batches`).

    Returns:
        a :class:`FeedbackHistory` (margins before each round and after the last, counts,
        fit histories).
    """
    check_compiled(model, "feedback_learning")
    rounds = check_count(rounds, "rounds")
    epochs = check_count(epochs, "epochs")
    lr_scale = check_positive(lr_scale, "lr_scale")
    check_settable_learning_rate(model.optimizer, lr_scale)
    gamma, fraction = check_eps(gamma, "gamma"), check_positive(fraction, "fraction")
    attack_model = _attack_model(model, "auto")
    x, y = check_inputs(attack_model, *check_data(data, "data", clip), clip, require_labels=True)
    options = dict(t_max=t_max, directions=directions, norm=norm, grid=grid, bisection=bisection, clip=clip,
                   seed=_seed(seed))
    history = FeedbackHistory()
    for round_index in range(rounds):
        result = boundary_distance(attack_model, x, y, **options)
        generated = examples_from_distances(result, x, gamma=gamma, fraction=fraction, clip=clip, stream=round_index)
        history.margins.append(result.class_margins())
        history.counts.append(generated.counts)
        warn_uneven_batches(model, len(x) + len(generated.y), batch_size, "feedback_learning")
        with scaled_learning_rate(model.optimizer, lr_scale):
            fit = model.fit(np.concatenate([x, generated.x]), np.concatenate([y, generated.y]), epochs=epochs,
                            batch_size=batch_size, shuffle=True, validation_data=validation_data, verbose=verbose)
        history.fit.append(fit.history)
    history.margins.append(class_margins(attack_model, x, y, **options))
    return history

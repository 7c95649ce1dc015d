"""Feedback learning, step 4 and the whole loop: fine-tune on the original plus the generated
examples, 5 epochs at 0.1× the learning rate; 2 rounds (Song, Wang & Li 2019; docs/methods.md).

:func:`fine_tune` is the one fine-tune, run by :func:`feedback_learning` and by the
:class:`~keras_qrobust.defenses.FeedbackLearning` callback.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np

from ..._keras import keras
from ...attacks._common import batches, check_count, check_eps, check_inputs, check_positive
from .._common import Clip, attack_model_of, check_data, seed_or_entropy
from .examples import FeedbackExamples, examples_from_distances
from .margins import boundary_distance, class_margins

__all__ = [
    "FeedbackHistory",
    "check_compiled",
    "check_settable_learning_rate",
    "feedback_learning",
    "fine_tune",
    "scaled_learning_rate",
    "warn_uneven_batches",
]


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
            "the replicas", stacklevel=4)  # the caller of fine_tune's caller


def check_compiled(model, who: str) -> None:
    """Raise unless ``model`` has an optimizer and a loss to fine-tune with."""
    if getattr(model, "optimizer", None) is None or getattr(model, "compiled_loss", None) is None:
        raise ValueError(
            f"{who} fine-tunes the model, so it must be compiled first, e.g. "
            "kq.defenses.compile_classifier(model) or model.compile(optimizer, loss)"
        )


def fine_tune(model, data: tuple, examples: FeedbackExamples, *, epochs: int, batch_size: int,
              lr_scale: float, seed: int, stream: int = 0, who: str = "fine_tune", validation_data=None,
              verbose: int = 0) -> dict:
    """Train ``model`` on ``data = (x, y)`` plus the generated ``examples`` for ``epochs``
    passes at ``lr_scale`` × its learning rate (restored afterwards), each pass in a random
    order drawn from ``seed`` (``stream``: an independent draw, one per feedback round).

    The batches go through ``model.train_on_batch``, not ``model.fit``: the
    :class:`~keras_qrobust.defenses.FeedbackLearning` callback fine-tunes between the epochs of
    a running ``fit``, which cannot be nested (a nested ``fit`` resets the outer one's
    ``stop_training``, step counter and ``model.history``). It is the model's own
    ``train_step``, so an AdversarialModel fine-tunes adversarially, and under a
    ``tf.distribute`` strategy each batch (``batch_size`` is the global batch) is split over the
    replicas as ``fit`` does (see :func:`warn_uneven_batches`). The metrics accumulate over a
    pass and are reset before the next, as in ``fit``.

    Args:
        who: the caller's name, for the warning.
        validation_data: ``(x, y)`` (or ``(x, y, sample_weight)``) evaluated after each pass.
        verbose: print each pass's logs.

    Returns:
        ``{name: [value per pass]}`` like ``fit(...).history``: the loss and the compiled
        metrics (AdversarialModel's ``clean_loss``, ``adv_loss``, ``adv_accuracy`` too), and
        ``val_<name>`` with ``validation_data``.
    """
    x, y = np.concatenate([data[0], examples.x]), np.concatenate([data[1], examples.y])
    warn_uneven_batches(model, len(x), batch_size, who)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, stream)))
    history: dict = {}
    with scaled_learning_rate(model.optimizer, lr_scale):
        for epoch in range(epochs):
            model.reset_metrics()
            order = rng.permutation(len(x))
            for part in batches(len(x), batch_size):
                logs = model.train_on_batch(x[order[part]], y[order[part]], reset_metrics=False, return_dict=True)
            if validation_data is not None:
                val_x, val_y, val_weight = keras.utils.unpack_x_y_sample_weight(validation_data)
                val = model.evaluate(val_x, val_y, sample_weight=val_weight, batch_size=batch_size, verbose=0,
                                     return_dict=True)
                logs = {**logs, **{f"val_{name}": value for name, value in val.items()}}
            for name, value in logs.items():
                history.setdefault(name, []).append(float(value))
            if verbose:
                print(f"{who}: fine-tune epoch {epoch + 1}/{epochs} - "
                      + " - ".join(f"{name}: {value:.4f}" for name, value in logs.items()))
    return history


@dataclass
class FeedbackHistory:
    """What :func:`feedback_learning` did.

    Attributes:
        margins: per-class margins ``r̄_c``: before each round and after the last
            (``rounds + 1`` arrays ``(num_classes,)``; all measured along the same directions).
        counts: examples generated per class, per round.
        fit: the logs of each round's fine-tune, ``{name: [value per epoch]}`` like
            ``History.history`` (see :func:`fine_tune`).
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
    """Feedback learning (Song et al. 2019; docs/methods.md): ``rounds`` times, measure the class
    margins on ``data``, generate ``fraction·N`` feedback examples
    (:func:`generate_feedback_examples`) and fine-tune ``model`` on ``data`` plus them for
    ``epochs`` epochs at ``lr_scale`` × its learning rate (restored afterwards).

    ``model`` must be compiled with a constant learning rate; an AdversarialModel fine-tunes
    adversarially (its ``train_step``) and is measured through its wrapped classifier. Every
    measurement uses the same directions (``seed``), so the margins of successive rounds are
    paired; each round draws its own examples and its own order of the fine-tune's batches
    (both from ``seed``). With an optimizer that averages the weights (``use_ema``) the average
    is written into the model after each round, as ``fit`` does when it ends.

    Under a ``tf.distribute`` strategy (``model`` built and compiled inside its scope) the
    margins are measured with the mirrored weights and each fine-tune batch (``batch_size`` is
    the global batch) is split over the replicas; a warning says when a batch does not split
    evenly (see :func:`warn_uneven_batches`).

    Returns:
        a :class:`FeedbackHistory` (margins before each round and after the last, counts,
        fine-tune logs).
    """
    check_compiled(model, "feedback_learning")
    rounds = check_count(rounds, "rounds")
    epochs = check_count(epochs, "epochs")
    lr_scale = check_positive(lr_scale, "lr_scale")
    check_settable_learning_rate(model.optimizer, lr_scale)
    gamma, fraction = check_eps(gamma, "gamma"), check_positive(fraction, "fraction")
    attack_model = attack_model_of(model)
    x, y = check_inputs(attack_model, *check_data(data, "data", clip), clip, require_labels=True)
    options = dict(t_max=t_max, directions=directions, norm=norm, grid=grid, bisection=bisection, clip=clip,
                   seed=seed_or_entropy(seed))
    history = FeedbackHistory()
    for round_index in range(rounds):
        result = boundary_distance(attack_model, x, y, **options)
        generated = examples_from_distances(result, x, gamma=gamma, fraction=fraction, clip=clip, stream=round_index)
        history.margins.append(result.class_margins())
        history.counts.append(generated.counts)
        history.fit.append(fine_tune(model, (x, y), generated, epochs=epochs, batch_size=batch_size,
                                     lr_scale=lr_scale, seed=options["seed"], stream=round_index,
                                     who="feedback_learning", validation_data=validation_data, verbose=verbose))
        finalize = getattr(model.optimizer, "finalize_variable_values", None)  # not on legacy optimizers
        if finalize is not None:
            finalize(model.trainable_variables)
    history.margins.append(class_margins(attack_model, x, y, **options))
    return history

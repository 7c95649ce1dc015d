"""Feedback learning inside ``model.fit``: the :class:`FeedbackLearning` callback."""

from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np

from ..._keras import register
from ...attacks._common import check_count, check_eps, check_inputs, check_norm, check_positive
from .._common import Clip, attack_model_of, check_data, seed_or_entropy
from .._monitor import EpochMonitor
from .examples import examples_from_distances
from .margins import boundary_distance
from .retraining import check_compiled, check_settable_learning_rate, fine_tune

__all__ = ["FeedbackLearning"]


@register
class FeedbackLearning(EpochMonitor):
    """Feedback learning inside ``model.fit`` (Song et al. 2019; docs/methods.md).

    At the end of every ``every``-th epoch, on ``data``:

    1. measure the boundary distances ``r(x, d)`` along ``directions`` random unit
       directions and log the per-class margins ``r̄_c``
       (:func:`~keras_qrobust.defenses.feedback.boundary_distance`);
    2. generate ``fraction·N`` examples ``x' = clip(x + min((1 + γ)·r, t_max)·d)`` labelled
       ``y``, class ``c`` getting a share ``∝ 1/r̄_c``;
    3. fine-tune on ``data`` plus them for ``epochs`` shuffled passes of ``train_on_batch``
       at ``lr_scale`` × the optimizer's learning rate (restored afterwards): the
       :func:`~keras_qrobust.defenses.feedback.fine_tune` of
       :func:`~keras_qrobust.defenses.feedback_learning`.

    The mechanism: Keras cannot change the dataset of a running ``fit``, so the callback
    runs its own short fine-tune between epochs through ``self.model.train_on_batch`` —
    the model's own ``train_step``, so an :class:`~keras_qrobust.defenses.AdversarialModel`
    fine-tunes adversarially. It runs after the epoch's logs (validation included) are
    computed, so its effect shows in the next epoch's metrics. The optimizer needs a
    constant learning rate unless ``lr_scale=1``. Under a ``tf.distribute`` strategy (model
    built and compiled inside its scope) each ``train_on_batch`` splits its batch over the
    replicas, as ``fit`` does; a warning says when a batch does not split evenly.

    Logs ``margin_class_<c>`` for each class (NaN for a class the model gets wholly wrong),
    ``margin_mean`` (their mean), ``feedback_examples`` (examples generated) and
    ``feedback_loss`` (the fine-tune's loss, as ``fit`` logs it for an epoch, averaged over
    the passes). The margins are those measured before the fine-tune, i.e. of the model the
    epoch produced.

    Args:
        data: ``(x, y)`` numpy inputs in ``clip`` and integer labels, typically (a part of)
            the training data.
        t_max: the largest boundary distance searched (in ``norm`` units).
        every: measure after every ``every``-th epoch.
        rounds: fine-tune at most this many times per ``fit`` (None: at every measurement;
            0: only log margins).
        epochs: fine-tune passes per round.
        seed: seeds the directions (the same ones at every measurement, so margins of
            successive epochs are paired), the example draws and the fine-tune order.

    The other arguments are those of
    :func:`~keras_qrobust.defenses.feedback.generate_feedback_examples`.
    """

    def __init__(self, data, *, t_max: float, every: int = 1, rounds: Optional[int] = None, epochs: int = 1,
                 lr_scale: float = 0.1, directions: int = 8, norm="inf", gamma: float = 0.1,
                 fraction: float = 0.5, batch_size: int = 32, grid: int = 20, bisection: int = 10,
                 clip: Clip = (0.0, 1.0), seed: Optional[int] = 0):
        super().__init__(every)
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        self.x, self.y = check_data(data, "FeedbackLearning data", self.clip)
        self.t_max = check_positive(t_max, "t_max")
        self.rounds = None if rounds is None else check_count(rounds, "rounds", minimum=0)
        self.epochs = check_count(epochs, "epochs")
        self.lr_scale = check_positive(lr_scale, "lr_scale")
        self.directions = check_count(directions, "directions")
        self.norm = check_norm(norm)
        self.gamma = check_eps(gamma, "gamma")
        self.fraction = check_positive(fraction, "fraction")
        self.batch_size = check_count(batch_size, "batch_size")
        self.grid = check_count(grid, "grid")
        self.bisection = check_count(bisection, "bisection", minimum=0)
        self.seed = seed_or_entropy(seed)
        self.rounds_done = 0
        self.last_examples = None

    def _fine_tunes(self) -> bool:
        return self.rounds is None or self.rounds_done < self.rounds

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.rounds_done = 0  # rounds count per fit, as EarlyStopping's patience
        self._attack_model = attack_model_of(self.model)
        check_inputs(self._attack_model, self.x, self.y, self.clip, require_labels=True)
        if self.rounds != 0:
            check_compiled(self.model, "FeedbackLearning")
            check_settable_learning_rate(self.model.optimizer, self.lr_scale)
        classes = [f"margin_class_{c}" for c in range(self._attack_model.num_classes)]
        self._keys = [*classes, "margin_mean", "feedback_examples", "feedback_loss"]

    def _measure(self, epoch: int) -> dict:
        result = boundary_distance(self._attack_model, self.x, self.y, t_max=self.t_max, directions=self.directions,
                                   norm=self.norm, grid=self.grid, bisection=self.bisection, clip=self.clip,
                                   seed=self.seed)
        margins = result.class_margins()
        values = {f"margin_class_{c}": float(m) for c, m in enumerate(margins)}
        measured = np.isfinite(margins)
        values["margin_mean"] = float(margins[measured].mean()) if measured.any() else math.nan
        if not measured.any():
            warnings.warn(f"FeedbackLearning: epoch {epoch + 1}: the model classifies none of its data correctly; "
                          "no feedback examples this time", stacklevel=2)
        elif self._fine_tunes():
            examples = examples_from_distances(result, self.x, gamma=self.gamma, fraction=self.fraction, clip=self.clip,
                                               stream=self.rounds_done)
            logs = fine_tune(self.model, (self.x, self.y), examples, epochs=self.epochs, batch_size=self.batch_size,
                             lr_scale=self.lr_scale, seed=self.seed, stream=self.rounds_done, who="FeedbackLearning")
            values["feedback_loss"] = float(np.mean(logs["loss"]))
            values["feedback_examples"] = len(examples.y)
            self.last_examples = examples
            self.rounds_done += 1
        return values

    def get_config(self) -> dict:
        """The settings; the data are not part of it: ``FeedbackLearning(data, **config)``."""
        return {"t_max": self.t_max, "every": self.every, "rounds": self.rounds, "epochs": self.epochs,
                "lr_scale": self.lr_scale, "directions": self.directions, "norm": self.norm, "gamma": self.gamma,
                "fraction": self.fraction, "batch_size": self.batch_size, "grid": self.grid,
                "bisection": self.bisection, "clip": self.clip, "seed": self.seed}

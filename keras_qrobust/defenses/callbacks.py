"""Keras callbacks that measure (and improve) robustness while a model trains.

* :class:`FeedbackLearning` — per-class boundary margins (Song et al. 2019) and feedback
  fine-tuning between epochs;
* :class:`UAPMonitor` — held-out fooling rate and accuracy under a universal perturbation
  crafted against the current model and its quantized copies (Zhou et al. 2022);
* :class:`LipschitzMonitor` — ``σ_max(Q_b(W) − W)`` per layer (Song et al. 2020, eq. 2).

How the numbers reach History, CSVLogger and TensorBoard: each callback writes its keys
into the ``logs`` dict of ``on_epoch_end``. Keras hands the same dict to the callbacks in
list order and appends History and the progress bar after yours, so those always see the
keys; **place these callbacks before CSVLogger and TensorBoard** in ``callbacks=[...]``,
which read ``logs`` in their own ``on_epoch_end``. Every key is written at every epoch:
epochs that are not measured (``every > 1``) get NaN, so History's lists stay aligned with
the epochs and CSVLogger's columns (fixed at the first epoch) hold every key.

Every callback works on a plain classifier and on an
:class:`~keras_qrobust.training.AdversarialModel` (it measures the wrapped classifier), and
checks its inputs against the model in ``on_train_begin``, before the first batch.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import warnings
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np

from . import quantizers as qz
from ._keras import keras, register
from .analysis import quantization_lipschitz
from .attacks._common import (
    as_attack_model,
    batches,
    check_count,
    check_eps,
    check_inputs,
    check_norm,
    check_positive,
)
from .attacks.uap import ensemble_uap, uap
from .quantize import RobustQuantizer
from .training.feedback import (
    boundary_distance,
    check_compiled,
    check_data,
    check_settable_learning_rate,
    classifier_of,
    examples_from_distances,
    scaled_learning_rate,
    warn_uneven_batches,
)

__all__ = ["FeedbackLearning", "UAPMonitor", "LipschitzMonitor"]

Clip = Optional[Sequence[float]]


def _key(name: str) -> str:
    """A log key fragment: letters, digits and underscores."""
    return re.sub(r"\W+", "_", str(name)).strip("_")


class _EpochMonitor(keras.callbacks.Callback):
    """Measure at the end of epochs ``every``, ``2·every``, ... (1-based) and write the
    values into ``logs``; the other epochs get NaN for the same keys.

    Subclasses set ``self._keys`` in ``on_train_begin`` and implement ``_measure(epoch)``.
    ``measurements`` keeps ``(epoch, values)`` of every measured epoch.
    """

    def __init__(self, every: int = 1):
        super().__init__()
        self.every = check_count(every, "every")
        self._keys: list = []
        self.measurements: list = []

    def _due(self, epoch: int) -> bool:
        return (epoch + 1) % self.every == 0

    def _measure(self, epoch: int) -> dict:
        raise NotImplementedError

    def on_train_begin(self, logs=None):
        self.measurements = []

    def on_epoch_end(self, epoch, logs=None):
        values = {}
        if self._due(epoch):
            values = self._measure(epoch)
            self.measurements.append((epoch, values))
        if logs is not None:
            for key in self._keys:
                logs[key] = values.get(key, math.nan)


# ----------------------------------------------------------------------------- feedback learning
@register
class FeedbackLearning(_EpochMonitor):
    """Feedback learning inside ``model.fit`` (Song et al. 2019; DESIGN.md §3).

    At the end of every ``every``-th epoch, on ``data``:

    1. measure the boundary distances ``r(x, d)`` along ``directions`` random unit
       directions and log the per-class margins ``r̄_c``
       (:func:`~keras_qrobust.training.feedback.boundary_distance`);
    2. generate ``fraction·N`` examples ``x' = clip(x + min((1 + γ)·r, t_max)·d)`` labelled
       ``y``, class ``c`` getting a share ``∝ 1/r̄_c``;
    3. fine-tune on ``data`` plus them for ``epochs`` shuffled passes of ``train_on_batch``
       at ``lr_scale`` × the optimizer's learning rate (restored afterwards).

    The mechanism: Keras cannot change the dataset of a running ``fit``, so the callback
    runs its own short fine-tune between epochs through ``self.model.train_on_batch`` —
    the model's own ``train_step``, so an :class:`~keras_qrobust.training.AdversarialModel`
    fine-tunes adversarially. It runs after the epoch's logs (validation included) are
    computed, so its effect shows in the next epoch's metrics. The optimizer needs a
    constant learning rate unless ``lr_scale=1``. Under a ``tf.distribute`` strategy (model
    built and compiled inside its scope) each ``train_on_batch`` splits its batch over the
    replicas, as ``fit`` does; a warning says when a batch does not split evenly.

    Logs ``margin_class_<c>`` for each class (NaN for a class the model gets wholly wrong),
    ``margin_mean`` (their mean), ``feedback_examples`` (examples generated) and
    ``feedback_loss`` (mean fine-tune loss). The margins are those measured before the
    fine-tune, i.e. of the model the epoch produced.

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
    :func:`~keras_qrobust.training.feedback.generate_feedback_examples`.
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
        self.seed = int(np.random.SeedSequence().entropy) if seed is None else check_count(seed, "seed", 0)
        self.rounds_done = 0
        self.last_examples = None

    def _fine_tunes(self) -> bool:
        return self.rounds is None or self.rounds_done < self.rounds

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.rounds_done = 0  # rounds count per fit, as EarlyStopping's patience
        self._attack_model = as_attack_model(classifier_of(self.model))
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
            values["feedback_loss"] = self._fine_tune(examples)
            values["feedback_examples"] = len(examples.y)
            self.last_examples = examples
            self.rounds_done += 1
        return values

    def _fine_tune(self, examples) -> float:
        x = np.concatenate([self.x, examples.x])
        y = np.concatenate([self.y, examples.y])
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(2, self.rounds_done)))
        warn_uneven_batches(self.model, len(x), self.batch_size, "FeedbackLearning")
        losses = []
        with scaled_learning_rate(self.model.optimizer, self.lr_scale):
            for _ in range(self.epochs):
                order = rng.permutation(len(x))
                for part in batches(len(x), self.batch_size):
                    logs = self.model.train_on_batch(x[order[part]], y[order[part]], return_dict=True)
                    losses.append(float(logs["loss"]))
        return float(np.mean(losses))

    def get_config(self) -> dict:
        """The settings; the data are not part of it: ``FeedbackLearning(data, **config)``."""
        return {"t_max": self.t_max, "every": self.every, "rounds": self.rounds, "epochs": self.epochs,
                "lr_scale": self.lr_scale, "directions": self.directions, "norm": self.norm, "gamma": self.gamma,
                "fraction": self.fraction, "batch_size": self.batch_size, "grid": self.grid,
                "bisection": self.bisection, "clip": self.clip, "seed": self.seed}


# ----------------------------------------------------------------------------- UAP monitor
_UAP_OWN = ("models", "model", "x", "eps", "norm", "clip", "seed", "verbose")


def _check_options(options: Optional[Mapping], ensemble: bool) -> dict:
    options = dict(options or {})
    accepted = set(inspect.signature(ensemble_uap if ensemble else uap).parameters) - set(_UAP_OWN)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise TypeError(
            f"attack_options {unknown} are not options of "
            f"{'ensemble_uap' if ensemble else 'uap'}; accepted: {sorted(accepted)}"
        )
    return options


def _quantizers(quantize) -> dict:
    """Setting strings, RobustQuantizer objects or their field dicts -> ``{name: RobustQuantizer}``."""
    if isinstance(quantize, (str, RobustQuantizer, Mapping)):
        quantize = [quantize]
    out = {}
    for item in quantize or ():
        if isinstance(item, str):
            item = RobustQuantizer.from_setting(item)
        elif isinstance(item, Mapping):
            item = RobustQuantizer(**item)
        if not isinstance(item, RobustQuantizer):
            raise TypeError(f"quantize takes setting names ('w4a4') or RobustQuantizer objects, got {item!r}")
        name = _key(item.setting)
        if name in out:
            raise ValueError(
                f"quantize names the setting {name!r} twice; pass other variants of it through "
                "models=lambda m: {'my_name': quantizer.quantize(m, samples)}"
            )
        out[name] = item
    return out


def _quantizer_config(rq: RobustQuantizer) -> Union[str, dict]:
    """The setting name when it rebuilds ``rq``, else all its fields."""
    return rq.setting if RobustQuantizer.from_setting(rq.setting) == rq else dataclasses.asdict(rq)


@register
class UAPMonitor(_EpochMonitor):
    """Fooling rate and accuracy under a universal perturbation, measured while training.

    At the end of every ``every``-th epoch: the validation data are split once (seeded) into
    a crafting part (``craft_fraction``) and a held-out part. The current classifier and
    its copies — :class:`~keras_qrobust.RobustQuantizer` copies for each ``quantize``
    setting, calibrated on the crafting part, plus whatever ``models(classifier)`` returns —
    get one UAP crafted on the crafting part: :func:`~keras_qrobust.attacks.ensemble_uap`
    over the classifier and its copies (Zhou et al. 2022, Algorithm 2), or
    :func:`~keras_qrobust.attacks.uap` when there are no copies. Each model is then scored
    on the held-out part (the fooling rate against its own clean predictions, DESIGN.md §4):

    * ``uap_fooling_rate``, ``uap_accuracy``, ``uap_clean_accuracy`` — the classifier;
    * ``uap_fooling_rate_<name>``, ``uap_accuracy_<name>``, ``uap_clean_accuracy_<name>``
      — each copy (``<name>`` = the setting, e.g. ``w4a4``, or the ``models`` key).

    The split, the pass order and the quantizer calibration are the same at every epoch, so
    epochs differ only by the weights. ``last_result`` holds the latest
    :class:`~keras_qrobust.attacks.UAPResult`; ``x_craft``, ``x_eval`` and ``y_eval`` the
    split. ``on_train_begin`` quantizes the model once to check it can be quantized (and
    calls ``models``), so an unsupported layer fails before the first batch.

    Args:
        val_data: ``(x, y)`` validation inputs in ``clip`` and integer labels.
        eps: the UAP budget (``norm`` ball).
        every: measure after every ``every``-th epoch.
        craft_fraction: share of ``val_data`` the UAP is crafted on.
        quantize: RobustQuantizer settings (``"w8a8"``) or objects (one per setting name);
            ``()`` for none.
        models: optional ``classifier -> {name: model}`` building more copies each time.
        attack_options: more keyword arguments for ``ensemble_uap`` / ``uap``
            (``max_passes``, ``step_size``, ``batch_size`` ...).
        seed: seeds the split and the UAP.
    """

    def __init__(self, val_data, *, eps: float, every: int = 1, craft_fraction: float = 0.5,
                 quantize: Union[str, RobustQuantizer, Sequence] = ("w8a8", "w4a4"),
                 models: Optional[Callable] = None, norm="inf", attack_options: Optional[Mapping] = None,
                 clip: Clip = (0.0, 1.0), seed: int = 0):
        super().__init__(every)
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        x, y = check_data(val_data, "UAPMonitor val_data", self.clip)
        self.eps = check_eps(eps)
        self.norm = check_norm(norm)
        self.craft_fraction = float(craft_fraction)
        self.seed = check_count(seed, "seed", minimum=0)
        craft, held_out = self._split(len(x))
        self.x_craft, self.x_eval, self.y_eval = x[craft], x[held_out], y[held_out]
        self.quantizers = _quantizers(quantize)
        if models is not None and not callable(models):
            raise TypeError("models must be a callable classifier -> {name: model}")
        self.models = models
        self.attack_options = _check_options(attack_options, ensemble=bool(self.quantizers) or models is not None)
        self._y_craft = y[craft]
        self.last_result = None

    def _split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0.0 < self.craft_fraction < 1.0:
            raise ValueError(f"craft_fraction must be in (0, 1), got {self.craft_fraction}")
        count = int(round(self.craft_fraction * n))
        if not 0 < count < n:
            raise ValueError(
                f"val_data has {n} inputs: too few to split into a crafting part ({self.craft_fraction:g}) "
                "and a held-out part with at least one input each"
            )
        order = np.random.default_rng(self.seed).permutation(n)
        return order[:count], order[count:]

    def _copies(self, classifier) -> dict:
        copies = {name: rq.quantize(classifier, self.x_craft) for name, rq in self.quantizers.items()}
        if self.models is not None:
            built = self.models(classifier)
            if not isinstance(built, Mapping):
                raise TypeError(f"models(classifier) must return a dict name -> model, got {type(built).__name__}")
            for name, model in built.items():
                if _key(name) in copies or not _key(name):
                    raise ValueError(f"models returned the name {name!r}, empty or already used by a copy")
                copies[_key(name)] = model
        return copies

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        attack_model = as_attack_model(classifier_of(self.model))
        check_inputs(attack_model, self.x_craft, self._y_craft, self.clip, require_labels=True)
        check_inputs(attack_model, self.x_eval, self.y_eval, self.clip, require_labels=True)
        names = [""]
        for name, copy in self._copies(attack_model.model).items():
            if as_attack_model(copy).input_shape != attack_model.input_shape:
                raise ValueError(f"copy '{name}' takes inputs {as_attack_model(copy).input_shape}, the model "
                                 f"{attack_model.input_shape}")
            names.append(f"_{name}")
        self._attack_model = attack_model
        self._keys = [f"uap_{metric}{suffix}" for suffix in names
                      for metric in ("fooling_rate", "accuracy", "clean_accuracy")]

    def _measure(self, epoch: int) -> dict:
        members = {"": self._attack_model, **{f"_{n}": as_attack_model(m)
                                              for n, m in self._copies(self._attack_model.model).items()}}
        common = dict(eps=self.eps, norm=self.norm, clip=self.clip, seed=self.seed, verbose=0, **self.attack_options)
        if len(members) > 1:
            result = ensemble_uap(list(members.values()), self.x_craft, **common)
        else:
            result = uap(self._attack_model, self.x_craft, **common)
        self.last_result = result
        attacked = result.apply(self.x_eval)
        values = {}
        for suffix, member in members.items():
            clean, adversarial = member.predict_labels(self.x_eval), member.predict_labels(attacked)
            values[f"uap_fooling_rate{suffix}"] = float(np.mean(adversarial != clean))
            values[f"uap_accuracy{suffix}"] = float(np.mean(adversarial == self.y_eval))
            values[f"uap_clean_accuracy{suffix}"] = float(np.mean(clean == self.y_eval))
        return values

    def get_config(self) -> dict:
        """The settings; the data and ``models`` are not part of it:
        ``UAPMonitor(val_data, models=..., **config)``."""
        return {"eps": self.eps, "every": self.every, "craft_fraction": self.craft_fraction,
                "quantize": [_quantizer_config(rq) for rq in self.quantizers.values()], "norm": self.norm,
                "attack_options": dict(self.attack_options), "clip": self.clip, "seed": self.seed}


# ----------------------------------------------------------------------------- Lipschitz monitor
@register
class LipschitzMonitor(_EpochMonitor):
    """``σ_max(Q_b(W) − W)`` of every kernel while training (Song et al. 2020, eq. 2).

    Logs ``lipschitz_<layer>`` per Dense / Conv2D / DepthwiseConv2D / SeparableConv2D kernel
    (``lipschitz_<layer>_<kernel>`` for the two kernels of a SeparableConv2D), their maximum
    ``lipschitz_max`` and ``lipschitz_amplifying``, the number of kernels with ``σ_max > 1``
    (see :func:`keras_qrobust.analysis.quantization_lipschitz`; raw ``σ_max``, without the
    Parseval scale). A model without such layers fails in ``on_train_begin``.
    """

    def __init__(self, bits: int, every: int = 1, per_axis: bool = True):
        super().__init__(every)
        self.bits = qz.check_bits(bits)
        self.per_axis = bool(per_axis)

    def _rows(self) -> list:
        rows = quantization_lipschitz(self.model, self.bits, self.per_axis)
        kernels = {}
        for row in rows:
            kernels.setdefault(row["layer"], []).append(row)
        for row in rows:
            suffix = f"_{row['kernel']}" if len(kernels[row["layer"]]) > 1 else ""
            row["key"] = f"lipschitz_{_key(row['layer'])}{suffix}"
        return rows

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        try:
            rows = self._rows()
        except ValueError as error:
            raise ValueError(f"LipschitzMonitor: {error}") from None
        self._keys = [row["key"] for row in rows] + ["lipschitz_max", "lipschitz_amplifying"]

    def _measure(self, epoch: int) -> dict:
        rows = self._rows()
        values = {row["key"]: row["sigma_max"] for row in rows}
        values["lipschitz_max"] = max(row["sigma_max"] for row in rows)
        values["lipschitz_amplifying"] = sum(row["amplifying"] for row in rows)
        return values

    def get_config(self) -> dict:
        return {"bits": self.bits, "every": self.every, "per_axis": self.per_axis}

    @classmethod
    def from_config(cls, config: dict) -> "LipschitzMonitor":
        return cls(**config)

"""Keras callbacks that measure (and improve) robustness while a model trains.

* :class:`FeedbackLearning` — per-class boundary margins (Song et al. 2019) and feedback
  fine-tuning between epochs (defined in :mod:`keras_qrobust.defenses.feedback.callback`);
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
:class:`~keras_qrobust.defenses.AdversarialModel` (it measures the wrapped classifier), and
checks its inputs against the model in ``on_train_begin``, before the first batch.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from typing import Callable, Mapping, Optional, Sequence, Union

import numpy as np

from .. import quantizers as qz
from .._keras import register
from ..analysis import quantization_lipschitz
from ..attacks._common import as_attack_model, check_count, check_eps, check_inputs, check_norm
from ..attacks.uap import ensemble_uap, uap
from ..quantization import RobustQuantizer
from ._common import Clip, attack_model_of, check_data
from ._monitor import EpochMonitor
from .feedback.callback import FeedbackLearning

__all__ = ["FeedbackLearning", "UAPMonitor", "LipschitzMonitor"]


def _key(name: str) -> str:
    """A log key fragment: letters, digits and underscores."""
    return re.sub(r"\W+", "_", str(name)).strip("_")


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
class UAPMonitor(EpochMonitor):
    """Fooling rate and accuracy under a universal perturbation, measured while training.

    At the end of every ``every``-th epoch: the validation data are split once (seeded) into
    a crafting part (``craft_fraction``) and a held-out part. The current classifier and
    its copies — :class:`~keras_qrobust.RobustQuantizer` copies for each ``quantize``
    setting, calibrated on the crafting part, plus whatever ``models(classifier)`` returns —
    get one UAP crafted on the crafting part: :func:`~keras_qrobust.attacks.ensemble_uap`
    over the classifier and its copies (Zhou et al. 2022, Algorithm 2), or
    :func:`~keras_qrobust.attacks.uap` when there are no copies. Each model is then scored
    on the held-out part (the fooling rate against its own clean predictions, docs/limits.md):

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
        attack_model = attack_model_of(self.model)
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
class LipschitzMonitor(EpochMonitor):
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

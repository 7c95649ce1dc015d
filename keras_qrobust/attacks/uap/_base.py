"""What every UAP crafting and scoring shares: the result, the argument checks, the compiled
label function ``argmax f(clip(x + v))`` and the fooling rates measured with it, and the
progress bar."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from ..._keras import keras, tf
from .._common import AttackModel, as_attack_model, batches, compiled, progress, to_box

EVAL_BATCH = 128  # measured fastest on CPU, ~1.5-3x faster than 512 for quantized models

Clip = Optional[Sequence[float]]


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True, eq=False)
class UAPResult:
    """A universal perturbation and how it was made.

    Attributes:
        perturbation: ``v``, shaped like ONE input (add it to a batch: ``clip(x + v)``).
        fooling_rate: on the crafting data, against the clean predictions (for an ensemble
            the mean over its models).
        passes: passes over the data (``uap``, ``ensemble_uap``) or epochs (``sgd_uap``) run.
        seconds: wall time of the crafting (clean predictions, tracing and passes; input
            validation excluded).
        history: fooling rate after each pass / epoch.
        method: ``"uap-fgsm"``, ``"uap-deepfool"``, ``"sgd_uap"``, ``"targeted_uap"``,
            ``"ensemble_uap"``.
        eps: the budget of the constraint ``‖v‖_norm ≤ eps``.
        norm: its norm.
        clip: the input box.
        model_fooling_rates: the final fooling rate of each model (one entry for one model).
        target_rate: targeted UAPs only: fraction of the crafting inputs classified as the
            target class under ``v``.
    """

    perturbation: np.ndarray
    fooling_rate: float
    passes: int
    seconds: float
    history: list
    method: str
    eps: float
    norm: str
    clip: Optional[tuple] = (0.0, 1.0)
    model_fooling_rates: tuple = ()
    target_rate: Optional[float] = None

    @property
    def epochs(self) -> int:
        """``passes`` under its SGD-UAP name."""
        return self.passes

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        if copy or (dtype is not None and np.dtype(dtype) != self.perturbation.dtype):
            return np.array(self.perturbation, dtype=dtype, copy=True)
        return self.perturbation

    def apply(self, x) -> np.ndarray:
        """The perturbed inputs ``clip(x + v)`` (numpy)."""
        out = np.asarray(x, np.float32) + self.perturbation
        return out if self.clip is None else np.clip(out, self.clip[0], self.clip[1])

    def __repr__(self) -> str:
        return (f"UAPResult(method={self.method!r}, eps={self.eps:g}, norm={self.norm!r}, "
                f"fooling_rate={self.fooling_rate:.4f}, passes={self.passes}, "
                f"seconds={self.seconds:.2f})")


# ----------------------------------------------------------------------------- checks
def check_models(models, output: str = "auto") -> list:
    """Wrap a non-empty list (or dict values) of models that share input shape and classes."""
    if isinstance(models, Mapping):
        models = list(models.values())
    elif isinstance(models, (keras.Model, AttackModel)):
        models = [models]
    else:
        models = list(models)
    if not models:
        raise ValueError(
            "models is empty: pass at least one model, e.g. "
            "[model, kq.RobustQuantizer(4, 4).quantize(model, x[:1000])]"
        )
    wrapped = [as_attack_model(m, output) for m in models]
    shapes = {am.input_shape for am in wrapped}
    if len(shapes) > 1:
        listing = ", ".join(f"'{am.model.name}': {am.input_shape}" for am in wrapped)
        raise ValueError(f"all models must take the same input shape, got {listing}")
    classes = {am.num_classes for am in wrapped}
    if len(classes) > 1:
        listing = ", ".join(f"'{am.model.name}': {am.num_classes}" for am in wrapped)
        raise ValueError(f"all models must have the same number of classes, got {listing}")
    return wrapped


def check_fraction(value, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def check_choice(value, choices: tuple, name: str) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


# ----------------------------------------------------------------------------- compiled pieces
def specs(attack_model: AttackModel) -> tuple:
    """Signatures of a batch ``x``, its labels and ``v`` (batch dimension 1)."""
    shape = attack_model.input_shape
    return (tf.TensorSpec((None, *shape), tf.float32), tf.TensorSpec((None,), tf.int64),
            tf.TensorSpec((1, *shape), tf.float32))


SCALAR = tf.TensorSpec((), tf.float32)

#: the warning's advice when a model gives no input gradient (``zeros_if_none``)
NO_GRADIENT = "the UAP sees zeros. Use a transfer UAP from a float surrogate instead."


def _labels_fn(attack_model: AttackModel, clip: Optional[tuple]) -> Callable:
    """``run(x, v) -> argmax f(clip(x + v))``."""
    x_spec, _, v_spec = specs(attack_model)

    def factory(get_model):
        # autograph off (here and in the steps): the bodies have no tensor-dependent Python
        # control flow, and skipping the conversion makes the first call much cheaper
        @tf.function(input_signature=[x_spec, v_spec], autograph=False)
        def run(x, v):
            return tf.argmax(get_model().logits(to_box(x + v, clip)), axis=-1)

        return run

    return compiled(attack_model, ("uap_labels", clip), factory)


# ----------------------------------------------------------------------------- evaluation
def perturbed_labels(attack_model: AttackModel, x: np.ndarray, v: tf.Tensor, clip, batch_size: int) -> np.ndarray:
    """``argmax f(clip(x + v))`` for all of ``x`` (numpy int64)."""
    run = _labels_fn(attack_model, clip)
    parts = [run(tf.constant(x[s]), v).numpy() for s in batches(len(x), batch_size)]
    return np.concatenate(parts).astype(np.int64)


def fooling_rates(models: list, x: np.ndarray, v: tf.Tensor, clean: list, clip,
           batch_size: int = EVAL_BATCH) -> list:
    """Fooling rate of each model: ``mean[f(clip(x + v)) ≠ f(x)]``."""
    return [float(np.mean(perturbed_labels(am, x, v, clip, batch_size) != c)) for am, c in zip(models, clean)]


def zero_perturbation(attack_model: AttackModel) -> tf.Tensor:
    return tf.zeros((1, *attack_model.input_shape), tf.float32)


class ProgressBar:
    """A progress bar ticked once per update, showing the latest fooling rate (none for
    ``verbose=0``)."""

    def __init__(self, total: int, verbose: int, desc: str):
        self._bar = progress(range(total), total=total, verbose=verbose, desc=desc)
        self._ticks = iter(self._bar)

    def tick(self) -> None:
        next(self._ticks, None)

    def show(self, rate: float) -> None:
        if hasattr(self._bar, "set_postfix"):
            self._bar.set_postfix(fooling=f"{rate:.3f}")

    def close(self) -> None:
        if hasattr(self._bar, "close"):
            self._bar.close()

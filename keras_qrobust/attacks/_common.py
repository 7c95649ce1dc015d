"""What every attack shares: input checks, the logits view of a model, gradients, batching,
progress bars and seeds.

Attacks take a tf_keras model whose output is logits, probabilities (a softmax output is
detected from the graph and read through ``log``) or a single binary logit (read as the two
logits ``[0, z]``), and work on numpy arrays in a box ``[clip_min, clip_max]``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from .._keras import check_model, keras, tf
from .._progress import progress_bar
from ..metrics import check_labels

__all__ = [
    "AttackModel",
    "as_attack_model",
    "compiled",
    "zeros_if_none",
    "gradient",
    "margin",
    "generator",
    "random_in_ball",
    "check_inputs",
    "clip_key",
    "to_box",
    "check_array",
    "check_count",
    "check_positive",
    "check_eps",
    "check_norm",
    "batches",
    "progress",
    "NORMS",
    "project",
    "normalize",
]

NORMS = ("inf", "2")
_OUTPUT_KINDS = ("auto", "logits", "probabilities")


def check_norm(norm) -> str:
    """``np.inf``/``"inf"``/``"linf"`` -> ``"inf"``; ``2``/``"2"``/``"l2"`` -> ``"2"``."""
    text = str(norm).lower().removeprefix("l")
    if text in ("inf", "infinity"):
        return "inf"
    if text in ("2", "2.0"):
        return "2"
    raise ValueError(f"norm must be 'inf' or 2 (L∞ or L2), got {norm!r}")


def check_eps(eps, name: str = "eps") -> float:
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {eps!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {eps!r}")
    return value


def _softmax_output(model) -> bool:
    """Does the model end in a softmax (so its outputs are probabilities)?

    A RobustQuantizer OutputQuantizer after the softmax (8-bit scores) does not change that.
    """
    from ..layers import TensorQuantizer

    last = model.layers[-1]
    while isinstance(last, TensorQuantizer):
        inbound = last._inbound_nodes[0].inbound_layers
        last = inbound[0] if isinstance(inbound, (list, tuple)) else inbound
    if isinstance(last, keras.layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", None) == "softmax"


@dataclass(frozen=True, eq=False)
class AttackModel:
    """A model seen as ``x -> logits`` in inference mode.

    ``num_classes`` counts a single binary output as 2 classes.
    """

    model: "keras.Model"
    probabilities: bool
    binary: bool

    @property
    def num_classes(self) -> int:
        return 2 if self.binary else int(self.model.output_shape[-1])

    @property
    def input_shape(self) -> tuple:
        return tuple(self.model.input_shape[1:])

    def logits(self, x: tf.Tensor) -> tf.Tensor:
        out = self.model(x, training=False)
        if self.binary:  # one output: a logit z -> [0, z]; a probability p -> [log(1 − p), log p]
            if self.probabilities:
                p = tf.clip_by_value(out, 1e-30, 1.0 - 1e-7)
                return tf.concat([tf.math.log(1.0 - p), tf.math.log(p)], axis=-1)
            return tf.concat([tf.zeros_like(out), out], axis=-1)
        if self.probabilities:
            out = tf.math.log(tf.maximum(out, 1e-30))
        return out

    def __call__(self, x):
        return self.logits(x)

    def predict_labels(self, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Predicted class of each input (numpy in, numpy out)."""
        labels = [
            tf.argmax(self.compiled_logits(tf.constant(x[s])), axis=-1).numpy()
            for s in batches(len(x), batch_size)
        ]
        return np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)

    @property
    def compiled_logits(self) -> Callable[[tf.Tensor], tf.Tensor]:
        """``logits`` as a ``tf.function``, traced once per input signature."""
        fn = self.__dict__.get("_logits_fn")
        if fn is None:
            fn = tf.function(self.logits, reduce_retracing=True)
            fn._omit_frequent_tracing_warning = True
            object.__setattr__(self, "_logits_fn", fn)
        return fn


def as_attack_model(model, output: str = "auto") -> AttackModel:
    """Wrap ``model`` (or pass an AttackModel through).

    ``output``: ``"auto"`` (softmax-ended models give probabilities, others logits),
    ``"logits"`` or ``"probabilities"``.
    """
    if isinstance(model, AttackModel):
        return model
    from ..export.runtime import DeployedModel

    if isinstance(model, DeployedModel):
        raise ValueError(f"{model.path.name} is a deployed artifact, which has no gradients: attack its Keras twin, "
                         "or the file itself with a gradient-free attack (square, spsa) or a transfer attack")
    model = check_model(model)
    if output not in _OUTPUT_KINDS:
        raise ValueError(f"output must be one of {_OUTPUT_KINDS}, got {output!r}")
    if not model.inputs:
        raise ValueError(
            f"Model '{model.name}' has no input yet: start it with keras.Input(shape) or call "
            "model.build(input_shape) before attacking it"
        )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"Model '{model.name}' must have one input and one output to be attacked")
    probabilities = _softmax_output(model) if output == "auto" else output == "probabilities"
    binary = int(model.output_shape[-1]) == 1
    return AttackModel(model, probabilities, binary)


def check_count(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int, or a ValueError unless it is a whole number ``>= minimum``."""
    try:
        whole = not isinstance(value, bool) and float(value).is_integer()
    except (TypeError, ValueError):
        whole = False
    if not whole or int(value) < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_positive(value, name: str) -> float:
    """``value`` as a float, or a ValueError unless it is finite and ``> 0``."""
    value = check_eps(value, name)
    if value == 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return value


def check_array(x, clip: Optional[Sequence[float]] = (0.0, 1.0)) -> np.ndarray:
    """The model-free part of :func:`check_inputs`: a numeric, finite, non-empty batch
    ``(N, ...)`` inside ``clip``, as float32."""
    array = np.asarray(x)
    if not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"x must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    if array.ndim < 2 or array.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch shaped (N, ...), got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("x contains NaN or infinite values")
    if clip is not None:
        lo, hi = float(clip[0]), float(clip[1])
        if not lo < hi:
            raise ValueError(f"clip must be (min, max) with min < max, got {clip}")
        if array.min() < lo - 1e-6 or array.max() > hi + 1e-6:
            raise ValueError(
                f"x lies in [{array.min():.4g}, {array.max():.4g}], outside the clip range "
                f"[{lo}, {hi}]: scale the inputs (images in [0, 1]) or pass clip=(min, max)"
            )
    return array


def clip_key(clip: Optional[Sequence[float]]) -> Optional[tuple]:
    """``clip`` as a hashable ``(min, max)`` of floats (a cache key), or None."""
    return None if clip is None else (float(clip[0]), float(clip[1]))


def to_box(t: tf.Tensor, clip: Optional[Sequence[float]]) -> tf.Tensor:
    """``t`` clipped into the box ``clip`` (unchanged for ``clip=None``)."""
    return t if clip is None else tf.clip_by_value(t, clip[0], clip[1])


def check_inputs(
    model: AttackModel,
    x,
    y=None,
    clip: Optional[Sequence[float]] = (0.0, 1.0),
    *,
    require_labels: bool = False,
) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """Validate ``x`` (and labels ``y``) for attacking ``model``; return float32 / int64 arrays.

    Raises before any computation: ``x`` must be shaped like the model input, finite and
    inside ``clip``; ``y`` one integer label per input in ``[0, num_classes)``.
    """
    array = check_array(x, clip)
    expected = model.input_shape
    if array.ndim != len(expected) + 1 or any(
        e is not None and e != a for e, a in zip(expected, array.shape[1:])
    ):
        raise ValueError(
            f"x has shape {array.shape}; model '{model.model.name}' expects "
            f"(N, {', '.join('?' if e is None else str(e) for e in expected)})"
        )
    labels = None
    if y is not None:
        labels = check_labels(y, len(array), model.num_classes, model.model.name)
    elif require_labels:
        raise ValueError("this attack needs labels y: pass one integer class label per input")
    return array, labels


def batches(n: int, batch_size: int) -> Iterator[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def progress(iterable, total: Optional[int] = None, verbose: int = 1, desc: str = ""):
    """A tqdm progress bar on stderr; none when ``verbose=0`` (:func:`keras_qrobust._progress.progress_bar`)."""
    return progress_bar(iterable, total=total, desc=desc, verbose=verbose)


def gradient(attack_model: AttackModel, x: tf.Tensor, y: tf.Tensor, targeted: bool = False,
             loss: str = "ce") -> tf.Tensor:
    """Gradient of the per-example loss w.r.t. ``x`` (ascent direction: raises the loss of
    ``y``, or for ``targeted`` lowers it). Traceable inside ``tf.function``.

    ``loss``: ``"ce"`` (cross-entropy on logits) or ``"margin"`` (CW margin: best other
    logit minus the logit of ``y``). A model whose graph gives no gradient (``None``, e.g. a
    rounding op without a straight-through estimator) yields zeros and a warning.
    """
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        logits = attack_model.logits(x)
        if loss == "ce":
            value = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
        elif loss == "margin":
            value = margin(logits, y)
        else:
            raise ValueError(f"loss must be 'ce' or 'margin', got {loss!r}")
        if targeted:
            value = -value
    return zeros_if_none(tape.gradient(value, x), x, attack_model)


def zeros_if_none(grad: Optional[tf.Tensor], like: tf.Tensor, attack_model: AttackModel,
                  advice: str = "gradient attacks see zeros. Use a gradient-free attack (spsa, square) or a "
                                "transfer attack.") -> tf.Tensor:
    """``grad``, or zeros and a warning (ending in ``advice``) when the model graph gives no
    input gradient."""
    if grad is not None:
        return grad
    warnings.warn(f"Model '{attack_model.model.name}' gives no gradient with respect to its input; {advice}",
                  stacklevel=3)
    return tf.zeros_like(like)


def margin(logits: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """``max_{j != y} z_j - z_y`` per example (> 0 means misclassified)."""
    num_classes = tf.shape(logits)[-1]
    true = tf.one_hot(y, num_classes, dtype=logits.dtype)
    correct = tf.reduce_sum(true * logits, axis=-1)
    other = tf.reduce_max(logits - 1e9 * true, axis=-1)
    return other - correct


def _reduce_axes(x: tf.Tensor) -> list[int]:
    return list(range(1, x.shape.rank))


def normalize(grad: tf.Tensor, norm: str) -> tf.Tensor:
    """Steepest-ascent direction of unit ``norm`` (cleverhans ``optimize_linear``)."""
    if norm == "inf":
        return tf.sign(grad)
    square = tf.maximum(1e-12, tf.reduce_sum(tf.square(grad), _reduce_axes(grad), keepdims=True))
    return grad / tf.sqrt(square)


def project(delta: tf.Tensor, eps: float, norm: str) -> tf.Tensor:
    """Project ``delta`` onto the ``norm`` ball of radius ``eps`` (cleverhans ``clip_eta``)."""
    if norm == "inf":
        return tf.clip_by_value(delta, -eps, eps)
    square = tf.maximum(1e-12, tf.reduce_sum(tf.square(delta), _reduce_axes(delta), keepdims=True))
    return delta * tf.minimum(1.0, eps / tf.sqrt(square))


def random_in_ball(shape, eps: float, norm: str, generator: tf.random.Generator) -> tf.Tensor:
    """Uniform sample in the ``norm`` ball of radius ``eps`` (one per leading index)."""
    if norm == "inf":
        return generator.uniform(shape, -eps, eps)
    flat = generator.normal((shape[0], int(np.prod(shape[1:]))))
    flat = flat / tf.norm(flat, axis=1, keepdims=True)
    dim = float(np.prod(shape[1:]))
    radius = eps * tf.pow(generator.uniform((shape[0], 1)), 1.0 / dim)
    return tf.reshape(flat * radius, shape)


def generator(seed: Optional[int]) -> tf.random.Generator:
    """A TensorFlow random generator: seeded, or from fresh entropy when ``seed`` is None."""
    if seed is None:
        # fresh entropy drawn here: TF's from_non_deterministic_state refuses to run once
        # tf.config.experimental.enable_op_determinism() is on
        seed = int(np.random.default_rng().integers(2**63 - 1))
    return tf.random.Generator.from_seed(seed)


_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def compiled(attack_model: AttackModel, key: tuple, factory: Callable[[Callable[[], AttackModel]], Callable]):
    """A function compiled once per model (a Keras model, or a deployed artifact) and ``key``.

    ``factory(get_model)`` builds it; ``get_model()`` returns the AttackModel (or the view of
    the artifact) while tracing. The cache holds the model weakly (the factory only sees a
    weak reference), so functions go away with their model. A deployed artifact's view calls
    its runtime from the traced graph (``tf.numpy_function``), which keeps that Python callable
    alive as long as the function: the view gets a weak proxy of the artifact, not the artifact.
    """
    per_model = _COMPILED.setdefault(attack_model.model, {})
    view = type(attack_model)  # an AttackModel, or a view of a deployed artifact
    fields = {f.name: getattr(attack_model, f.name) for f in dataclasses.fields(attack_model) if f.name != "model"}
    key = (view, *sorted(fields.items()), *key)
    if key not in per_model:
        model_ref = weakref.ref(attack_model.model)
        if isinstance(attack_model, AttackModel):
            fn = factory(lambda: view(model=model_ref(), **fields))
        else:
            fn = factory(lambda: view(model=weakref.proxy(model_ref()), **fields))
        # a new batch size or step count retraces by design; TF's retracing warning is noise here
        if hasattr(fn, "_omit_frequent_tracing_warning"):
            fn._omit_frequent_tracing_warning = True
        per_model[key] = fn
    return per_model[key]

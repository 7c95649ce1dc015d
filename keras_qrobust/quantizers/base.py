"""What every fake quantizer shares: the tfmot ``Quantizer`` interface, straight-through
gradients, config/equality/``__str__``, and per-axis scales."""

from __future__ import annotations

from typing import Sequence

import tensorflow_model_optimization as tfmot

from .._keras import tf

__all__ = ["BaseQuantizer"]


def _round_half_away(x: tf.Tensor) -> tf.Tensor:
    # TFLite rounds weights half away from zero (std::round); tf.round rounds half to even.
    return tf.sign(x) * tf.floor(tf.abs(x) + 0.5)


def _straight_through(x: tf.Tensor, quantized: tf.Tensor) -> tf.Tensor:
    """Forward: ``quantized``. Backward: identity (straight-through estimator)."""
    return x + tf.stop_gradient(quantized - x)


def _reduce_axes(rank: int, axis: Sequence[int] | None) -> list[int] | None:
    """Axes to reduce over so that one scale remains per index of ``axis``."""
    if axis is None:
        return None
    keep = {a % rank for a in axis}
    return [a for a in range(rank) if a not in keep]


class BaseQuantizer(tfmot.quantization.keras.quantizers.Quantizer):
    """Common parts: validation, config, equality and a readable ``__str__``."""

    #: short name used by ``__str__``
    kind = "quantizer"

    def build(self, tensor_shape, name, layer):  # weight quantizers hold no state
        return {}

    def __call__(self, inputs, training=None, weights=None, **kwargs):
        inputs = tf.convert_to_tensor(inputs)
        return _straight_through(inputs, self.quantize(inputs, weights or {}))

    def quantize(self, x: tf.Tensor, weights: dict | None = None) -> tf.Tensor:
        """The quantized values of ``x`` (no gradient handling)."""
        raise NotImplementedError

    def get_config(self) -> dict:
        raise NotImplementedError

    def _describe(self) -> list[str]:
        return [str(self.get_config().get("bits"))]

    def __str__(self) -> str:
        return f"{self.kind}({', '.join(self._describe())})"

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(map(str, self.get_config().items())))))


class _AxisMixin:
    """Per-tensor (``per_axis=False``) or per-channel scales along ``axis``."""

    def _init_axis(self, per_axis: bool, axis: int | Sequence[int]) -> None:
        self.per_axis = bool(per_axis)
        self.axis = (int(axis),) if isinstance(axis, int) else tuple(int(a) for a in axis)

    def _reduce(self, x: tf.Tensor, fn) -> tf.Tensor:
        if not self.per_axis:
            return fn(x)
        return fn(x, axis=_reduce_axes(x.shape.rank, self.axis), keepdims=True)

    def channel_max(self, x: tf.Tensor) -> tf.Tensor:
        """The largest entry of each channel (of the tensor when not ``per_axis``), kept as dims."""
        return self._reduce(x, tf.reduce_max)

    def _axis_config(self) -> dict:
        return {"per_axis": self.per_axis, "axis": list(self.axis) if len(self.axis) > 1 else self.axis[0]}

    def _axis_describe(self) -> list[str]:
        if not self.per_axis:
            return []
        return ["per_axis"] if self.axis == (-1,) else [f"per_axis={list(self.axis)}"]


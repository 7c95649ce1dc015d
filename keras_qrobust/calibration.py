"""Activation-range calibration for post-training quantization.

* :func:`calibrate_relus` — the ranges of a RobustQuantizer model's QuantizedReLU layers,
  set one layer at a time in graph order, each measured on the outputs of the
  already-quantized layers before it.
* :func:`calibrate_tfmot` — post-training calibration of a tfmot ``quantize_apply`` model
  (any scheme): every activation range becomes the range observed on the samples, with no
  weight, BatchNorm statistic or optimizer step changed.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re

import numpy as np

from ._keras import check_model, keras, tf
from .layers import QuantizedReLU

__all__ = ["CALIBRATIONS", "calibrate_relus", "calibrate_tfmot"]

CALIBRATIONS = ("max", "percentile")


def _relu_outputs(layer: QuantizedReLU, pre_activation: tf.Tensor) -> tf.Tensor:
    outputs = tf.nn.relu(pre_activation)
    if layer.max_value is not None:
        outputs = tf.minimum(outputs, float(layer.max_value))
    return outputs


def calibrate_relus(model, samples: np.ndarray, calibration: str = "max", percentile: float = 99.99,
                    batch_size: int = 256) -> dict[str, float]:
    """Set the range of every QuantizedReLU of ``model`` from ``samples``, in graph order.

    ``calibration="max"`` takes the largest ReLU output, ``"percentile"`` its
    ``percentile``-th percentile over all output values. Returns the ranges by layer name.
    """
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    samples = np.asarray(samples, np.float32)
    ranges = {}
    for layer in [l for l in model.layers if isinstance(l, QuantizedReLU)]:
        probe = keras.Model(model.inputs, layer.input)
        batches = (
            _relu_outputs(layer, probe(samples[i:i + batch_size], training=False))
            for i in range(0, len(samples), batch_size)
        )
        if calibration == "max":
            value = max(float(tf.reduce_max(b)) for b in batches)
        else:
            value = _percentile_from_top(batches, len(samples), percentile, probe.output.shape[1:])
        value = value if value > 0 else 1.0  # a ReLU that never fires: any range is exact
        layer.set_range(value)
        ranges[layer.name] = value
    return ranges


def _percentile_from_top(batches, n_samples: int, percentile: float, shape) -> float:
    """Exact ``percentile`` of all values, keeping only the top ``k`` values seen so far."""
    total = n_samples * int(np.prod(list(shape)))
    # round() first: 1000 * (1 - 95/100) is 50.00000000000004 in floating point
    k = max(1, math.ceil(round(total * (100.0 - percentile) / 100.0, 9)))
    top = tf.zeros([0])
    for batch in batches:
        merged = tf.concat([top, tf.reshape(batch, [-1])], axis=0)
        top = tf.math.top_k(merged, k=min(k, int(merged.shape[0])), sorted=False).values
    return float(tf.reduce_min(top))


# --------------------------------------------------------------------------- tfmot models
_RANGE_VARIABLE = re.compile(r"_(min|max|initialized):\d+$")


def _all_layers(model):
    for layer in model.layers:
        yield layer
        inner = getattr(layer, "layer", None)  # tfmot QuantizeWrapper
        if inner is not None:
            yield inner


@contextlib.contextmanager
def _range_tracking(model):
    """Training-mode passes that only measure ranges.

    tfmot's moving-average quantizers get EMA decay 0 (range = this batch's range);
    keras_qrobust ActivationQuantizers are marked uninitialised (the next batch sets them);
    Dropout is disabled and BatchNormalization runs in inference mode; every other variable
    is restored on exit.
    """
    from tensorflow_model_optimization.python.core.quantization.keras import quant_ops

    saved = [(v, v.numpy()) for v in model.variables if not _RANGE_VARIABLE.search(v.name)]
    dropouts = [(l, l.rate) for l in _all_layers(model) if isinstance(l, keras.layers.Dropout)]
    norms = [(l, l.trainable) for l in _all_layers(model)
             if isinstance(l, keras.layers.BatchNormalization)]
    original = quant_ops.MovingAvgQuantize

    @functools.wraps(original)
    def batch_range_quantize(*args, **kwargs):
        kwargs["ema_decay"] = 0.0  # tfmot passes ema_decay=0.999 explicitly: override, not default
        return original(*args, **kwargs)

    quant_ops.MovingAvgQuantize = batch_range_quantize
    try:
        for layer, _ in dropouts:
            layer.rate = 0.0
        for layer, _ in norms:
            layer.trainable = False  # tf_keras: a frozen BatchNormalization uses its moving statistics
        yield
    finally:
        quant_ops.MovingAvgQuantize = original
        for layer, rate in dropouts:
            layer.rate = rate
        for layer, trainable in norms:
            layer.trainable = trainable
        for variable, value in saved:
            variable.assign(value)


def calibrate_tfmot(model, samples, batch_size: int = 1024) -> dict[str, np.ndarray]:
    """Post-training calibration of a model from ``tfmot...quantize_apply``.

    Each activation range is set to the ``[min, max]`` observed over ``samples`` (weights'
    ranges to the weights' own); ranges are measured batch by batch and merged, so later
    layers see the quantization of earlier ones within a batch. Returns the ranges by
    variable name.
    """
    model = check_model(model)
    samples = np.asarray(samples, np.float32)
    if samples.shape[0] == 0:
        raise ValueError("samples is empty: pass at least one calibration input")
    range_vars = [v for v in model.variables if _RANGE_VARIABLE.search(v.name)]
    if not range_vars:
        raise ValueError(
            f"Model '{model.name}' has no quantizer ranges to calibrate: pass the model returned "
            "by tfmot.quantization.keras.quantize_apply."
        )
    merged: dict[str, np.ndarray] = {}
    with _range_tracking(model):
        for start in range(0, len(samples), batch_size):
            for v in range_vars:
                if v.name.endswith(("_initialized:0",)):
                    v.assign(tf.zeros_like(v))
            model(samples[start:start + batch_size], training=True)
            for v in range_vars:
                value = v.numpy()
                if v.name not in merged:
                    merged[v.name] = value
                elif "_min:" in v.name:
                    merged[v.name] = np.minimum(merged[v.name], value)
                else:
                    merged[v.name] = np.maximum(merged[v.name], value)
    for v in range_vars:
        v.assign(merged[v.name])
    return merged

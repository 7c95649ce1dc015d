"""Activation-range calibration for post-training quantization.

* :func:`calibrate` — the ranges of a RobustQuantizer model's QuantizedReLU and
  TensorQuantizer layers (and its integer biases), set one layer at a time in graph order,
  each measured on the outputs of the already-quantized layers before it: for a ReLU the
  maximum, a percentile, or the range that minimizes the mean squared quantization error
  at the layer's bit width; for a tensor everything observed.
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

from .._keras import check_model, keras, tf
from .integer_bias import grid_source, inbound_layers, input_step, round_bias
from ..layers import HardSigmoid, OutputQuantizer, QuantizedReLU, TensorQuantizer
from ..quantizers import score_range
from ..quantizers.grid import activation_levels

__all__ = ["CALIBRATIONS", "calibrate", "calibrate_tfmot", "observed_ranges"]

CALIBRATIONS = ("max", "percentile", "mse")
HISTOGRAM_BINS = 4096
MSE_CANDIDATES = 256


def _relu_outputs(layer: QuantizedReLU, pre_activation: tf.Tensor) -> tf.Tensor:
    outputs = tf.nn.relu(pre_activation)
    if layer.max_value is not None:
        outputs = tf.minimum(outputs, float(layer.max_value))
    return outputs


def calibrate(model, samples: np.ndarray, calibration: str = "mse", percentile: float = 99.99,
              batch_size: int = 256, integer_bias: bool = True) -> dict[str, object]:
    """Set every range of a RobustQuantizer model from ``samples``, in graph order.

    One pass over the graph: each layer runs once on all samples (in batches), and its
    quantizer's range is set from its inputs before it runs, so every range is measured on
    the outputs of the already-quantized layers before it.

    * a QuantizedReLU's ``[0, max]`` per ``calibration``: ``"max"`` — the largest output;
      ``"percentile"`` — the ``percentile``-th percentile of all outputs (exact); ``"mse"`` —
      the ``max`` minimizing ``E[(Q(x) - x)^2]`` for the layer's bit width (histogram of
      4096 bins, 256 candidate ranges up to the largest output), so low bit widths clip
      rare large values and 8 bits keeps nearly the full range;
    * a TensorQuantizer's ``[min, max]``: everything observed (an OutputQuantizer starts at
      the lowest top score, :func:`~keras_qrobust.quantizers.score_range`);
    * with ``integer_bias``, a weight layer's bias is rounded onto its int32 grid
      (:func:`~keras_qrobust.quantization.integer_bias.round_bias`) once its input's range is set.

    Returns the ranges by layer name.
    """
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    samples = np.asarray(samples, np.float32)
    chunks = [tf.constant(samples[i:i + batch_size]) for i in range(0, len(samples), batch_size)]
    ranges: dict[str, object] = {}

    def before_layer(layer, inputs: list):
        if integer_bias:
            round_bias(layer)
        if isinstance(layer, TensorQuantizer):
            low = min(float(tf.reduce_min(x)) for x in inputs)
            high = max(float(tf.reduce_max(x)) for x in inputs)
            if isinstance(layer, OutputQuantizer) and inputs[0].shape.rank == 2 and inputs[0].shape[-1] > 1:
                top = min(float(tf.reduce_min(tf.reduce_max(x, axis=-1))) for x in inputs)
                low, high = score_range(low, high, top)
            low, high = _fixed_output_range(layer) or _tie_free_range(layer, low, high)
            layer.set_range(low, high)
            ranges[layer.name] = (float(layer.min.numpy()), float(layer.max.numpy()))
            return
        if not isinstance(layer, QuantizedReLU):
            return
        outputs = [_relu_outputs(layer, x) for x in inputs]
        largest = max(float(tf.reduce_max(x)) for x in outputs)
        if calibration == "max" or largest <= 0:
            value = largest
        elif calibration == "percentile":
            value = _percentile_from_top(outputs, percentile)
        else:
            value = _mse_range(outputs, largest, layer.activation_quantizer.bits)
        value = value if value > 0 else 1.0  # a ReLU that never fires: any range is exact
        layer.set_range(value)
        ranges[layer.name] = value

    _walk_graph(model, chunks, before_layer)
    return ranges


#: int8 output grids the TFLite kernels of these activations require (scale, zero point)
_FIXED_GRIDS = {"sigmoid": (1 / 256, -128), "softmax": (1 / 256, -128), "tanh": (1 / 128, 0)}


def _fixed_output_range(quantizer: TensorQuantizer) -> tuple[float, float] | None:
    """The range of a TensorQuantizer after a sigmoid, softmax, tanh or hard sigmoid: the
    int8 kernels of these ops write a fixed grid (e.g. step 1/256 from 0 for a softmax;
    :func:`hard_sigmoid_top`), so the Keras model rounds onto that grid rather than
    onto a calibrated one the runtime would requantize to."""
    source = inbound_layers(quantizer)
    if len(source) != 1:
        return None
    (source,) = source
    if isinstance(source, HardSigmoid):
        return 0.0, hard_sigmoid_top(source)
    if isinstance(source, keras.layers.Softmax):
        name = "softmax"
    elif isinstance(source, keras.layers.Activation):
        name = getattr(source.activation, "__name__", None)
    else:
        return None
    if name not in _FIXED_GRIDS:
        return None
    scale, zero_point = _FIXED_GRIDS[name]
    return (-128 - zero_point) * scale, (127 - zero_point) * scale


def _input_grid(layer) -> np.ndarray | None:
    """Every value the int8 input of ``layer`` can take (None if that input is float)."""
    source, levels = grid_source(layer)
    if isinstance(source, TensorQuantizer):
        step = source.step
        return float(source.min.numpy()) + step * np.arange(256, dtype=np.float64)
    if isinstance(source, QuantizedReLU):
        return source.step * np.arange(levels + 1, dtype=np.float64)
    return None


def hard_sigmoid_top(layer: HardSigmoid, candidates: int = 256, *, margin: float = 0.02) -> float:
    """The top ``w`` of a HardSigmoid's int8 output grid ``[0, w]``.

    A value ``x/6 + b`` exactly (or within float32 noise of) halfway between two levels
    ``w/255`` apart can round either way in the integer kernel; on ``[0, 1]`` the input
    ``x = 0`` is such a tie. The input takes at most 256 values, so ``w`` is chosen among
    ``candidates`` values just below :attr:`HardSigmoid.INT8_TOP` as the first that keeps
    every one of them at least ``margin`` of a step from a tie (else the one that keeps
    them farthest).
    """
    values = _input_grid(layer)
    top = HardSigmoid.INT8_TOP
    if values is None:
        return top
    gates = values * layer.SLOPE + float(layer.bias.numpy())
    gates = gates[(gates > 0.0) & (gates < 1.0)]
    if not len(gates):
        return top
    best, best_distance = top, -1.0
    for i in range(candidates):
        w = top * (1.0 - i * 1e-4 / math.sqrt(3.0))
        steps = gates * 255.0 / w
        distance = float(np.min(np.abs(steps - np.floor(steps) - 0.5)))
        if distance >= margin:
            return w
        if distance > best_distance:
            best, best_distance = w, distance
    return best


def _tie_free_range(quantizer: TensorQuantizer, low: float, high: float) -> tuple[float, float]:
    """The range of a TensorQuantizer that never puts a value exactly halfway between levels.

    Sums, products and means of values on grids are on finer grids; a calibrated range
    whose step is a simple fraction of theirs (its end is one of those values) puts many of
    them exactly halfway between two levels, where float rounding and the integer kernels
    (half away from zero, half to even) disagree. So:

    * a mean of ``count`` values on a ReLU grid ``Δa·j`` (``j ≤ L = 2^b - 1``) is a multiple
      of ``Δa/count``: when ``count·L ≤ 255`` that grid fits int8 and is used — the mean is
      stored exactly, with no rounding at all;
    * the model input keeps its observed range (data on a grid of its own, e.g. pixels in
      steps of 1/255, stays exact);
    * any other range is widened by a factor ``1 + 1/(1000√2)``, so its step is no simple
      fraction of the grids its values come from.
    """
    (source,) = inbound_layers(quantizer) or [None]
    if isinstance(source, keras.layers.InputLayer):
        return low, high
    if isinstance(source, (keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling2D)):
        count = int(np.prod(source.pool_size if isinstance(source, keras.layers.AveragePooling2D)
                            else source.input_shape[1:-1]))
        grid, levels = grid_source(source)
        if isinstance(grid, QuantizedReLU) and count * levels <= 255:
            return 0.0, 255 * input_step(source) / count
    return low, low + (high - low) * (1 + 1 / (1000 * math.sqrt(2)))


def observed_ranges(probe, samples: np.ndarray, batch_size: int, class_scores: set[int]) -> list[tuple[float, float]]:
    """The int8 range of each output of ``probe`` over ``samples`` (run in batches).

    An output whose index is in ``class_scores`` and that is (n, C ≥ 2) starts its range at
    its lowest top score (:func:`~keras_qrobust.quantizers.score_range`); the others span
    everything observed.
    """
    count = len(probe.outputs)
    low, high, lowest_top = np.full(count, np.inf), np.full(count, -np.inf), np.full(count, np.inf)
    for start in range(0, len(samples), batch_size):
        outputs = probe(samples[start:start + batch_size], training=False)
        for i, out in enumerate(outputs if isinstance(outputs, (list, tuple)) else [outputs]):
            out = np.asarray(out)
            low[i], high[i] = min(low[i], out.min()), max(high[i], out.max())
            if i in class_scores and out.ndim == 2 and out.shape[1] > 1:
                lowest_top[i] = min(lowest_top[i], out.max(axis=1).min())
    return [score_range(lo, hi, top) for lo, hi, top in zip(low, high, lowest_top)]


def _walk_graph(model, chunks: list, before_layer) -> None:
    """Run ``model`` layer by layer on every chunk (inference mode), calling
    ``before_layer(layer, input_chunks)`` before each single-input layer runs.

    The node order is tf_keras's own (``Functional._run_internal_graph``); a tensor is
    dropped once its last consumer has run.
    """
    if not hasattr(model, "_nodes_by_depth") or not model._is_graph_network:
        raise ValueError(f"Model '{model.name}' is not a Sequential/functional model with an input")
    if len(model.inputs) != 1:
        raise ValueError(f"Model '{model.name}' has {len(model.inputs)} inputs; calibration needs one")
    values = {str(id(model.inputs[0])): chunks}
    uses = dict(model._tensor_usage_count)
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input or any(t not in values for t in node.flat_input_ids):
                continue
            layer = node.layer
            if len(node.flat_input_ids) == 1:
                before_layer(layer, values[node.flat_input_ids[0]])
            outputs = []
            for c in range(len(chunks)):
                per_chunk = {}
                for t in node.flat_input_ids:  # one copy per use: map_arguments pops them
                    per_chunk.setdefault(t, []).append(values[t][c])
                args, kwargs = node.map_arguments(per_chunk)
                if layer._call_spec.expects_training_arg:
                    kwargs = {**kwargs, "training": False}
                outputs.append(tf.nest.flatten(layer(*args, **kwargs)))
            for i, t in enumerate(node.flat_output_ids):
                values[t] = [out[i] for out in outputs]
            for t in set(node.flat_input_ids):
                uses[t] -= node.flat_input_ids.count(t)
                if uses[t] <= 0:
                    values.pop(t, None)


def _mse_range(outputs: list, largest: float, bits: int) -> float:
    """The range in (0, largest] with the least mean squared quantization error."""
    edges = np.linspace(0.0, largest, HISTOGRAM_BINS + 1)
    # exact zeros (most ReLU outputs) quantize to 0 at any range: only positives matter. Equal
    # bins given as (count, range) take numpy's direct-indexing path instead of sorting every
    # value against an array of edges; in float64 its edges are exactly ``edges``
    counts = sum(np.histogram(v[v > 0].astype(np.float64), bins=HISTOGRAM_BINS, range=(0.0, largest))[0]
                 for v in (np.asarray(x).ravel() for x in outputs))
    centers = (edges[:-1] + edges[1:]) / 2
    candidates = largest * np.arange(1, MSE_CANDIDATES + 1) / MSE_CANDIDATES
    steps = candidates[:, None] / activation_levels(bits)
    clipped = np.minimum(centers[None, :], candidates[:, None])
    errors = (counts * (np.floor(clipped / steps + 0.5) * steps - centers) ** 2).sum(axis=1)
    return float(candidates[int(np.argmin(errors))])


def _percentile_from_top(outputs: list, percentile: float) -> float:
    """Exact ``percentile`` of all values, keeping only the top ``k`` values seen so far."""
    total = sum(int(np.prod(x.shape)) for x in outputs)
    # round() first: 1000 * (1 - 95/100) is 50.00000000000004 in floating point
    k = max(1, math.ceil(round(total * (100.0 - percentile) / 100.0, 9)))
    top = tf.zeros([0])
    for x in outputs:
        merged = tf.concat([top, tf.reshape(x, [-1])], axis=0)
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

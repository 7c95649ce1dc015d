""":func:`profile`: size, #params, #MACs, peak memory and latency of each artifact, as a table."""

from __future__ import annotations

import math
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np

from ..._keras import keras
from .. import runtime
from ._common import _batch, _check_graph_model, _check_positive_int
from .macs import count_macs
from .memory import _keras_memory, memory_analysis
from .params import _keras_weight_bytes, count_params
from .precision import _keras_precision, _precision
from .table import ProfileRow, ProfileTable

__all__ = ["profile"]


def _time(call, runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def _normalise(artifacts, names) -> list[tuple[str | None, Any]]:
    if isinstance(artifacts, (str, os.PathLike, keras.Model, runtime.DeployedModel)):
        artifacts = [artifacts]
    if isinstance(artifacts, Mapping):
        if names is not None:
            raise ValueError("give names either as the keys of artifacts or as names=, not both")
        return [(str(name), item) for name, item in artifacts.items()]
    items = list(artifacts)
    if names is None:
        return [(None, item) for item in items]
    names = list(names)
    if len(names) != len(items):
        raise ValueError(f"got {len(names)} names for {len(items)} artifacts")
    return list(zip(map(str, names), items))


def _given_precision(precisions, index: int, name: str) -> str | None:
    if precisions is None:
        return None
    if isinstance(precisions, str):
        return precisions
    if isinstance(precisions, Mapping):
        return precisions.get(name)
    precisions = list(precisions)
    return precisions[index] if index < len(precisions) else None


def profile(artifacts, *, keras_model=None, x=None, batch_size: int = 32, runs: int = 100, warmup: int = 5,
            names: Sequence[str] | None = None,
            precisions: Sequence[str | None] | Mapping[str, str] | str | None = None,
            num_threads: int | None = None) -> ProfileTable:
    """Profile artifacts as in Zhou et al. 2022, Table I.

    ``artifacts``: paths (``.tflite``/``.onnx``/``.fbz``, run through :func:`runtime.load`),
    loaded :class:`~keras_qrobust.export.runtime.DeployedModel` s and/or tf_keras models
    (format ``"keras"``, run with ``predict_on_batch``), as a list or a ``{name: artifact}``
    mapping. ``keras_model`` gives #params/#MACs of the files (the network they compute);
    ``x`` the input batch (its first ``batch_size`` rows, repeated if fewer; zeros of the
    input shape without it). ``precisions`` (a list aligned with ``artifacts``, a mapping by
    name, or one string) overrides the inferred precision: tflite the weight dtype ("int8",
    "float32", "int8 weights, float32 activations" for dynamic range); onnx "int8 QDQ" /
    "uint8 QDQ" / "int4 QDQ" by the narrowest initializer a DequantizeLinear reads, else the float
    dtype; keras "float32 (fake-quant)" with quantized layers, else "float32".
    ``num_threads`` is passed to the runtimes. Latency is the wall time of one ``predict`` of
    the batch, ``runs`` timed runs after ``warmup`` untimed ones.
    """
    batch_size = _check_positive_int(batch_size, "batch_size")
    runs = _check_positive_int(runs, "runs")
    warmup = _check_positive_int(warmup, "warmup", minimum=0)
    items = _normalise(artifacts, names)
    if not items:
        raise ValueError("no artifacts to profile")
    if keras_model is not None:
        keras_params, keras_macs = count_params(keras_model), count_macs(keras_model)
    else:
        keras_params = keras_macs = None
    rows = []
    for index, (name, item) in enumerate(items):
        if isinstance(item, keras.Model) or not isinstance(item, (str, os.PathLike, runtime.DeployedModel)):
            model = _check_graph_model(item, "profile")
            batch = _batch(x, tuple(model.input_shape[1:]), batch_size)
            memory = _keras_memory(model, batch_size)
            times = _time(lambda: model.predict_on_batch(batch), runs, warmup)
            name = name or model.name
            precision = _given_precision(precisions, index, name) or _keras_precision(model)
            fmt, path, size = "keras", None, _keras_weight_bytes(model)
            params, macs = count_params(model), count_macs(model)
        else:
            deployed = item if isinstance(item, runtime.DeployedModel) else runtime.load(item, num_threads)
            path = deployed.path
            name = name or path.name
            batch = _batch(x, deployed.input_shape, batch_size)
            memory = memory_analysis(deployed, batch_size, x=batch)
            times = _time(lambda: deployed.predict(batch, batch_size=batch_size), runs, warmup)
            precision = _given_precision(precisions, index, name) or _precision(path)
            fmt, size = deployed.format, os.path.getsize(path)
            path = str(path)
            params, macs = keras_params, keras_macs
        std = float(np.std(times, ddof=1)) if len(times) > 1 else 0.0
        rows.append(ProfileRow(
            name=name, format=fmt, precision=precision, size_bytes=int(size), params=params, macs=macs,
            peak_memory_bytes=int(memory.peak_bytes), memory_method=memory.method,
            latency_ms_mean=float(np.mean(times)), latency_ms_std=std if math.isfinite(std) else 0.0,
            batch_size=batch_size, runs=runs, path=path, weights_bytes=int(memory.weights_bytes),
            latencies_ms=tuple(float(t) for t in times),
        ))
    return ProfileTable(tuple(rows), batch_size=batch_size, runs=runs, warmup=warmup)

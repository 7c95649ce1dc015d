"""Deployment profile of exported models: the columns of Zhou et al. 2022, Table I.

Zhou et al. (2022) compare deployed models by format, precision, file size, number of
parameters, number of multiply-accumulates (MACs), peak memory and inference latency, the
latency being measured on a batch of 32 inputs and averaged over 100 executions. ``profile``
builds the same table for ``.tflite`` / ``.onnx`` / ``.fbz`` artifacts (run in their own
runtime through :func:`keras_qrobust.export.runtime.load`) and for tf_keras models:

>>> table = profile(["model_f32.tflite", "model_int8.tflite", "model.onnx"], keras_model=model)
>>> print(table.to_markdown())

Definitions (all deterministic except latency):

* **size**: the artifact's file size (``os.path.getsize``); MB = 10**6 bytes. For a Keras
  model (no file) the bytes of its weights as held in memory.
* **#params**: :func:`count_params` of the Keras model (the exported files compute the same
  network); ``None`` for a file profiled without ``keras_model``.
* **#MACs**: :func:`count_macs`, multiply-accumulates for one input example.
* **peak memory**: :func:`peak_memory`, weights bytes plus the peak of live activation bytes
  over the op execution order, for a batch of ``batch_size``.
* **latency**: wall time of one ``predict`` call on one batch, ``runs`` times after ``warmup``
  untimed runs; mean and sample standard deviation in milliseconds.

Modules: ``params`` (#params, weight bytes), ``macs``, ``memory`` (peak memory; the model of
live tensors it applies to every format is in ``liveness``), ``tflite_reader`` and
``onnx_reader`` (the tensors of each file format, for its memory and its ``precision``),
``table`` (the rows and their Markdown/JSON views) and ``run`` (:func:`profile`: latency
timing and the table).
"""

from .liveness import MemoryAnalysis
from .macs import count_macs
from .memory import memory_analysis, peak_memory
from .params import count_params, weight_bytes
from .run import profile
from .table import ProfileRow, ProfileTable

__all__ = [
    "ProfileRow",
    "ProfileTable",
    "count_params",
    "weight_bytes",
    "count_macs",
    "peak_memory",
    "memory_analysis",
    "MemoryAnalysis",
    "profile",
]

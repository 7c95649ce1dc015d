"""The profile table: one :class:`ProfileRow` per artifact, with Markdown and JSON views."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["ProfileRow", "ProfileTable", "MB"]

MB = 1_000_000


@dataclass(frozen=True)
class ProfileRow:
    """One artifact's deployment profile (one row of Zhou et al. 2022, Table I)."""

    name: str
    format: str  # "tflite", "onnx", "akida" or "keras"
    precision: str
    size_bytes: int  # file size; a Keras model: bytes of its weights
    params: int | None
    macs: int | None  # per input example
    peak_memory_bytes: int
    memory_method: str
    latency_ms_mean: float  # one predict on a batch of ``batch_size``
    latency_ms_std: float
    batch_size: int
    runs: int
    path: str | None = None
    weights_bytes: int | None = None  # the weights part of peak_memory_bytes
    latencies_ms: tuple[float, ...] = field(default=(), repr=False)

    @property
    def size_mb(self) -> float:
        return self.size_bytes / MB

    @property
    def peak_memory_mb(self) -> float:
        return self.peak_memory_bytes / MB

    @property
    def bytes_per_param(self) -> float | None:
        """File size / #params (about 4 for float32, about 1 for int8); None without #params."""
        return self.size_bytes / self.params if self.params else None

    @property
    def tensor_bytes_per_param(self) -> float | None:
        """``weights_bytes`` / #params: the file's constant tensors alone (weights at their
        stored width, scales, zero points, biases), without the graph around them. It is the
        floor of :attr:`bytes_per_param` for this format and quantization; with per-channel
        scales, one float32 scale and one int32 bias per output channel, it is above
        bits/8 for layers with few weights per channel (depthwise 3×3: 9 weights, 8 bytes)."""
        return self.weights_bytes / self.params if self.params and self.weights_bytes is not None else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["latencies_ms"] = list(self.latencies_ms)
        data.update(size_mb=self.size_mb, peak_memory_mb=self.peak_memory_mb, bytes_per_param=self.bytes_per_param,
                    tensor_bytes_per_param=self.tensor_bytes_per_param)
        return data


_COLUMNS = ("Model", "Format", "Precision", "Size (bytes)", "Size (MB)", "#Params", "Bytes/param",
            "Tensor bytes/param", "#MACs", "Peak memory (MB)", "Memory method", "Latency mean (ms)", "Latency std (ms)")


def _cell(value, fmt: str = "{}") -> str:
    return "–" if value is None else fmt.format(value).replace("|", "\\|")


@dataclass(frozen=True)
class ProfileTable:
    """Profile rows with Markdown and JSON views."""

    rows: tuple[ProfileRow, ...]
    batch_size: int = 32
    runs: int = 100
    warmup: int = 5

    def __iter__(self) -> Iterator[ProfileRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | str) -> ProfileRow:
        if isinstance(key, str):
            for row in self.rows:
                if row.name == key:
                    return row
            raise KeyError(f"no row named {key!r}; rows: {', '.join(r.name for r in self.rows)}")
        return self.rows[key]

    def to_markdown(self) -> str:
        """A Markdown table with the Table I columns (MB with 3 decimals, ms with 2)."""
        lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * 7 + ["---"] + ["---:"] * 2)
                 + "|"]
        for r in self.rows:
            cells = [_cell(r.name), r.format, _cell(r.precision), f"{r.size_bytes:,}", f"{r.size_mb:.3f}",
                     _cell(r.params, "{:,}"), _cell(r.bytes_per_param, "{:.2f}"),
                     _cell(r.tensor_bytes_per_param, "{:.2f}"), _cell(r.macs, "{:,}"),
                     f"{r.peak_memory_mb:.3f}", _cell(r.memory_method), f"{r.latency_ms_mean:.2f}",
                     f"{r.latency_ms_std:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
        caption = (f"Latency: one batch of {self.batch_size}, mean ± std over {self.runs} runs after "
                   f"{self.warmup} warm-up runs; peak memory for a batch of {self.batch_size}; MB = 10^6 bytes.")
        return "\n".join(lines) + "\n\n" + caption + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: ``{"batch_size", "runs", "warmup", "rows": [...]}``."""
        data = {"batch_size": self.batch_size, "runs": self.runs, "warmup": self.warmup,
                "rows": [row.to_dict() for row in self.rows]}
        return json.loads(json.dumps(data, default=_json_default))


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, (Path, np.dtype)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")

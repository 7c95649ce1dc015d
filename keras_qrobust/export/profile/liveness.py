"""The peak-memory model every format shares: weights bytes plus the peak of the live activation bytes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

__all__ = ["MemoryAnalysis"]


@dataclass(frozen=True)
class MemoryAnalysis:
    """The parts of :func:`peak_memory`: ``weights_bytes + activations_bytes = peak_bytes``."""

    peak_bytes: int
    weights_bytes: int
    activations_bytes: int
    method: str


def _activation_peak(ops: Sequence[tuple[Sequence, Sequence]], sizes: Mapping, graph_inputs: Sequence,
                     graph_outputs: Sequence) -> int:
    """Peak of the summed sizes of the live tensors over ``ops`` (``(inputs, outputs)`` in
    execution order). A tensor lives from the op producing it (graph inputs: from the start)
    to its last consumer (graph outputs: to the end); an op's inputs and outputs are alive
    together while it runs. Only tensors in ``sizes`` (the activations) are counted."""
    end = len(ops)
    last_use: dict = {}
    for i, (inputs, _) in enumerate(ops):
        for tensor in inputs:
            last_use[tensor] = i
    for tensor in graph_outputs:
        last_use[tensor] = end
    alive = {t: sizes[t] for t in graph_inputs if t in sizes}
    peak = sum(alive.values())
    for i, (_, outputs) in enumerate(ops):
        for tensor in outputs:
            if tensor in sizes:
                alive[tensor] = sizes[tensor]
        peak = max(peak, sum(alive.values()))
        for tensor in [t for t in alive if last_use.get(t, i) <= i]:
            del alive[tensor]
    return int(peak)

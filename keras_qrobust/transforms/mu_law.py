"""Rewrite: put the last N Dense layers through the μ-law (Song et al. 2020, eq. 3).

Song et al. map the weights of the last layer(s) after training with the μ-law compressor
to add nonlinearity near the decision (the last layer on MNIST, the last residual block and
the FC layer on CIFAR-10). :func:`apply_mu_law` does this for the last ``last_n`` weight
layers of a model, which must all be Dense (see docs/methods.md for both modes):

* float ``Dense`` (or ``MuLawDense``) -> :class:`~keras_qrobust.layers.MuLawDense`;
* ``QuantizedDense`` (a ``RobustQuantizer`` output) keeps its class; its kernel quantizer
  becomes a :class:`~keras_qrobust.quantizers.MuLawQuantizer` with the layer's bit width
  (or ``bits``). In ``"compand"`` mode this is what ``RobustQuantizer(mu_law_last=N)``
  produces; in ``"map"`` mode it is the paper's quantized model followed by the mapping.

Weight layers are counted as ``RobustQuantizer(mu_law_last=N)`` counts them: every
Dense/Conv2D/DepthwiseConv2D/SeparableConv2D (float, quantized or Lipschitz), in graph
order. Convolutions are not supported: when one is among the last N the rewrite raises and
says how many trailing Dense layers there are.
"""

from __future__ import annotations

from .. import quantizers as qz
from ._graph import Graph, UnsupportedModelError, graph_rewrite
from ._kinds import QUANTIZED_WEIGHT_LAYERS, WEIGHT_LAYERS

__all__ = ["apply_mu_law"]

_DENSE_KINDS = ("Dense", "MuLawDense", "QuantizedDense")
_OTHER_WEIGHT_KINDS = ("LipschitzDense", "LipschitzConv2D")
_WEIGHT_KINDS = (*WEIGHT_LAYERS, *QUANTIZED_WEIGHT_LAYERS, *_OTHER_WEIGHT_KINDS, "MuLawDense")


def _check_last_n(last_n) -> int:
    if isinstance(last_n, bool) or not isinstance(last_n, int) or last_n < 1:
        raise ValueError(f"last_n must be an int >= 1 (the number of final Dense layers to map), got {last_n!r}")
    return last_n


def _trailing_dense(weight_layers: list[dict]) -> int:
    count = 0
    for entry in reversed(weight_layers):
        if Graph.kind(entry) not in _DENSE_KINDS:
            break
        count += 1
    return count


def _describe(entries: list[dict]) -> str:
    return ", ".join(f"'{e['name']}' ({Graph.kind(e)})" for e in entries) or "none"


def _last_weight_layers(graph: Graph, last_n: int) -> list[dict]:
    weight_layers = [e for e in graph.layers if Graph.kind(e) in _WEIGHT_KINDS]
    n_dense = sum(Graph.kind(e) in _DENSE_KINDS for e in weight_layers)
    if len(weight_layers) < last_n:
        raise UnsupportedModelError(
            f"apply_mu_law(last_n={last_n}): model '{graph.config.get('name')}' has only "
            f"{len(weight_layers)} weight layer(s), {n_dense} of them Dense: {_describe(weight_layers)}. "
            f"Use last_n <= {_trailing_dense(weight_layers)}."
        )
    chosen = weight_layers[-last_n:]
    for entry in chosen:
        kind = Graph.kind(entry)
        if kind in _DENSE_KINDS:
            continue
        fix = f"use last_n <= {_trailing_dense(weight_layers)} (the number of Dense layers at the end)"
        if kind == "LipschitzDense":
            fix = "turn the Lipschitz layers back into Dense with keras_qrobust.transforms.strip_lipschitz first"
        elif "Conv" in kind:
            fix += (
                ", or quantize with RobustQuantizer(weight_bits=..., mu_law_last=N), which also "
                "compands convolution kernels"
            )
        raise UnsupportedModelError(
            f"apply_mu_law supports Dense layers only, but the last {last_n} weight layers of model "
            f"'{graph.config.get('name')}' include '{entry['name']}' ({kind}): {fix}."
        )
    return chosen


def _quantized_bits(config: dict) -> int | None:
    quantizer = qz.get(config.get("kernel_quantizer"))
    return None if quantizer is None else getattr(quantizer, "bits", None)


def _mu_law_quantizer(entry: dict, mu: float, mode: str, bits: int | None) -> qz.MuLawQuantizer:
    if bits is None and Graph.kind(entry) == "QuantizedDense":
        bits = _quantized_bits(entry["config"])
    if mode == "compand" and bits is None:
        raise ValueError(
            f"apply_mu_law(mode='compand') needs bits for layer '{entry['name']}' (a float layer): pass "
            "bits=<weight bits>, or mode='map' for the plain mapping W' = s·F(W/s)."
        )
    return qz.MuLawQuantizer(bits, mu=mu, mode=mode)


@graph_rewrite
def apply_mu_law(
    graph: Graph, last_n: int = 1, mu: float = 255.0, mode: str = "compand", bits: int | None = None
) -> Graph:
    """Put the kernels of the last ``last_n`` Dense layers through the μ-law, keeping their weights.

    With ``s = max|W|`` per kernel, ``F`` the μ-law compressor and ``Q_b`` the symmetric
    ``b``-bit grid on ``[−1, 1]`` (Song et al. 2020, eq. 3; docs/methods.md):

    * ``mode="compand"``: ``W' = s·F⁻¹(Q_b(F(W/s)))`` — needs ``bits`` for float layers;
      a ``QuantizedDense`` uses its own bit width unless ``bits`` is given.
    * ``mode="map"``: ``W' = s·F(W/s)`` (with bits: ``s·F(Q_b(W/s))``), the paper's
      post-training mapping; it changes the function and masks gradients, so score it with
      gradient-free and transfer attacks too (docs/limits.md).

    Takes a model (returns a new model; the one passed is not modified) or a Graph. Raises
    ``ValueError`` when the model has fewer than ``last_n`` weight layers or a non-Dense
    layer is among them.
    """
    last_n = _check_last_n(last_n)
    if mode not in qz.MuLawQuantizer.MODES:
        raise ValueError(f"mode must be one of {qz.MuLawQuantizer.MODES}, got {mode!r}")
    if bits is not None:
        bits = qz.check_bits(bits)
    graph = graph.copy()
    for entry in _last_weight_layers(graph, last_n):
        quantizer = _mu_law_quantizer(entry, mu, mode, bits)
        config = dict(entry["config"])
        if Graph.kind(entry) == "QuantizedDense":
            config["kernel_quantizer"] = qz.serialize(quantizer)
            graph.replace(entry["name"], "QuantizedDense", config)
        else:
            graph.replace(entry["name"], "MuLawDense", {**config, **quantizer.get_config()})
    return graph

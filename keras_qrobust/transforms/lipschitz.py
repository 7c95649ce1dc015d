"""Rewrites: Dense/Conv2D <-> LipschitzDense/LipschitzConv2D, keeping the weights.

:func:`to_lipschitz` makes an existing model's Dense and Conv2D layers Lipschitz-regularized
(Defensive Quantization, Lin et al. 2019; docs/methods.md) so it can be fine-tuned with the
orthogonality loss (and optionally spectral normalization). :func:`strip_lipschitz` turns
them back into plain Keras layers computing the same function, e.g. before
``RobustQuantizer.quantize`` or an export, which only know the plain layers.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from ..layers.regularizers import DEFAULT_BETA, check_beta
from ._graph import Graph, UnsupportedModelError, graph_rewrite
from ._kinds import QUANTIZED_WEIGHT_LAYERS

__all__ = ["to_lipschitz", "strip_lipschitz", "LIPSCHITZ_LAYERS"]

#: Keras class name -> its Lipschitz twin
LIPSCHITZ_LAYERS = {"Dense": "LipschitzDense", "Conv2D": "LipschitzConv2D"}
_PLAIN_LAYERS = {twin: plain for plain, twin in LIPSCHITZ_LAYERS.items()}
_LIPSCHITZ_ARGS = ("beta", "spectral_norm")
_SIGMA_EPS = 1e-12  # as keras_qrobust.layers._SIGMA_EPS
_L2_NORMALIZE_EPS = 1e-12


def _kernel_matrix(kernel: np.ndarray) -> np.ndarray:
    return np.asarray(kernel, np.float64).reshape(-1, kernel.shape[-1])


def _top_right_singular_vector(kernel: np.ndarray) -> np.ndarray:
    _, _, vt = np.linalg.svd(_kernel_matrix(kernel), full_matrices=False)
    return vt[0].astype(kernel.dtype)


def _targets(graph: Graph, layers: Iterable[str] | str | None) -> list[str]:
    """Names of the layers to swap; raise when a requested layer cannot be swapped."""
    eligible = [e["name"] for e in graph.layers if Graph.kind(e) in LIPSCHITZ_LAYERS]
    if layers is None:
        if not eligible:
            raise UnsupportedModelError(_nothing_to_swap(graph))
        return eligible
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ValueError("layers is empty: name at least one Dense/Conv2D layer, or pass layers=None for all")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"layers must be layer names (str), got {name!r}")
        if not graph.has_layer(name):
            raise ValueError(
                f"Model '{graph.config.get('name')}' has no layer '{name}'; its Dense/Conv2D layers are: "
                f"{', '.join(eligible) or 'none'}"
            )
        kind = Graph.kind(graph.layer(name))
        if kind not in LIPSCHITZ_LAYERS:
            raise ValueError(
                f"Layer '{name}' is a {kind}; to_lipschitz swaps Dense and Conv2D layers only. For other "
                "layers pass kernel_regularizer=keras_qrobust.layers.regularizers.OrthogonalityRegularizer(beta) "
                "when building them."
            )
    return names


def _nothing_to_swap(graph: Graph) -> str:
    kinds = [(e["name"], Graph.kind(e)) for e in graph.layers]
    quantized = [f"'{n}' ({k})" for n, k in kinds if k in QUANTIZED_WEIGHT_LAYERS]
    lipschitz = [f"'{n}' ({k})" for n, k in kinds if k in _PLAIN_LAYERS]
    message = f"Model '{graph.config.get('name')}' has no Dense or Conv2D layer to make Lipschitz"
    if quantized:
        message += (
            f"; its weight layers are already quantized ({', '.join(quantized)}). Apply to_lipschitz "
            "to the float model, fine-tune it, then quantize"
        )
    elif lipschitz:
        message += f"; these layers are Lipschitz already: {', '.join(lipschitz)}"
    return message + (
        ". to_lipschitz swaps keras.layers.Dense/Conv2D for LipschitzDense/LipschitzConv2D; for other "
        "layers pass kernel_regularizer=keras_qrobust.layers.regularizers.OrthogonalityRegularizer(beta)."
    )


@graph_rewrite
def to_lipschitz(
    graph: Graph,
    beta: float = DEFAULT_BETA,
    spectral_norm: bool = False,
    layers: Iterable[str] | str | None = None,
) -> Graph:
    """Swap Dense/Conv2D for LipschitzDense/LipschitzConv2D with the same weights.

    Every Dense and Conv2D (or only those named in ``layers``) becomes its Lipschitz twin
    with every original argument kept, plus ``beta`` (strength of the loss
    ``(β/2)·‖WᵀW − I‖²_F``, Lin et al. 2019) and ``spectral_norm``. Without spectral
    normalization the new model computes exactly what the old one did; the difference is
    the orthogonality loss in ``model.losses`` during further training. With
    ``spectral_norm=True`` each layer computes with ``W/σ_max(W)``: the persistent power
    iteration vector ``u`` starts at the top right singular vector of the kernel (by SVD),
    so ``σ`` is exact from the first call.

    Takes a model (returns a new model; the one passed is not modified) or a
    :class:`~keras_qrobust.transforms.Graph`. Raises ``ValueError`` when the model has no
    Dense/Conv2D layer or ``layers`` names a missing or unsupported layer.
    """
    beta = check_beta(beta)
    if not isinstance(spectral_norm, bool):
        raise TypeError(f"spectral_norm must be True or False, got {spectral_norm!r}")
    graph = graph.copy()
    for name in _targets(graph, layers):
        entry = graph.layer(name)
        graph.replace(name, LIPSCHITZ_LAYERS[Graph.kind(entry)], {**entry["config"], "beta": beta,
                                                              "spectral_norm": spectral_norm})
        if spectral_norm:
            kernel = graph.weights[name][0]
            graph.weights[name] = [*graph.weights[name], _top_right_singular_vector(kernel)]
    return graph


def _spectral_sigma(kernel: np.ndarray, u: np.ndarray) -> float:
    """``‖W û‖`` as ``LipschitzKernelMixin`` computes it at inference."""
    u = np.asarray(u, np.float64)
    u_hat = u / np.sqrt(max(np.sum(u**2), _L2_NORMALIZE_EPS))  # tf.math.l2_normalize
    wu = _kernel_matrix(kernel) @ u_hat
    return float(np.sqrt(np.sum(wu**2) + _SIGMA_EPS**2))


@graph_rewrite
def strip_lipschitz(graph: Graph) -> Graph:
    """Turn LipschitzDense/LipschitzConv2D back into Dense/Conv2D computing the same outputs.

    The orthogonality loss is dropped. A spectrally normalized layer gets its inference
    kernel ``W/σ`` (``σ`` from its stored ``u``) as the plain layer's kernel, so the result
    matches the Lipschitz model in inference mode. Use it before ``RobustQuantizer.quantize``,
    tfmot or an exporter. Takes a model (returns a new one) or a Graph; a model without
    Lipschitz layers comes back unchanged.
    """
    graph = graph.copy()
    for entry in list(graph.layers):
        kind = Graph.kind(entry)
        if kind not in _PLAIN_LAYERS:
            continue
        name, config = entry["name"], dict(entry["config"])
        weights = list(graph.weights[name])
        if config.get("spectral_norm"):
            kernel, u = weights[0], weights.pop()
            weights[0] = (kernel / _spectral_sigma(kernel, u)).astype(kernel.dtype)
        for arg in _LIPSCHITZ_ARGS:
            config.pop(arg, None)
        graph.replace(name, _PLAIN_LAYERS[kind], config)
        graph.weights[name] = weights
    return graph

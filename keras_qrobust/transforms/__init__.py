"""Graph rewrites, one per module. Each takes a model (returns a new model) or a Graph."""

from ._graph import Graph, UnsupportedModelError
from .fold_batchnorm import fold_batchnorm
from .fold_hard_sigmoid import fold_hard_sigmoid
from .lipschitz import strip_lipschitz, to_lipschitz
from .mu_law import apply_mu_law
from .quantize_tensors import quantize_tensors
from .replace_layers import replace_layers
from .split_activations import split_activations
from .split_separable import split_separable

__all__ = [
    "Graph",
    "UnsupportedModelError",
    "apply_mu_law",
    "fold_batchnorm",
    "fold_hard_sigmoid",
    "quantize_tensors",
    "replace_layers",
    "split_activations",
    "split_separable",
    "strip_lipschitz",
    "to_lipschitz",
]

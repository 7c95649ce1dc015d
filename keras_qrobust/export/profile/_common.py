"""Shared by the profile modules: argument checks, the Keras layer graph in execution order, the input batch."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..._keras import check_model, keras, tf


def _check_graph_model(model, function: str) -> "keras.Model":
    """A built Sequential/functional tf_keras model, else a ValueError saying why not."""
    model = check_model(model)
    if not getattr(model, "_is_graph_network", False):
        if not model.built:
            raise ValueError(
                f"{function}: model '{model.name}' is not built; give it an input shape "
                "(keras.Input(...) as its first layer, or model.build(input_shape)) first"
            )
        raise ValueError(
            f"{function}: model '{model.name}' is a subclassed model ({type(model).__name__}); its layer graph "
            "cannot be read. Use a Sequential or functional model (keras.Model(inputs, outputs))."
        )
    return model


def _nodes_in_order(model) -> list:
    """The model's graph nodes in execution (topological) order: highest depth first."""
    return [node for depth in sorted(model._nodes_by_depth, reverse=True) for node in model._nodes_by_depth[depth]]


def _shape(tensor) -> tuple:
    return tuple(tf.TensorShape(tensor.shape).as_list())


def _check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _batch(x, input_shape: Sequence[int], batch_size: int) -> np.ndarray:
    """``batch_size`` rows of ``x`` (repeated if ``x`` is shorter), or zeros of ``input_shape``."""
    if x is None:
        if any(d is None or d < 0 for d in input_shape):
            raise ValueError(f"the input shape {tuple(input_shape)} has unknown dimensions: pass x")
        return np.zeros((batch_size, *input_shape), np.float32)
    x = np.asarray(x, np.float32)
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"x must hold at least one example, got shape {x.shape}")
    if len(x) < batch_size:
        x = x[np.arange(batch_size) % len(x)]
    return np.ascontiguousarray(x[:batch_size])

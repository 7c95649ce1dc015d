"""The bfloat16 twin a float model's attacks can search on (``autoattack(search_precision=...)``).

An attack is a search: it needs gradients and losses good enough to find a misclassified
point, while whether a point *is* misclassified is decided by the model itself. The twin
computes the same layers with float32 variables and bfloat16 arithmetic (Keras's
``mixed_bfloat16`` policy; oneDNN runs it on AMX or AVX-512-BF16 units where the CPU has them),
its output layers in float32. bfloat16 keeps float32's exponent and 8 bits of mantissa, so
gradient signs and loss values are close; near the decision boundary the two models can
disagree, which is why :func:`~keras_qrobust.attacks.autoattack.autoattack` judges every point
the twin returns with the float32 model and attacks again, in float32, every input whose
verdict the twin got wrong.

A fake-quantized model has no bfloat16 twin: its grids (``Δ·k`` for integer ``k``) are not
representable with 8 mantissa bits, so the twin would compute another function.
"""

from __future__ import annotations

from .._keras import keras

__all__ = ["SEARCH_PRECISIONS", "bfloat16_twin"]

SEARCH_PRECISIONS = ("float32", "bfloat16")

_QUANTIZING_LAYERS = ("QuantizeWrapper", "QuantizeWrapperV2", "QuantizeLayer", "MuLawDense", "QuantizedReLU",
                      "TensorQuantizer", "OutputQuantizer", "HardSigmoid")


def _refusal(model) -> str | None:
    """Why ``model`` has no bfloat16 twin, or None."""
    from ..layers import QuantizedKernelsMixin

    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return f"layer '{layer.name}' is a nested model; pass a flat model"
        if isinstance(layer, QuantizedKernelsMixin) or type(layer).__name__ in _QUANTIZING_LAYERS:
            return (f"layer '{layer.name}' ({type(layer).__name__}) fake-quantizes, and its grid is not representable "
                    "in bfloat16")
    return None


def bfloat16_twin(model):
    """``model``'s layers with float32 variables (its weights) and bfloat16 arithmetic, the
    output layers in float32. Raises ValueError for a model that has none (module docstring)."""
    reason = _refusal(model)
    if reason is not None:
        raise ValueError(f"search_precision='bfloat16' needs a float model: in '{model.name}', {reason}; use "
                         "search_precision='float32'")

    outputs = {tensor._keras_history.layer.name for tensor in model.outputs}

    def mixed(layer):
        config = layer.get_config()
        # the output layers compute in float32 (from bfloat16 inputs): the logits, or the
        # softmax the attacks read through log, keep float32's resolution
        config["dtype"] = "float32" if layer.name in outputs else "mixed_bfloat16"
        return layer.__class__.from_config(config)

    twin = keras.models.clone_model(model, clone_function=mixed)
    twin.set_weights(model.get_weights())
    return twin

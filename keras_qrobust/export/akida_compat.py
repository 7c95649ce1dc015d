"""What Akida export can convert: :func:`check_akida_compatible` and the checks behind it.

Everything known before quantization is checked at once, each problem with its fix: the
model type (a tf_keras model, not already quantized by quantizeml), one image input read by
Conv2D [+ MaxPooling2D] + ReLU (Akida's uint8 input layer), layer types and activations
Akida has (:data:`SUPPORTED_LAYERS`, ReLU), MaxPooling2D with its convolution's padding, and
for a RobustQuantizer model the grids Akida can hold
(:func:`keras_qrobust.export.akida_grids.carried_grids`). cnn2snn may still reject a block
pattern it cannot map; :func:`keras_qrobust.export.akida` then passes its message on.
"""

from __future__ import annotations

from .._keras import is_keras3_object, keras
from ..transforms._graph import Graph, UnsupportedModelError
from .akida_grids import CarriedGrids, carried_grids, is_robust_quantized

__all__ = ["check_akida_compatible", "SUPPORTED_LAYERS"]

#: Keras layer classes quantizeml 1.2 quantizes and cnn2snn 2.19 converts (Lipschitz layers are
#: turned back into Dense/Conv2D first; BatchNormalization is folded into the layer before it).
SUPPORTED_LAYERS = (
    "InputLayer",
    "Conv2D",
    "DepthwiseConv2D",
    "SeparableConv2D",
    "Conv2DTranspose",
    "Dense",
    "LipschitzDense",
    "LipschitzConv2D",
    "BatchNormalization",
    "ReLU",
    "Activation",
    "MaxPooling2D",
    "GlobalAveragePooling2D",
    "Flatten",
    "Reshape",
    "Dropout",
    "ZeroPadding2D",
    "Add",
    "Concatenate",
)
_ACTIVATIONS = ("relu", "linear")


def _activation_name(activation) -> str:
    if activation is None:
        return "linear"
    return activation if isinstance(activation, str) else getattr(activation, "__name__", str(activation))


def check_akida_compatible(model) -> list[str]:
    """Reasons ``model`` cannot be exported to Akida, each with its fix; empty when it can.

    Checks only what is known before quantization; cnn2snn may still reject a layer
    pattern it cannot map (its message is then reported by :func:`akida`).
    """
    return _problems(model)[0]


def _problems(model) -> tuple[list[str], CarriedGrids | None]:
    """:func:`check_akida_compatible`'s reasons, and the grids a RobustQuantizer model carries."""
    if is_keras3_object(model):
        return [
            f"'{getattr(model, 'name', type(model).__name__)}' is a Keras 3 model; quantizeml and cnn2snn "
            "need a Keras 2 (tf_keras) model. Build it with `keras_qrobust.keras` (tf_keras) or load it "
            "with `keras_qrobust.keras.models.load_model`."
        ], None
    if not isinstance(model, keras.Model):
        return [f"expected a tf_keras Model, got {type(model).__module__}.{type(model).__name__}"], None
    if not is_robust_quantized(model):
        return _float_model_problems(model), None
    try:
        grids = carried_grids(model)
    except UnsupportedModelError as error:
        return [str(error)], None
    return _float_model_problems(grids.model), grids


def _float_model_problems(model) -> list[str]:
    """Reasons the float (or carried) tf_keras ``model`` cannot be converted."""
    reasons: list[str] = []
    quantized = [
        layer.name for layer in model.layers
        if type(layer).__name__.startswith(("Quantized", "MuLaw"))
        and type(layer).__module__.split(".")[0] in ("quantizeml", "cnn2snn")
    ]
    if quantized:
        reasons.append(
            f"the model is already quantized by quantizeml (layers {', '.join(map(repr, quantized[:5]))}"
            f"{', ...' if len(quantized) > 5 else ''}); Akida export quantizes with quantizeml itself: "
            "pass the float model or the RobustQuantizer model, not quantizeml's output."
        )
        return reasons  # the layer checks below would only repeat this

    try:
        graph = Graph.from_model(model)
    except UnsupportedModelError as error:
        return [str(error)]

    if len(model.inputs) != 1 or len(model.outputs) != 1:
        reasons.append(
            f"the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; Akida export "
            "handles one input and one output."
        )
        return reasons

    shape = tuple(model.inputs[0].shape[1:])
    if len(shape) != 3:
        reasons.append(
            f"the input shape {shape} is not an image (height, width, channels): cnn2snn 2.19 converts a "
            "uint8 input only into a Conv2D (a Dense reading 1-D uint8 inputs fails with 'InputData sign "
            "incompatible'). Feed images, e.g. keras.Input((28, 28, 1)) followed by Conv2D(..., activation='relu')."
        )
    elif any(d is None for d in shape):
        reasons.append(f"the input shape {shape} has unknown sizes; give keras.Input a fixed shape.")
    if not model.inputs[0].dtype.is_floating:
        reasons.append(
            f"the input dtype is {model.inputs[0].dtype.name}; Akida export expects a float model "
            "taking inputs in [0, 1] (it adds the uint8 conversion itself)."
        )

    unsupported: dict[str, list[str]] = {}
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in SUPPORTED_LAYERS and kind != "Rescaling":
            unsupported.setdefault(kind, []).append(layer.name)
            continue
        activation = _activation_name(getattr(layer, "activation", None))
        if kind != "ReLU" and activation not in _ACTIVATIONS:
            reasons.append(
                f"layer '{layer.name}' ({kind}) uses the activation '{activation}'; Akida export supports "
                "ReLU (or none). " + (
                    "Remove the final softmax: the scores keep the same argmax."
                    if activation == "softmax" else "Retrain with ReLU."
                )
            )
        if kind == "ReLU" and (float(layer.negative_slope) != 0.0 or float(layer.threshold) != 0.0):
            reasons.append(
                f"layer '{layer.name}' is a leaky or thresholded ReLU (negative_slope={float(layer.negative_slope)}, "
                f"threshold={float(layer.threshold)}); Akida runs a plain ReLU (max_value allowed)."
            )
    for kind, names in unsupported.items():
        reasons.append(
            f"{kind} layer{'s' if len(names) > 1 else ''} {', '.join(map(repr, names))}: no Akida equivalent. "
            f"Supported layers: {', '.join(n for n in SUPPORTED_LAYERS if n != 'InputLayer')}."
        )

    reasons.extend(_first_layer_problems(model, graph))
    reasons.extend(_pooling_problems(model, graph))
    return reasons


_CONVS = ("Conv2D", "DepthwiseConv2D", "SeparableConv2D", "LipschitzConv2D")
_FOLDED = ("BatchNormalization",)  # folded into the weight layer before it by quantizeml


def _is_relu(layer) -> bool:
    kind = type(layer).__name__
    return kind == "ReLU" or (kind == "Activation" and _activation_name(layer.activation) == "relu")


def _first_layer_problems(model, graph: Graph) -> list[str]:
    """Akida's uint8 input layer (InputConv2D) is a Conv2D, optionally MaxPooling2D, then ReLU."""
    input_name = graph.config["input_layers"][0][0]
    first = graph.consumers(input_name)
    kinds = [type(model.get_layer(name)).__name__ for name in first]
    if "Rescaling" in kinds:
        return ["the model starts with a Rescaling layer; Akida export adds its own Rescaling(1/255) and expects "
                "the float model to take inputs in [0, 1]. Remove the Rescaling and scale the data to [0, 1]."]
    found = ", ".join(f"'{n}' ({k})" for n, k in zip(first, kinds)) or "nothing"
    if len(first) != 1 or kinds[0] not in ("Conv2D", "LipschitzConv2D"):
        return [f"the input feeds {found}; Akida's uint8 input layer must be read by exactly one Conv2D "
                "(followed by ReLU): start the model with Conv2D(..., activation='relu')."]
    layer = model.get_layer(first[0])
    if _activation_name(layer.activation) == "relu":
        return []
    name = first[0]
    while len(nxt := graph.consumers(name)) == 1:
        following = model.get_layer(nxt[0])
        if _is_relu(following):
            return []
        if type(following).__name__ not in _FOLDED + ("MaxPooling2D",):
            break
        name = nxt[0]
    return [f"the first layer '{layer.name}' (Conv2D) is not followed by a ReLU; Akida's input layer is "
            "Conv2D [+ MaxPooling2D] + ReLU (cnn2snn fails with 'InputData sign incompatible' otherwise). "
            "Give it activation='relu'."]


def _pooling_problems(model, graph: Graph) -> list[str]:
    """cnn2snn fuses MaxPooling2D into the convolution before it, so both need the same padding."""
    problems = []
    for entry in graph.iter_layers(("MaxPooling2D",)):
        name = entry["name"]
        while len(inbound := graph.inbound_names(graph.layer(name))) == 1:
            name = inbound[0]
            producer = model.get_layer(name)
            if type(producer).__name__ in _FOLDED or _is_relu(producer):
                continue
            pool = model.get_layer(entry["name"])
            if type(producer).__name__ in _CONVS and producer.padding != pool.padding:
                problems.append(
                    f"MaxPooling2D '{pool.name}' has padding='{pool.padding}' but the convolution before it, "
                    f"'{producer.name}', has padding='{producer.padding}'; Akida fuses them, so use the same "
                    "padding on both."
                )
            break
    return problems


def _raise_if_incompatible(model) -> CarriedGrids | None:
    """Raise UnsupportedModelError listing every problem; else the grids a RobustQuantizer model carries."""
    reasons, grids = _problems(model)
    if reasons:
        raise UnsupportedModelError(
            f"The model cannot be exported to Akida ({len(reasons)} problem{'s' if len(reasons) > 1 else ''}):\n"
            + "\n".join(f"  - {reason}" for reason in reasons)
        )
    return grids


"""Layer classes (by Keras class name) that the graph rewrites know about."""

WEIGHT_LAYERS = ("Dense", "Conv2D", "DepthwiseConv2D", "SeparableConv2D")
QUANTIZED_WEIGHT_LAYERS = tuple(f"Quantized{name}" for name in WEIGHT_LAYERS)

# Kernel weights of each weight layer, in get_weights() order (the bias, if any, follows).
KERNELS = {
    "Dense": ("kernel",),
    "Conv2D": ("kernel",),
    "DepthwiseConv2D": ("depthwise_kernel",),
    "SeparableConv2D": ("depthwise_kernel", "pointwise_kernel"),
}

# Layers that move, pool or combine values without weights of their own.
PASS_THROUGH = (
    "InputLayer",
    "Flatten",
    "Reshape",
    "Dropout",
    "SpatialDropout2D",
    "GaussianNoise",
    "MaxPooling2D",
    "AveragePooling2D",
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "ZeroPadding2D",
    "Cropping2D",
    "Add",
    "Concatenate",
)
ACTIVATIONS = ("ReLU", "Activation", "Softmax", "HardSigmoid")

# Every layer kind RobustQuantizer accepts (keras_qrobust.quantization.layer_support says what each becomes).
SUPPORTED = (*WEIGHT_LAYERS, *PASS_THROUGH, *ACTIVATIONS, "BatchNormalization", "Multiply")

# Layers whose output values are values of their input (int8 ops that keep the input scale).
GRID_PRESERVING = ("MaxPooling2D", "GlobalMaxPooling2D", "Flatten", "Reshape", "Dropout", "SpatialDropout2D",
                   "GaussianNoise", "GaussianDropout", "ZeroPadding2D", "Cropping2D")

# Layers that only reshape (or, at inference, pass) their input: the int8 graph keeps its values and grid.
RESHAPES = ("Flatten", "Reshape", "Dropout", "SpatialDropout2D", "GaussianNoise", "GaussianDropout")


def only_reshapes(kind: str, activation: str | None = None) -> bool:
    """A layer of class ``kind`` (``activation`` for an Activation) that keeps its input's values."""
    return kind in RESHAPES or (kind == "Activation" and activation == "linear")

"""Reference models (tf_keras, logits out), sized for 28x28x1 inputs and a 2-core CPU."""

from __future__ import annotations

from typing import Sequence

from ._keras import keras, register, tf
from .layers import HardSigmoid

__all__ = ["cnn_small", "mlp_gorsline", "ds_cnn", "resnet_small", "mobilenet_v2_small", "mobilenet_v3_small",
           "ClipConstraint", "MODELS", "get"]

layers = keras.layers


@register
class ClipConstraint(keras.constraints.Constraint):
    """Clip every weight into ``[min_value, max_value]`` after each update."""

    def __init__(self, min_value: float = -1.0, max_value: float = 1.0):
        if not min_value < max_value:
            raise ValueError(f"min_value must be < max_value, got {min_value} and {max_value}")
        self.min_value, self.max_value = float(min_value), float(max_value)

    def __call__(self, w):
        return tf.clip_by_value(w, self.min_value, self.max_value)

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value}


def cnn_small(input_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10, dropout: float = 0.25,
              width: int = 1, squeeze: int | None = None, name: str = "cnn_small"):
    """Two 3x3 convolutions with max pooling, a 128-unit dense layer and a logits layer.

    225,034 parameters for 28x28x1 inputs and 10 classes. ``width`` multiplies the filters
    and dense units (32·w, 64·w, 128·w): adversarial training needs capacity (Madry 2018, §4).
    ``squeeze``: a 1x1 convolution (ReLU) to this many channels before flattening, which keeps
    the 5x5 layout but divides fc1's inputs by 64·w/squeeze — fc1 holds 91% of the parameters
    at width 2 (819,456 of 896,522); with ``squeeze=16`` the model has 181,786.
    """
    if isinstance(width, bool) or not (isinstance(width, int) and width >= 1):
        raise ValueError(f"width must be a positive integer, got {width!r}")
    if squeeze is not None and (isinstance(squeeze, bool) or not (isinstance(squeeze, int) and squeeze >= 1)):
        raise ValueError(f"squeeze must be None or a positive integer, got {squeeze!r}")
    squeezing = [] if squeeze is None else [layers.Conv2D(squeeze, 1, activation="relu", name="squeeze")]
    return keras.Sequential(
        [
            keras.Input(tuple(input_shape)),
            layers.Conv2D(32 * width, 3, activation="relu", name="conv1"),
            layers.MaxPooling2D(name="pool1"),
            layers.Conv2D(64 * width, 3, activation="relu", name="conv2"),
            layers.MaxPooling2D(name="pool2"),
            *squeezing,
            layers.Flatten(name="flatten"),
            layers.Dropout(dropout, name="dropout"),
            layers.Dense(128 * width, activation="relu", name="fc1"),
            layers.Dense(num_classes, name="logits"),
        ],
        name=name,
    )


def mlp_gorsline(input_shape: Sequence[int] = (28, 28, 1), hidden: int = 100, num_classes: int = 10,
                 activation: str = "relu", name: str = "mlp_gorsline"):
    """Gorsline et al. 2021 MLP: inputs -> ``hidden`` units -> ``num_classes`` logits.

    All weights and biases are constrained to [-1, 1], as in the paper. ``num_classes=1``
    gives the single-logit binary classifier used for two spirals.
    """
    clip = ClipConstraint(-1.0, 1.0)
    dense = dict(kernel_constraint=clip, bias_constraint=clip)
    return keras.Sequential(
        [
            keras.Input(tuple(input_shape)),
            layers.Flatten(name="flatten"),
            layers.Dense(hidden, activation=activation, name="hidden", **dense),
            layers.Dense(num_classes, name="logits", **dense),
        ],
        name=name,
    )


def _conv_bn_relu(x, filters, kernel_size=3, strides=1, name=""):
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def ds_cnn(input_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10, name: str = "ds_cnn"):
    """Akida-style depthwise-separable CNN: every convolution is followed by BatchNorm + ReLU.

    One block is a DepthwiseConv2D + 1x1 Conv2D pair (MobileNet style), the others are
    SeparableConv2D, so all foldable layer kinds occur.
    """
    inputs = keras.Input(tuple(input_shape))
    x = _conv_bn_relu(inputs, 32, name="stem")
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw1")(x)
    x = layers.BatchNormalization(name="dw1_bn")(x)
    x = layers.ReLU(name="dw1_relu")(x)
    x = _conv_bn_relu(x, 64, kernel_size=1, name="pw1")
    x = layers.MaxPooling2D(name="pool1")(x)
    for i, filters in enumerate((128, 128), start=2):
        x = layers.SeparableConv2D(filters, 3, padding="same", use_bias=False, name=f"sep{i}")(x)
        x = layers.BatchNormalization(name=f"sep{i}_bn")(x)
        x = layers.ReLU(name=f"sep{i}_relu")(x)
        x = layers.MaxPooling2D(name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _residual_block(x, filters, strides, name):
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    if strides != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False, name=f"{name}_proj")(shortcut)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_relu2")(y)


def resnet_small(input_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10,
                 widths: Sequence[int] = (16, 32, 64), name: str = "resnet_small"):
    """A small ResNet: stem, one residual block per width (stride 2 after the first),
    global average pooling and a logits layer."""
    inputs = keras.Input(tuple(input_shape))
    x = _conv_bn_relu(inputs, widths[0], name="stem")
    for i, filters in enumerate(widths):
        x = _residual_block(x, filters, strides=1 if i == 0 else 2, name=f"block{i + 1}")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _inverted_residual(x, filters, strides, expansion, name):
    """MobileNetV2 block (Sandler et al. 2018, Table 1): 1x1 expansion + ReLU6, 3x3
    depthwise + ReLU6, linear 1x1 projection, and the block input added when the shapes
    match. A stride-2 depthwise pads (0, 1) first, as keras.applications does."""
    inputs = x
    x = layers.Conv2D(inputs.shape[-1] * expansion, 1, use_bias=False, name=f"{name}_expand")(x)
    x = layers.ReLU(6.0, name=f"{name}_expand_relu")(layers.BatchNormalization(name=f"{name}_expand_bn")(x))
    if strides == 2:
        x = layers.ZeroPadding2D(((0, 1), (0, 1)), name=f"{name}_pad")(x)
    x = layers.DepthwiseConv2D(3, strides=strides, padding="same" if strides == 1 else "valid", use_bias=False,
                               name=f"{name}_depthwise")(x)
    x = layers.ReLU(6.0, name=f"{name}_depthwise_relu")(layers.BatchNormalization(name=f"{name}_depthwise_bn")(x))
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(x)
    x = layers.BatchNormalization(name=f"{name}_project_bn")(x)
    if strides == 1 and inputs.shape[-1] == filters:
        x = layers.Add(name=f"{name}_add")([inputs, x])
    return x


def mobilenet_v2_small(input_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10,
                       blocks: Sequence[tuple[int, int]] = ((16, 1), (24, 2), (24, 1), (32, 2), (32, 1), (48, 1)),
                       expansion: int = 4, name: str = "mobilenet_v2_small"):
    """A MobileNetV2 sized for 28×28 and 32×32 inputs: a stride-2 stem, inverted residual
    blocks ``(filters, stride)`` with linear bottlenecks and residual sums, a 1x1 head,
    global average pooling and a logits layer."""
    inputs = keras.Input(tuple(input_shape))
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = layers.ReLU(6.0, name="stem_relu")(layers.BatchNormalization(name="stem_bn")(x))
    for i, (filters, strides) in enumerate(blocks, start=1):
        x = _inverted_residual(x, filters, strides, expansion, name=f"block{i}")
    x = layers.Conv2D(128, 1, use_bias=False, name="head_conv")(x)
    x = layers.ReLU(6.0, name="head_relu")(layers.BatchNormalization(name="head_bn")(x))
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _hard_swish(x, name):
    """``x·h-sigmoid(x)`` (Howard et al. 2019, MobileNetV3, Sec. 5.2)."""
    return layers.Multiply(name=f"{name}_hswish")([x, HardSigmoid(name=f"{name}_hsigmoid")(x)])


def _activation(x, kind, name):
    return _hard_swish(x, name) if kind == "hswish" else layers.ReLU(name=f"{name}_relu")(x)


def _bneck(x, kernel, expanded, filters, excite, kind, strides, name):
    """MobileNetV3 bottleneck (Howard et al. 2019, Fig. 4): 1x1 expansion, depthwise,
    optional squeeze-excite gated by h-sigmoid, linear 1x1 projection, residual sum when
    the shapes match; ``kind`` is the block's nonlinearity (ReLU or h-swish)."""
    inputs = x
    if expanded != x.shape[-1]:
        x = layers.BatchNormalization(name=f"{name}_expand_bn")(
            layers.Conv2D(expanded, 1, use_bias=False, name=f"{name}_expand")(x))
        x = _activation(x, kind, f"{name}_expand")
    x = layers.DepthwiseConv2D(kernel, strides=strides, padding="same", use_bias=False, name=f"{name}_depthwise")(x)
    x = _activation(layers.BatchNormalization(name=f"{name}_depthwise_bn")(x), kind, f"{name}_depthwise")
    if excite:
        s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_pool")(x)
        s = layers.ReLU(name=f"{name}_se_relu")(layers.Conv2D(max(expanded // 4, 8), 1, name=f"{name}_se_reduce")(s))
        s = HardSigmoid(name=f"{name}_se_gate")(layers.Conv2D(expanded, 1, name=f"{name}_se_expand")(s))
        x = layers.Multiply(name=f"{name}_se_scale")([x, s])
    x = layers.BatchNormalization(name=f"{name}_project_bn")(
        layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(x))
    if strides == 1 and inputs.shape[-1] == filters:
        x = layers.Add(name=f"{name}_add")([inputs, x])
    return x


def mobilenet_v3_small(input_shape: Sequence[int] = (28, 28, 1), num_classes: int = 10,
                       blocks: Sequence[tuple] = ((3, 16, 16, True, "relu", 2), (3, 48, 24, False, "relu", 2),
                                                  (3, 64, 24, False, "relu", 1), (5, 72, 32, True, "hswish", 1),
                                                  (5, 96, 32, True, "hswish", 1)),
                       name: str = "mobilenet_v3_small"):
    """A MobileNetV3-Small sized for 28×28 and 32×32 inputs: a stride-2 h-swish stem,
    bottlenecks ``(kernel, expanded, filters, squeeze-excite, "relu"|"hswish", stride)``
    (Howard et al. 2019, Table 2, narrowed and shortened), a 1x1 h-swish head, global
    average pooling and a logits layer."""
    inputs = keras.Input(tuple(input_shape))
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = _hard_swish(layers.BatchNormalization(name="stem_bn")(x), "stem")
    for i, block in enumerate(blocks, start=1):
        x = _bneck(x, *block, name=f"block{i}")
    x = layers.Conv2D(128, 1, use_bias=False, name="head_conv")(x)
    x = _hard_swish(layers.BatchNormalization(name="head_bn")(x), "head")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


MODELS = {
    "cnn_small": cnn_small,
    "mlp_gorsline": mlp_gorsline,
    "ds_cnn": ds_cnn,
    "resnet_small": resnet_small,
    "mobilenet_v2_small": mobilenet_v2_small,
    "mobilenet_v3_small": mobilenet_v3_small,
}


def get(name: str, **kwargs):
    """Build a zoo model by name."""
    if name not in MODELS:
        raise ValueError(f"Unknown zoo model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](**kwargs)

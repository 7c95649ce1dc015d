import numpy as np
import pytest

import keras_qrobust as kq
from conftest import randomize_batchnorm
from keras_qrobust.transforms import (UnsupportedModelError, fold_batchnorm, fold_hard_sigmoid, split_activations,
                                      split_separable)

keras = kq.keras
layers = keras.layers


def host_then_bn(host):
    """(name, model) with ``host`` -> BatchNormalization -> ReLU -> logits."""
    inputs = keras.Input((8, 8, 3))
    x = host(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU()(x)
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(4, name="out")(x))


HOSTS = {
    "conv2d": lambda: layers.Conv2D(6, 3, name="host"),
    "conv2d_no_bias": lambda: layers.Conv2D(6, 3, use_bias=False, name="host"),
    "depthwise": lambda: layers.DepthwiseConv2D(3, depth_multiplier=2, name="host"),
    "separable": lambda: layers.SeparableConv2D(5, 3, depth_multiplier=2, name="host"),
    "dense": lambda: layers.Dense(7, name="host"),
}


@pytest.mark.parametrize("host", HOSTS, ids=list(HOSTS))
def test_fold_batchnorm_changes_outputs_by_less_than_1e4(host, rng):
    model = host_then_bn(HOSTS[host]())
    randomize_batchnorm(model, rng)
    x = rng.uniform(0, 1, (16, 8, 8, 3)).astype(np.float32)
    folded = fold_batchnorm(model)
    assert not any(isinstance(l, layers.BatchNormalization) for l in folded.layers)
    assert np.abs(folded.predict(x, verbose=0) - model.predict(x, verbose=0)).max() < 1e-4


def test_fold_batchnorm_without_scale_or_center(rng):
    inputs = keras.Input((5,))
    x = layers.Dense(4, name="host")(inputs)
    outputs = layers.BatchNormalization(scale=False, center=False)(x)
    model = keras.Model(inputs, outputs)
    model.layers[-1].set_weights([rng.normal(size=4), rng.uniform(0.5, 2, 4)])
    x = rng.normal(size=(8, 5)).astype(np.float32)
    np.testing.assert_allclose(fold_batchnorm(model).predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)


def test_fold_leaves_the_callers_model_untouched(rng):
    model = host_then_bn(HOSTS["conv2d"]())
    randomize_batchnorm(model, rng)
    before = [w.copy() for w in model.get_weights()]
    fold_batchnorm(model)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert len(model.get_layer("host")._inbound_nodes) == 1


@pytest.mark.parametrize("build, reason", [
    (lambda i: layers.BatchNormalization(name="bn")(layers.ReLU()(layers.Conv2D(4, 3)(i))), "follows"),
    (lambda i: layers.BatchNormalization(name="bn")(layers.Conv2D(4, 3, activation="relu")(i)), "applies activation"),
])
def test_unfoldable_batchnorm_is_an_error_that_names_it(build, reason):
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, build(inputs))
    with pytest.raises(UnsupportedModelError, match=f"BatchNormalization 'bn'.*{reason}"):
        fold_batchnorm(model)


def test_bn_whose_input_is_also_used_elsewhere_is_not_folded():
    inputs = keras.Input((8, 8, 3))
    conv = layers.Conv2D(4, 3, name="conv")(inputs)
    model = keras.Model(inputs, layers.Add()([conv, layers.BatchNormalization(name="bn")(conv)]))
    with pytest.raises(UnsupportedModelError, match="also used by"):
        fold_batchnorm(model)


def test_split_activations_moves_fused_relu_into_its_own_layer(rng):
    model = kq.zoo.cnn_small()
    split = split_activations(model)
    assert isinstance(split.get_layer("conv1_relu"), layers.ReLU)
    assert split.get_layer("conv1").get_config()["activation"] == "linear"
    x = rng.uniform(0, 1, (4, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(split.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_split_separable_is_exact(rng):
    model = kq.zoo.ds_cnn()
    randomize_batchnorm(model, rng)
    split = split_separable(model)
    assert not any(isinstance(l, layers.SeparableConv2D) for l in split.layers)
    assert isinstance(split.get_layer("sep2_depthwise"), layers.DepthwiseConv2D)
    x = rng.uniform(0, 1, (4, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(split.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_subclassed_and_nested_models_are_rejected():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 3), np.float32))
    with pytest.raises(UnsupportedModelError, match="subclassed"):
        fold_batchnorm(net)
    inner = keras.Sequential([keras.Input((3,)), layers.Dense(2)])
    outer = keras.Sequential([keras.Input((3,)), inner])
    with pytest.raises(UnsupportedModelError, match="nested model"):
        fold_batchnorm(outer)


def test_sequential_without_input_shape_is_rejected():
    with pytest.raises(UnsupportedModelError, match="no input shape"):
        fold_batchnorm(keras.Sequential([layers.Dense(2)]))


def _hard_sigmoid(x, scale="multiply"):
    gate = layers.ReLU(6.0)(x + 3.0)
    return gate * (1.0 / 6.0) if scale == "multiply" else gate / 6.0


@pytest.mark.parametrize("scale", ["multiply", "divide"])
def test_fold_hard_sigmoid_keeps_the_function(scale, rng):
    inputs = keras.Input((6, 6, 3))
    x = layers.Conv2D(4, 3)(inputs)
    x = layers.Multiply()([x, _hard_sigmoid(x, scale)])  # h-swish
    model = keras.Model(inputs, layers.Dense(2)(layers.Flatten()(x)))
    folded = fold_hard_sigmoid(model)
    kinds = [type(layer).__name__ for layer in folded.layers]
    assert kinds.count("HardSigmoid") == 1 and "TFOpLambda" not in kinds and "ReLU" not in kinds
    x = rng.normal(size=(16, 6, 6, 3)).astype(np.float32) * 3
    np.testing.assert_allclose(folded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_keras_mobilenet_v3_small_folds_every_hard_sigmoid():
    model = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), alpha=0.75, weights=None, classes=10,
                                                include_preprocessing=False)
    adds = sum(layer.get_config().get("function") == "__operators__.add" for layer in model.layers)
    kinds = [type(layer).__name__ for layer in fold_hard_sigmoid(model).layers]
    assert adds > 0 and kinds.count("HardSigmoid") == adds and "TFOpLambda" not in kinds


def test_a_raw_tensorflow_op_that_is_no_hard_sigmoid_is_named():
    inputs = keras.Input((4,))
    outputs = layers.Dense(2)(layers.ReLU(6.0)(inputs + 2.0))
    with pytest.raises(UnsupportedModelError, match=r"'tf.__operators__.add(_\d+)?' \(TFOpLambda\)"):
        kq.RobustQuantizer.from_setting("w4a4").quantize(keras.Model(inputs, outputs),
                                                         np.zeros((8, 4), np.float32))

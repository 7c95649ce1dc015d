"""The RobustQuantizer model is the twin of its int8 TFLite/ONNX file, layer kind by layer kind.

Each model below isolates the layer kinds where an integer runtime requantizes (a linear
output, a sum, an average, a concatenation, a product, a sigmoid/softmax) or keeps a grid
(padding, ReLU6, max pooling). Exported to full-integer TFLite and QDQ ONNX and run in
LiteRT (with its default XNNPACK delegate) and ONNX Runtime, each must agree with the Keras
model it was exported from: the same top-1 class and every score within one output step.
"""

import numpy as np
import onnx
import pytest

import keras_qrobust as kq
from keras_qrobust import export
from keras_qrobust.export import integer_twin, lower
from keras_qrobust.layers import TensorQuantizer
from keras_qrobust.transforms import UnsupportedModelError

from conftest import randomize_batchnorm

keras = kq.keras
layers = keras.layers


def _stem(x):
    x = layers.Conv2D(8, 3, strides=2, padding="same")(x)
    return layers.ReLU()(layers.BatchNormalization()(x))


def residual_linear_add(x):  # MobileNetV2-style: a linear projection added to the block input
    x = _stem(x)
    y = layers.ReLU()(layers.BatchNormalization()(layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)))
    y = layers.BatchNormalization()(layers.Conv2D(8, 1, use_bias=False)(y))
    return layers.Dense(10)(layers.Flatten()(layers.Add()([x, y])))


def relu_add(x):  # ResNet-style: the sum goes through a ReLU (fused into the int8 add)
    x = _stem(x)
    y = layers.BatchNormalization()(layers.Conv2D(8, 3, padding="same")(x))
    return layers.Dense(10)(layers.GlobalAveragePooling2D()(layers.ReLU()(layers.Add()([x, y]))))


def average_pooling(x):
    x = layers.AveragePooling2D(2)(_stem(x))
    x = layers.ReLU()(layers.Conv2D(8, 3)(x))
    return layers.Dense(10)(layers.GlobalAveragePooling2D()(x))


def concatenation(x):  # a ReLU branch, a linear branch and the block input on one grid
    x = _stem(x)
    a = layers.ReLU()(layers.Conv2D(4, 1)(x))
    b = layers.Conv2D(6, 3, padding="same")(x)
    return layers.Dense(10)(layers.Flatten()(layers.MaxPooling2D(2)(layers.Concatenate()([a, b, x]))))


def squeeze_excite(x):  # Multiply by a sigmoid gate (MobileNetV3, EfficientNet)
    x = _stem(x)
    s = layers.GlobalAveragePooling2D(keepdims=True)(x)
    s = layers.Activation("sigmoid")(layers.Conv2D(8, 1)(layers.ReLU()(layers.Conv2D(4, 1)(s))))
    return layers.Dense(10)(layers.Flatten()(layers.Multiply()([x, s])))


def _hard_sigmoid(x):  # as keras.applications.MobileNetV3 writes it: raw TF ops around a ReLU6
    return layers.ReLU(6.0)(x + 3.0) * (1.0 / 6.0)


def hard_swish_excite(x):  # MobileNetV3: h-swish, a squeeze-excite gate, a mean over a 1x1 map
    x = layers.BatchNormalization()(layers.Conv2D(8, 3, strides=2, padding="same")(x))
    x = layers.Multiply()([x, _hard_sigmoid(x)])
    s = layers.GlobalAveragePooling2D(keepdims=True)(x)
    s = _hard_sigmoid(layers.Conv2D(8, 1)(layers.ReLU()(layers.Conv2D(4, 1)(s))))
    x = layers.Multiply()([x, s])
    x = layers.Conv2D(6, 1)(layers.GlobalAveragePooling2D(keepdims=True)(layers.MaxPooling2D(14)(x)))
    x = layers.GlobalAveragePooling2D()(layers.Multiply()([x, _hard_sigmoid(x)]))  # over 1x1
    return layers.Dense(10)(x)


def hard_swish_dense(x):  # h-swish on a (batch, features) tensor
    x = layers.Dense(16)(layers.Flatten()(layers.MaxPooling2D(4)(x)))
    return layers.Dense(10)(layers.Multiply()([x, _hard_sigmoid(x)]))


def relu6_depthwise_padding(x):
    x = layers.ReLU(6.0)(layers.Conv2D(8, 3, strides=2)(layers.ZeroPadding2D(1)(x)))
    x = layers.ZeroPadding2D(((0, 1), (0, 1)))(x)
    x = layers.ReLU(6.0)(layers.DepthwiseConv2D(3, strides=2)(x))
    return layers.Dense(10)(layers.Flatten()(x))


def separable(x):
    x = layers.SeparableConv2D(12, 3, padding="same")(_stem(x))
    return layers.Dense(10)(layers.GlobalAveragePooling2D()(layers.ReLU()(layers.BatchNormalization()(x))))


def softmax_output(x):
    return layers.Softmax()(layers.Dense(10)(layers.Flatten()(_stem(x))))


ARCHITECTURES = (residual_linear_add, relu_add, average_pooling, concatenation, squeeze_excite,
                 hard_swish_excite, hard_swish_dense, relu6_depthwise_padding, separable, softmax_output)
SETTINGS = ("w8a8", "w4a4", "w2a2")


@pytest.fixture(scope="module")
def data(fashion_slice):
    (x_train, _), (x_test, _) = fashion_slice
    return x_train[:512], x_test


def _model(build):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, build(inputs), name=build.__name__)
    randomize_batchnorm(model, np.random.default_rng(0))
    return model


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("build", ARCHITECTURES, ids=lambda b: b.__name__)
def test_exported_file_computes_the_keras_model(build, setting, data, tmp_path):
    samples, x = data
    qmodel = kq.RobustQuantizer.from_setting(setting).quantize(_model(build), samples)
    lowered = lower(qmodel)  # no representative inputs: every tensor has its range already
    assert lowered.exact and lowered.calibrated == () and lowered.requantized_weights == ()
    scores = qmodel.predict(x, verbose=0)
    step = float(qmodel.get_layer("output_quantizer").step)
    for path in (export.tflite(qmodel, tmp_path / "m.tflite"), export.onnx(qmodel, tmp_path / "m.onnx")):
        deployed = export.load(path).predict(x)
        assert np.mean(deployed.argmax(1) == scores.argmax(1)) >= 0.998, path.suffix  # ≤ 1 of 500 near-ties
        # one step: a value within float32 noise of halfway between two levels may round either way
        assert np.max(np.abs(deployed - scores)) <= step * 1.01, path.suffix
    # the integer twin computes the TFLite file's codes, bit for bit (a sigmoid or softmax:
    # rounded in float, listed as approximated)
    # and the ONNX file's as ONNX Runtime computes them
    for runtime, suffix in (("tflite", ".tflite"), ("onnx", ".onnx")):
        twin = integer_twin(qmodel, runtime=runtime, file=tmp_path / f"m{suffix}")
        assert twin.exact == (build not in (squeeze_excite, softmax_output)), (runtime, twin.approximated)
        deployed = export.load(tmp_path / f"m{suffix}").predict(x)
        if twin.exact:
            np.testing.assert_array_equal(twin.model.predict(x, verbose=0), deployed, err_msg=runtime)
        else:
            assert np.max(np.abs(twin.model.predict(x, verbose=0) - deployed)) <= step * 1.01, runtime


def test_tensor_quantizers_mark_what_the_int8_graph_stores():
    inputs = keras.Input((8, 8, 2))
    x = layers.ReLU(name="relu")(layers.Conv2D(4, 3, padding="same", name="conv")(inputs))
    linear = layers.Conv2D(4, 1, name="projection")(x)
    summed = layers.Add(name="add")([x, linear])
    a = layers.Conv2D(4, 1, name="into_concat")(summed)
    pooled = layers.MaxPooling2D(name="max")(layers.Concatenate(name="concat")([a, summed]))
    mean = layers.AveragePooling2D(name="avg")(pooled)
    outputs = layers.Dense(3, name="logits")(layers.Flatten(name="flat")(mean))
    model = keras.Model(inputs, outputs)
    samples = np.random.default_rng(0).uniform(size=(64, 8, 8, 2))
    qmodel = kq.RobustQuantizer.from_setting("w4a4").quantize(model, samples)
    marked = {layer.inbound_nodes[0].inbound_layers.name for layer in qmodel.layers
              if type(layer) is TensorQuantizer}
    # conv: its ReLU carries the range; into_concat: written on the concatenation's grid;
    # max and flat keep their input's grid; logits: the OutputQuantizer
    assert marked == {model.layers[0].name, "projection", "add", "concat", "avg"}


def test_a_softmax_output_uses_the_int8_softmax_grid(data):
    samples, _ = data
    qmodel = kq.RobustQuantizer.from_setting("w4a4").quantize(_model(softmax_output), samples)
    output = qmodel.get_layer("output_quantizer")
    assert float(output.min.numpy()) == 0.0 and float(output.max.numpy()) == pytest.approx(255 / 256)


def test_average_of_a_low_bit_grid_is_stored_exactly(data):
    samples, _ = data
    qmodel = kq.RobustQuantizer.from_setting("w4a4").quantize(_model(average_pooling), samples)
    relu = next(layer for layer in qmodel.layers if type(layer).__name__ == "QuantizedReLU")
    mean = next(layer for layer in qmodel.layers if isinstance(layer, TensorQuantizer) and
                isinstance(layer.inbound_nodes[0].inbound_layers, layers.AveragePooling2D))
    assert mean.step == pytest.approx(relu.activation_max.numpy() / 15 / 4, rel=1e-6)  # Δa / count


def test_average_pooling_over_a_padded_border_is_refused(data):
    inputs = keras.Input((7, 7, 1))
    outputs = layers.Dense(2)(layers.Flatten()(layers.AveragePooling2D(2, padding="same")(
        layers.ReLU()(layers.Conv2D(2, 1)(inputs)))))
    qmodel = kq.RobustQuantizer.from_setting("w4a4").quantize(keras.Model(inputs, outputs),
                                                              np.random.default_rng(0).uniform(size=(32, 7, 7, 1)))
    with pytest.raises(UnsupportedModelError, match="padding='valid'"):
        lower(qmodel)


def _with_data_batchnorm(model, x):
    """Untrained weights, BatchNormalization statistics of a batch of real inputs: the scores
    then differ from input to input (with the initial statistics a deep net's collapse)."""
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = 0.0
    model(x, training=True)
    return model


def _agreement_beyond_ties(deployed, scores, step: float) -> float:
    """Share of inputs whose file class scores within one output step of the Keras model's
    best: an untrained model's quantized scores tie often, and a tie may break either way."""
    gap = scores.max(1) - scores[np.arange(len(scores)), deployed.argmax(1)]
    return float(np.mean(gap <= step * 1.01))


def _check_deep_model_files(qmodel, x, scores, tmp_path) -> None:
    """The int8 TFLite file and the ONNX file (INT4 weights) compute ``qmodel`` (``scores`` on
    ``x``) on ``x`` and on ``x`` with every pixel ±0.1 (between two input levels, where an
    attack's points lie); the ONNX file with 8-bit weight containers computes what the INT4 one does."""
    step = float(qmodel.get_layer("output_quantizer").step)
    perturbed = np.clip(x + 0.1 * np.random.default_rng(0).choice([-1.0, 1.0], size=x.shape), 0, 1).astype(np.float32)
    references = [(x, scores), (perturbed, qmodel.predict(perturbed, verbose=0))]
    clean_outputs = {}
    for path in (export.tflite(qmodel, tmp_path / "m.tflite"), export.onnx(qmodel, tmp_path / "m.onnx")):
        deployed = [export.load(path).predict(inputs) for inputs, _ in references]
        for (_, reference), output in zip(references, deployed):
            assert _agreement_beyond_ties(output, reference, step) >= 299 / 300, path.suffix
            assert np.mean(output.argmax(1) == reference.argmax(1)) >= 0.99, path.suffix
        # many blocks deep: a value within float32 noise of a rounding boundary that lands on
        # the neighbouring level early moves a few later scores by more than a step (on the
        # perturbed inputs of mobilenet_v3_small 1.2% of scores on an AVX2 host, where the
        # TFLite and ONNX files agree with each other)
        assert np.mean(np.abs(deployed[0] - scores) <= step * 1.01) >= 0.99, path.suffix
        clean_outputs[path.suffix] = deployed[0]
    # the integer twins are the files, on both (the RobustQuantizer model is not, near ties)
    for runtime, suffix in (("tflite", ".tflite"), ("onnx", ".onnx")):
        twin = integer_twin(qmodel, runtime=runtime, file=tmp_path / f"m{suffix}")
        assert twin.exact, (runtime, twin.approximated)
        deployed = export.load(tmp_path / f"m{suffix}")
        for inputs, _ in references:
            np.testing.assert_array_equal(twin.model.predict(inputs, verbose=0), deployed.predict(inputs),
                                          err_msg=runtime)
    assert onnx.TensorProto.INT4 in {init.data_type for init in onnx.load(str(tmp_path / "m.onnx")).graph.initializer}
    containers = export.onnx(qmodel, tmp_path / "int8.onnx", int4_weights=False)
    np.testing.assert_array_equal(export.load(containers).predict(x), clean_outputs[".onnx"])


def test_keras_applications_mobilenet_v2_exports_as_the_model_it_is(fashion_slice, tmp_path):
    """What users bring: keras.applications.MobileNetV2 at a tiny input, w4a4, to TFLite and ONNX."""
    (x_train, _), (x_test, _) = fashion_slice
    rgb = lambda a: np.repeat(np.pad(a, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)  # noqa: E731
    samples, x = rgb(x_train[:256]), rgb(x_test[:300])
    keras.utils.set_random_seed(0)
    model = _with_data_batchnorm(keras.applications.MobileNetV2(
        alpha=0.35, weights=None, input_shape=(32, 32, 3), classes=10, classifier_activation=None), samples)
    qmodel = kq.RobustQuantizer.from_setting("w4a4").quantize(model, samples)
    assert lower(qmodel).exact
    scores = qmodel.predict(x, verbose=0)
    assert len(set(scores.argmax(1))) >= 5  # a model whose classes differ from input to input
    _check_deep_model_files(qmodel, x, scores, tmp_path)


@pytest.mark.parametrize("name", ["ds_cnn", "resnet_small", "mobilenet_v2_small", "mobilenet_v3_small"])
def test_zoo_models_export_as_the_model_they_are(name, fashion_slice, tmp_path):
    (x_train, _), (x_test, _) = fashion_slice
    keras.utils.set_random_seed(0)
    model = _with_data_batchnorm(kq.zoo.get(name), x_train[:256])
    qmodel = kq.RobustQuantizer.from_setting("w4a4").quantize(model, x_train[:512])
    assert lower(qmodel).exact
    x = x_test[:300]
    scores = qmodel.predict(x, verbose=0)
    assert len(set(scores.argmax(1))) >= 2 and np.std(scores) > 0  # untrained: few classes, but scores vary
    _check_deep_model_files(qmodel, x, scores, tmp_path)


def test_xnnpack_runs_the_whole_file(fashion_slice, tmp_path):
    """Two equal squeeze-excite poolings must not share a weight tensor: XNNPACK leaves an op
    whose weights another op shares to TFLite's builtin kernel, which rounds differently."""
    from ai_edge_litert.interpreter import Interpreter

    (x_train, _), _ = fashion_slice
    keras.utils.set_random_seed(0)
    model = kq.zoo.get("mobilenet_v3_small", blocks=((3, 16, 16, True, "relu", 1), (3, 16, 16, True, "relu", 1)))
    qmodel = kq.RobustQuantizer.from_setting("w8a8").quantize(_with_data_batchnorm(model, x_train[:256]),
                                                              x_train[:256])
    interpreter = Interpreter(str(export.tflite(qmodel, tmp_path / "m.tflite")))
    interpreter.allocate_tensors()
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    assert ops.count("DELEGATE") == 1, ops

"""export.layer_diff: each stored tensor of the TFLite file against the Keras twin."""

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust import export
from keras_qrobust.export import layer_diff
from keras_qrobust.export.layer_diff import LayerDifference, compare_layers, first_difference, stored_tensors

from conftest import randomize_batchnorm

keras = kq.keras
layers = keras.layers


@pytest.fixture(scope="module")
def quantized(fashion_slice):
    (x_train, _), (x_test, _) = fashion_slice
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(8, 3, strides=2)(inputs)))
    x = layers.ReLU()(layers.DepthwiseConv2D(3, padding="same")(x))
    x = layers.Dense(10)(layers.GlobalAveragePooling2D()(layers.Conv2D(12, 1)(x)))
    model = keras.Model(inputs, x)
    randomize_batchnorm(model, np.random.default_rng(0))
    return kq.RobustQuantizer.from_setting("w4a4").quantize(model, x_train[:256]), x_test[:200]


def test_every_stored_tensor_is_compared_and_the_last_is_the_file(quantized, tmp_path):
    qmodel, x = quantized
    rows = compare_layers(qmodel, x)
    assert [row.layer for row in rows] == stored_tensors(export.lower(qmodel).model)
    assert rows[-1].layer == "output_quantizer" and rows[-1].shape == (10,)
    # the last part is the whole model: its difference is the exported file's
    scores = qmodel.predict(x, verbose=0)
    step = float(qmodel.get_layer("output_quantizer").step)
    for kernels in ("default", "reference"):
        found = export.load(export.tflite(qmodel, tmp_path / f"{kernels}.tflite"), kernels=kernels).predict(x)
        assert rows[-1].max_steps[kernels] == pytest.approx(np.max(np.abs(found - scores)) / step, abs=1e-3)
    assert rows[0].max_steps["default"] == 0.0  # the input: quantized the same way on both sides


def test_the_first_tensor_a_file_computes_differently_is_found(quantized, monkeypatch):
    qmodel, x = quantized
    lowered = export.lower(qmodel).model
    names = stored_tensors(lowered)
    broken = next(n for n in names[2:] if isinstance(lowered.get_layer(n), export.layers.FixedFakeQuant))
    convert = layer_diff.convert_lowered

    def convert_with_a_wider_range(part):  # the file gets another range for one tensor than the twin has
        layer = next((l for l in part.layers if l.name == broken), None)
        if layer is None:
            return convert(part)
        low, high = float(layer.min.numpy()), float(layer.max.numpy())
        layer.set_range(low, high + 0.5 * (high - low))
        try:
            return convert(part)
        finally:
            layer.min.assign(low)
            layer.max.assign(high)

    monkeypatch.setattr(layer_diff, "convert_lowered", convert_with_a_wider_range)
    cut = names.index(broken)
    rows = compare_layers(qmodel, x, kernels="default", layers=names[:cut + 2])
    assert not any(row.differs() for row in rows[:cut])
    assert first_difference(rows).layer == broken


def test_first_difference_is_none_when_nothing_differs():
    same = LayerDifference("a", (2,), 0.1, {"default": 0.0}, {"default": 0.0})
    off = LayerDifference("b", (2,), 0.1, {"default": 3.0}, {"default": 0.25})
    assert first_difference([same, same]) is None
    assert first_difference([same, off, off]) is off


def test_bad_arguments_get_one_line_errors(quantized, tmp_path):
    qmodel, x = quantized
    with pytest.raises(ValueError, match="kernels must name"):
        compare_layers(qmodel, x, kernels=("xnn",))
    with pytest.raises(ValueError, match="not stored tensors"):
        compare_layers(qmodel, x, layers=("nope",))
    with pytest.raises(ValueError, match="x must have shape"):
        compare_layers(qmodel, x[:, :10])
    path = export.onnx(qmodel, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="applies to .tflite files only"):
        export.load(path, kernels="reference")
    with pytest.raises(ValueError, match="kernels must be one of"):
        export.load(export.tflite(qmodel, tmp_path / "m.tflite"), kernels="xnn")

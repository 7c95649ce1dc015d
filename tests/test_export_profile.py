"""Deployment profile (Zhou et al. 2022, Table I): counts, peak memory, the profile table."""

import importlib
import json
import os

import numpy as np
import pytest

import keras_qrobust as kq
prof = importlib.import_module("keras_qrobust.export.profile")  # the module (export.profile is the function)

keras, tf = kq.keras, kq.tf


def _small_model():
    """8x8x3 -> Conv2D(4, 3x3, valid) -> Flatten -> Dense(5)."""
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, name="conv"),
        keras.layers.Flatten(name="flatten"),
        keras.layers.Dense(5, name="dense"),
    ])


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """An untrained cnn_small and its float TFLite, int8 TFLite and ONNX exports."""
    import tf2onnx

    kq.defenses.set_seed(0)
    model = kq.zoo.cnn_small()
    out = tmp_path_factory.mktemp("profile")
    paths = {"float": out / "cnn_f32.tflite", "int8": out / "cnn_int8.tflite", "onnx": out / "cnn.onnx"}
    paths["float"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())

    rng = np.random.default_rng(0)

    def representative():
        for _ in range(8):
            yield [rng.random((1, 28, 28, 1), dtype=np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    paths["int8"].write_bytes(converter.convert())

    tf2onnx.convert.from_keras(model, input_signature=[tf.TensorSpec((None, 28, 28, 1), tf.float32)], opset=13,
                               output_path=str(paths["onnx"]))
    return model, paths


@pytest.fixture(scope="module")
def table(artifacts):
    model, paths = artifacts
    x = np.random.default_rng(1).random((40, 28, 28, 1), dtype=np.float32)
    return prof.profile([paths["float"], paths["int8"], paths["onnx"]], keras_model=model, x=x, runs=5, warmup=2)


# ----------------------------------------------------------------------------- counts


@pytest.mark.parametrize("name", ["cnn_small", "mlp_gorsline", "ds_cnn"])
def test_count_params_matches_keras(name):
    model = kq.zoo.get(name)
    assert prof.count_params(model) == model.count_params()


def test_count_macs_by_hand():
    # conv: 6x6 outputs x 3x3 kernel x 3 in-channels x 4 filters; dense: 144 in x 5 out
    conv = 6 * 6 * 3 * 3 * 3 * 4  # 3,888
    dense = (6 * 6 * 4) * 5  # 720
    assert prof.count_macs(_small_model()) == conv + dense == 4608


def test_count_macs_depthwise_separable_grouped_by_hand():
    model = keras.Sequential([
        keras.Input((8, 8, 4)),
        keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2),  # 8·8·3·3·(4·2)
        keras.layers.SeparableConv2D(6, 3, padding="same"),  # 8·8·3·3·8 + 8·8·8·6
        keras.layers.Conv2D(4, 1, groups=2),  # 8·8·1·1·(6/2)·4
        keras.layers.MaxPooling2D(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(3),  # 4·3
    ])
    expected = 8 * 8 * 9 * 8 + (8 * 8 * 9 * 8 + 8 * 8 * 8 * 6) + 8 * 8 * 3 * 4 + 4 * 3
    assert prof.count_macs(model) == expected


def test_count_macs_cnn_small_and_its_quantized_twin():
    model = kq.zoo.cnn_small()
    conv1 = 26 * 26 * 3 * 3 * 1 * 32  # 194,688
    conv2 = 11 * 11 * 3 * 3 * 32 * 64  # 2,230,272
    fc1, logits = 1600 * 128, 128 * 10
    assert prof.count_macs(model) == conv1 + conv2 + fc1 + logits == 2_631_040
    samples = np.random.default_rng(0).random((8, 28, 28, 1), dtype=np.float32)
    quantized = kq.RobustQuantizer(4, 4).quantize(model, samples)
    assert prof.count_macs(quantized) == 2_631_040
    assert prof.count_params(quantized) == model.count_params()  # quantizer ranges are not parameters


def test_counts_reject_subclassed_and_unbuilt_models():
    class Identity(keras.Model):
        def call(self, x):
            return x

    subclassed = Identity()
    subclassed(np.zeros((1, 3), np.float32))
    with pytest.raises(ValueError, match="subclassed"):
        prof.count_params(subclassed)
    with pytest.raises(ValueError, match="not built"):
        prof.count_macs(keras.Sequential([keras.layers.Dense(3)]))


# ----------------------------------------------------------------------------- peak memory


def test_keras_peak_memory_by_hand():
    # batch 2, float32: input 2·192·4 = 1536, conv out 2·144·4 = 1152, flatten 1152, dense 2·5·4 = 40.
    # While conv runs its input and output are alive: 1536 + 1152 = 2688 (the peak; flatten: 2304,
    # dense: 1192). Weights: (3·3·3·4 + 4 + 144·5 + 5) · 4 bytes = 3348.
    analysis = prof.memory_analysis(_small_model(), batch_size=2)
    assert (analysis.weights_bytes, analysis.activations_bytes) == (3348, 2688)
    assert prof.peak_memory(_small_model(), batch_size=2) == 3348 + 2688
    assert analysis.method.startswith("static")


def test_artifact_peak_memory(artifacts):
    _, paths = artifacts
    f32, int8 = prof.memory_analysis(paths["float"]), prof.memory_analysis(paths["int8"])
    assert int8.peak_bytes < f32.peak_bytes
    # the input batch alone: 32·28·28·1 elements of 4 (float) or 1 (int8) bytes
    assert f32.activations_bytes >= 32 * 784 * 4 and int8.activations_bytes >= 32 * 784
    assert prof.peak_memory(paths["onnx"], batch_size=1) < prof.peak_memory(paths["onnx"], batch_size=32)


# ----------------------------------------------------------------------------- profile


def test_profile_rows(table, artifacts):
    model, paths = artifacts
    f32, int8, onnx_row = table.rows
    assert [r.format for r in table] == ["tflite", "tflite", "onnx"]
    assert (f32.precision, int8.precision, onnx_row.precision) == ("float32", "int8", "float32")
    for row, key in zip(table.rows, ["float", "int8", "onnx"]):
        assert row.size_bytes == os.path.getsize(paths[key])
        assert row.params == model.count_params() and row.macs == 2_631_040
        assert row.peak_memory_bytes > 0 and row.memory_method.startswith("static")
        assert row.latency_ms_mean > 0 and row.latency_ms_std >= 0 and len(row.latencies_ms) == 5
        assert row.batch_size == 32 and row.name == paths[key].name
        # the constant tensors are part of the file: their bytes are a floor under its size
        assert 0 < row.tensor_bytes_per_param < row.bytes_per_param
    assert int8.bytes_per_param < 1.2 and int8.tensor_bytes_per_param > 1.0  # int8 weights + scales + biases
    assert 3.8 < f32.bytes_per_param < 4.4 and 3.8 < onnx_row.bytes_per_param < 4.4
    assert int8.peak_memory_bytes < f32.peak_memory_bytes
    assert table["cnn_int8.tflite"] is int8


def test_markdown_and_dict(table):
    markdown = table.to_markdown()
    for column in ["Format", "Precision", "Size (bytes)", "Size (MB)", "#Params", "Bytes/param", "Tensor bytes/param",
                   "#MACs", "Peak memory (MB)", "Memory method", "Latency mean (ms)", "Latency std (ms)"]:
        assert column in markdown
    assert f"{table.rows[1].size_mb:.3f}" in markdown and f"{table.rows[1].latency_ms_mean:.2f}" in markdown
    assert len([line for line in markdown.splitlines() if line.startswith("| cnn")]) == 3
    data = table.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["batch_size"] == 32 and data["runs"] == 5 and len(data["rows"]) == 3
    assert data["rows"][1]["bytes_per_param"] == pytest.approx(table.rows[1].bytes_per_param)
    assert data["rows"][1]["tensor_bytes_per_param"] == pytest.approx(table.rows[1].tensor_bytes_per_param)


def test_profile_keras_model_with_names_and_precisions(artifacts):
    model, paths = artifacts
    result = prof.profile({"keras": model, "int8": paths["int8"]}, runs=2, warmup=1, batch_size=4,
                          precisions={"int8": "int8 (PTQ)"})
    keras_row, int8 = result.rows
    assert (keras_row.name, keras_row.format, keras_row.precision) == ("keras", "keras", "float32")
    assert keras_row.params == model.count_params() and keras_row.size_bytes == 4 * model.count_params()
    assert int8.precision == "int8 (PTQ)" and int8.params is None and int8.bytes_per_param is None
    assert "–" in result.to_markdown()


def test_bad_artifacts(tmp_path):
    unknown = tmp_path / "model.pb"
    unknown.write_bytes(b"x")
    with pytest.raises(ValueError, match="unknown artifact type '.pb'"):
        prof.profile([unknown], runs=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prof.profile([tmp_path / "missing.tflite"], runs=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prof.peak_memory(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="runs"):
        prof.profile([unknown], runs=0)


def test_weight_bytes_counts_kernels_at_their_bit_width(rng):
    from keras_qrobust.export.profile import weight_bytes

    model = kq.zoo.cnn_small(dropout=0.0)
    quantized = kq.RobustQuantizer(4, 4).quantize(model, rng.random((64, 28, 28, 1), dtype=np.float32))
    # kernels: conv1 3·3·1·32 = 288 at 8 bits (the input layer's), conv2 3·3·32·64, fc1 1600·128 and logits
    # 128·10 at 4 bits; biases 32 + 64 + 128 + 10 as int32
    assert weight_bytes(quantized) == 288 + (18432 + 204800 + 1280) // 2 + 4 * (32 + 64 + 128 + 10)
    assert weight_bytes(model) == 4 * model.count_params()

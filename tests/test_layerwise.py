"""Layer-wise mixed precision (Song 2021) and per-layer bits in RobustQuantizer."""

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust.analysis.layerwise import LayerCost, allocate_bits, layer_costs


def test_costs_fall_with_bits_and_clipping_never_hurts(trained_cnn):
    costs = {c.layer: c for c in layer_costs(trained_cnn, bits_options=(2, 4, 8))}
    assert set(costs) == {"conv1", "conv2", "fc1", "logits"}
    assert costs["fc1"].params == trained_cnn.get_layer("fc1").kernel.numpy().size
    for cost in costs.values():
        assert cost.sigma[2] > cost.sigma[4] > cost.sigma[8]
    unclipped = {c.layer: c for c in layer_costs(trained_cnn, bits_options=(2,), clip_ratios=(1.0,))}
    for name, cost in costs.items():
        assert cost.sigma[2] <= unclipped[name].sigma[2] + 1e-9
    assert any(cost.clip[2] < 1.0 for cost in costs.values())  # at 2 bits clipping helps somewhere


def test_allocation_lowers_the_cheapest_layer_per_bit_saved():
    costs = [LayerCost("a", 100, {2: 1.0, 4: 0.5, 8: 0.1}, {2: 1.0, 4: 1.0, 8: 1.0}),
             LayerCost("b", 100, {2: 9.0, 4: 0.2, 8: 0.1}, {2: 0.5, 4: 1.0, 8: 1.0})]
    allocation = allocate_bits(None, budget=6.0, bits_options=(2, 4, 8), costs=costs)
    # lowering a: (0.5 − 0.1)/400 per bit; b: (0.2 − 0.1)/400 -> b goes to 4 bits first (avg 6)
    assert allocation.layer_bits == {"a": 8, "b": 4} and allocation.average_bits == 6.0
    allocation = allocate_bits(None, budget=3.0, bits_options=(2, 4, 8), costs=costs)
    assert allocation.layer_bits == {"a": 2, "b": 4} and allocation.average_bits <= 3.0
    assert allocation.layer_clip == {"a": 1.0, "b": 1.0}
    with pytest.raises(ValueError, match="budget"):
        allocate_bits(None, budget=1.0, bits_options=(2, 4), costs=costs)


def test_mixed_precision_model_quantizes_and_exports_exactly(trained_cnn, fashion_slice, tmp_path):
    (x_train, _), (x, _) = fashion_slice
    allocation = allocate_bits(trained_cnn, budget=4.0, bits_options=(2, 4, 8))
    assert allocation.average_bits <= 4.0 and len(set(allocation.layer_bits.values())) > 1
    quantizer = allocation.quantizer(activation_bits=4)
    qmodel = quantizer.quantize(trained_cnn, x_train[:256])
    for name, bits in allocation.layer_bits.items():
        kernel_quantizer = qmodel.get_layer(name).quantizers["kernel_quantizer"]
        assert kernel_quantizer.bits == bits and kernel_quantizer.clip_ratio == allocation.layer_clip[name]
    lowered = kq.export.lower(qmodel, x_train[:256])
    assert lowered.exact and lowered.weight_bits == allocation.layer_bits
    path = kq.export.tflite(qmodel, tmp_path / "mixed.tflite", x_train[:256])
    scores = kq.export.load(path).predict(x)
    assert np.mean(scores.argmax(1) == qmodel.predict(x, verbose=0).argmax(1)) >= 0.98
    assert "| fc1 |" in allocation.to_markdown()


def test_layer_bits_must_name_weight_layers(trained_cnn):
    with pytest.raises(ValueError, match="not weight layers"):
        kq.RobustQuantizer(weight_bits=4, activation_bits=None, layer_bits={"pool1": 2}).quantize(trained_cnn)
    with pytest.raises(ValueError, match="clipping ratio"):
        kq.RobustQuantizer(layer_clip={"fc1": 1.5})
    with pytest.raises(ValueError, match="clip_ratio"):
        kq.quantizers.SymmetricQuantizer(4, clip_ratio=0.0)


def test_clip_ratio_round_trips_and_clips():
    quantizer = kq.quantizers.SymmetricQuantizer(3, clip_ratio=0.5)
    again = kq.quantizers.get(kq.quantizers.serialize(quantizer))
    assert again == quantizer and "clip=0.5" in str(quantizer)
    w = np.array([[-1.0], [0.1], [0.3], [1.0]], np.float32)
    out = np.asarray(quantizer.quantize(w)).ravel()
    step = 0.5 / 3
    np.testing.assert_allclose(out, [-3 * step, step, 2 * step, 3 * step], atol=1e-6)

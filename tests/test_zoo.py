import pytest

import keras_qrobust as kq


@pytest.mark.parametrize("width", [1, 2, 3])
def test_cnn_small_width_multiplies_filters_and_units(width):
    model = kq.zoo.cnn_small(width=width)
    assert [model.get_layer(n).units if n.startswith("fc") else model.get_layer(n).filters
            for n in ("conv1", "conv2", "fc1")] == [32 * width, 64 * width, 128 * width]
    # conv1 + conv2 + fc1 (5x5x64w inputs) + logits, in closed form
    w = width
    expected = 10 * 32 * w + (9 * 32 * w + 1) * 64 * w + (1600 * w + 1) * 128 * w + (128 * w + 1) * 10
    assert model.count_params() == expected
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize("width", [0, -1, 1.5, "2", True])
def test_cnn_small_rejects_a_width_that_is_not_a_positive_integer(width):
    with pytest.raises(ValueError, match="width must be a positive integer"):
        kq.zoo.cnn_small(width=width)

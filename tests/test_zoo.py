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


@pytest.mark.parametrize("squeeze", [8, 16])
def test_cnn_small_squeeze_shrinks_fc1_and_keeps_the_layout(squeeze):
    model = kq.zoo.cnn_small(width=2, squeeze=squeeze)
    assert model.get_layer("squeeze").filters == squeeze
    assert model.get_layer("squeeze").output_shape == (None, 5, 5, squeeze)
    # conv1 + conv2 + the 1x1 squeeze + fc1 (5x5xsqueeze inputs) + logits
    expected = 10 * 64 + (9 * 64 + 1) * 128 + (128 + 1) * squeeze + (25 * squeeze + 1) * 256 + 257 * 10
    assert model.count_params() == expected


@pytest.mark.parametrize("squeeze", [0, -2, 1.5, True])
def test_cnn_small_rejects_a_squeeze_that_is_not_a_positive_integer(squeeze):
    with pytest.raises(ValueError, match="squeeze must be None or a positive integer"):
        kq.zoo.cnn_small(squeeze=squeeze)

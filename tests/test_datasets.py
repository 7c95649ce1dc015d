import gzip
import os
import struct

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust import datasets
from keras_qrobust.datasets import DatasetError


def write_idx(path, array, magic_type=0x08, truncate=0):
    header = bytes([0, 0, magic_type, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(data[: len(data) - truncate])


def fake_fashion(folder, n=10000, split="test", **kwargs):
    images, labels, _ = datasets.FASHION_MNIST_FILES[split]
    write_idx(folder / f"{images}.gz", np.zeros((n, 28, 28), np.uint8), **kwargs)
    write_idx(folder / f"{labels}.gz", np.arange(n) % 10)


@pytest.fixture(autouse=True)
def fresh_cache():
    datasets._fashion_mnist_raw.cache_clear()
    yield
    datasets._fashion_mnist_raw.cache_clear()


def test_fashion_mnist_from_the_debian_package():
    x, y = kq.datasets.load("fashion_mnist", "test")
    assert x.shape == (10000, 28, 28, 1) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.99
    assert y.dtype == np.int64 and set(np.unique(y)) == set(range(10))
    x_train, _ = kq.datasets.load("fashion_mnist", "train")
    assert x_train.shape == (60000, 28, 28, 1)


def test_keras_qrobust_data_is_searched_first(tmp_path, monkeypatch):
    fake_fashion(tmp_path)
    monkeypatch.setenv("KERAS_QROBUST_DATA", str(tmp_path))
    x, y = kq.datasets.load("fashion_mnist", "test")
    assert x.max() == 0.0 and y[:3].tolist() == [0, 1, 2]


def test_wrong_sizes_are_reported(tmp_path):
    fake_fashion(tmp_path, n=100)
    with pytest.raises(DatasetError, match=r"expected \(10000, 28, 28\)"):
        kq.datasets.load("fashion_mnist", "test", data_dir=str(tmp_path))


def test_truncated_data_is_reported(tmp_path):
    fake_fashion(tmp_path, truncate=5)
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        kq.datasets.load("fashion_mnist", "test", data_dir=str(tmp_path))


def test_damaged_gzip_is_reported(tmp_path):
    fake_fashion(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DatasetError, match="damaged or truncated"):
        kq.datasets.load("fashion_mnist", "test", data_dir=str(tmp_path))


def test_bad_magic_is_reported(tmp_path):
    path = tmp_path / "x.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"PK\x03\x04 not idx")
    with pytest.raises(DatasetError, match="not an IDX file"):
        datasets.read_idx(path)


def test_half_present_files_are_reported(tmp_path):
    fake_fashion(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DatasetError, match="not t10k-labels-idx1-ubyte"):
        kq.datasets.load("fashion_mnist", "test", data_dir=str(tmp_path))


def test_missing_everywhere_lists_the_places_tried(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "nowhere")
    monkeypatch.setenv("KERAS_QROBUST_DATA", str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match=r"looked in: .*empty.*nowhere.*apt-get install dataset-fashion-mnist"):
        kq.datasets.load("fashion_mnist", "train")


def test_digits_split_is_fixed_and_stratified():
    x, y = kq.datasets.load("digits", "train")
    xt, yt = kq.datasets.load("digits", "test")
    assert x.shape == (1437, 8, 8, 1) and xt.shape == (360, 8, 8, 1)
    assert 0 <= x.min() and x.max() == 1.0
    assert np.bincount(yt).min() >= 35
    np.testing.assert_array_equal(kq.datasets.load("digits", "test")[1], yt)


def test_two_spirals_follow_gorsline_eq_15():
    x, y = kq.datasets.load("two_spirals", "train")
    assert x.shape == (400, 2) and np.bincount(y).tolist() == [200, 200]
    radius = np.linalg.norm(x, axis=1)
    assert radius.max() < 10.0 + 1.0  # 0.1 * t_max plus noise
    clean_x, _ = kq.datasets.two_spirals(n_per_spiral=50, noise_variance=0.0, seed=3)
    t = np.linalg.norm(clean_x[:50], axis=1) / 0.1  # + spiral: angle == t (mod 2 pi)
    angle = np.arctan2(clean_x[:50, 1], clean_x[:50, 0])
    np.testing.assert_allclose(np.cos(angle), np.cos(t), atol=1e-4)
    assert not np.array_equal(kq.datasets.load("two_spirals", "test")[0], x)


def test_tfds_offline_error_says_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds_default"))
    with pytest.raises(DatasetError) as error:
        kq.datasets.load("cifar10", "test", data_dir=str(tmp_path / "mine"), download=False)
    message = str(error.value)
    assert "cifar10" in message and "mine" in message and "tfds_default" in message
    assert "download=False" in message


def test_local_dataset_bad_split():
    with pytest.raises(ValueError, match="split must be 'train', 'test', 'fit' or 'validation'"):
        kq.datasets.load("digits", "val")


@pytest.mark.parametrize("name, held_out", [("digits", 143), ("fashion_mnist", 5000)])
def test_validation_is_carved_from_the_end_of_the_training_split(name, held_out):
    x, y = kq.datasets.load(name, "train")
    x_fit, y_fit = kq.datasets.load(name, "fit")
    x_val, y_val = kq.datasets.load(name, "validation")
    assert len(x_val) == held_out == kq.datasets.validation_size(len(x))
    np.testing.assert_array_equal(np.concatenate([x_fit, x_val]), x)
    np.testing.assert_array_equal(np.concatenate([y_fit, y_val]), y)
    assert len(np.unique(y_val)) == int(y.max()) + 1  # every class is in the validation split

"""Datasets as numpy arrays: float32 inputs (images in [0, 1], NHWC) and int64 labels.

* ``fashion_mnist`` — the IDX ``.gz`` files from ``$KERAS_QROBUST_DATA`` or the Debian package
  ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``), checked on read;
* ``digits`` — scikit-learn's bundled 8x8 digits (a fixed, stratified 80/20 split);
* ``two_spirals`` — Gorsline et al. 2021 eq. (15);
* any other name — TensorFlow Datasets (a prepared local copy first, then a download).

Every dataset also has the splits ``"fit"`` and ``"validation"``: the training split without
and with only its last :func:`validation_size` examples. Recipes, defaults and
hyperparameters are chosen on ``"validation"``; ``"test"`` is kept for the final figures.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["load", "two_spirals", "read_idx", "DatasetError", "fashion_mnist_dirs", "LOCAL", "validation_size",
           "VALIDATION_SIZE"]

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000),
}
_INSTALL_HINT = (
    "Install the Debian package (`apt-get install dataset-fashion-mnist`; the project's "
    "./run.sh does it) or set KERAS_QROBUST_DATA to a folder holding "
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and "
    "t10k-labels-idx1-ubyte.gz."
)
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DatasetError(RuntimeError):
    """A dataset could not be found or read; the message says what was tried and the fix."""


def fashion_mnist_dirs(data_dir: Optional[str] = None) -> list[Path]:
    """Folders searched for the Fashion-MNIST IDX files, in order."""
    candidates = []
    for root in (data_dir, os.environ.get("KERAS_QROBUST_DATA")):
        if root:
            candidates += [Path(root), Path(root) / "fashion-mnist", Path(root) / "fashion_mnist"]
    candidates.append(DEBIAN_FASHION_MNIST)
    return candidates


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed), checking header and length."""
    path = Path(path)
    try:
        with _open(path) as handle:
            data = handle.read()
    except FileNotFoundError:
        raise DatasetError(f"{path} does not exist. {_INSTALL_HINT}") from None
    except (EOFError, OSError, gzip.BadGzipFile) as error:
        raise DatasetError(
            f"{path} is damaged or truncated ({error}); replace it with an intact copy. {_INSTALL_HINT}"
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path} is not an IDX file (bad magic number {data[:4]!r}). {_INSTALL_HINT}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path} is truncated inside its header. {_INSTALL_HINT}")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise DatasetError(
            f"{path} holds {len(data) - header} data bytes but its header {dims} needs {expected}: "
            f"the file is truncated or corrupt. {_INSTALL_HINT}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def _find(folder: Path, stem: str) -> Optional[Path]:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=4)
def _fashion_mnist_raw(split: str, data_dir: Optional[str]) -> tuple[np.ndarray, np.ndarray]:
    images_stem, labels_stem, count = FASHION_MNIST_FILES[split]
    tried = []
    for folder in fashion_mnist_dirs(data_dir):
        images, labels = _find(folder, images_stem), _find(folder, labels_stem)
        if images is None and labels is None:
            tried.append(str(folder))
            continue
        if images is None or labels is None:
            missing = images_stem if images is None else labels_stem
            raise DatasetError(f"{folder} has Fashion-MNIST files but not {missing}(.gz). {_INSTALL_HINT}")
        x, y = read_idx(images), read_idx(labels)
        if x.shape != (count, 28, 28) or y.shape != (count,):
            raise DatasetError(
                f"Fashion-MNIST {split} files in {folder} have shapes {x.shape} and {y.shape}; "
                f"expected ({count}, 28, 28) and ({count},). {_INSTALL_HINT}"
            )
        if y.max() > 9:
            raise DatasetError(f"{labels} has labels up to {y.max()}; Fashion-MNIST has 10 classes. {_INSTALL_HINT}")
        return x, y
    raise DatasetError(f"Fashion-MNIST ({split}) not found; looked in: {', '.join(tried)}. {_INSTALL_HINT}")


def _fashion_mnist(split: str, data_dir: Optional[str]):
    x, y = _fashion_mnist_raw(split, None if data_dir is None else str(data_dir))
    return (x.astype(np.float32) / 255.0)[..., None], y.astype(np.int64)


def _digits(split: str):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    return (x_train, y_train) if split == "train" else (x_test, y_test)


def two_spirals(n_per_spiral: int = 200, noise_variance: float = 0.03, t_max: float = 100.0,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spirals, Gorsline et al. 2021 eq. (15).

    ``x = ±0.1 t cos t + ξx``, ``y = ±0.1 t sin t + ξy`` with ``t ~ U(0, t_max)`` and
    ``ξ ~ N(0, noise_variance)``; the ``+`` spiral is class 0, the ``-`` spiral class 1.
    """
    if n_per_spiral < 1:
        raise ValueError(f"n_per_spiral must be >= 1, got {n_per_spiral}")
    rng = np.random.default_rng(seed)
    points, labels = [], []
    for label, sign in enumerate((1.0, -1.0)):
        t = rng.uniform(0.0, t_max, n_per_spiral)
        noise = rng.normal(0.0, np.sqrt(noise_variance), (n_per_spiral, 2))
        xy = sign * 0.1 * t[:, None] * np.stack([np.cos(t), np.sin(t)], axis=1) + noise
        points.append(xy)
        labels.append(np.full(n_per_spiral, label))
    return np.concatenate(points).astype(np.float32), np.concatenate(labels).astype(np.int64)


def _tfds(name: str, split: str, data_dir: Optional[str], download: bool):
    import tensorflow_datasets as tfds

    local_dirs = [d for d in (data_dir, os.environ.get("KERAS_QROBUST_DATA")) if d]
    default_dir = os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    local_dirs.append(default_dir)
    tried = []
    for folder in local_dirs:
        try:
            data = tfds.load(name, split=split, as_supervised=True, batch_size=-1,
                             data_dir=folder, download=False)
            return _tfds_arrays(tfds, data)
        except Exception as error:  # noqa: BLE001 - each failure is reported below
            tried.append(f"{folder} ({type(error).__name__}: {str(error).splitlines()[0][:160]})")
    if download:
        try:
            data = tfds.load(name, split=split, as_supervised=True, batch_size=-1,
                             data_dir=data_dir, download=True)
            return _tfds_arrays(tfds, data)
        except Exception as error:  # noqa: BLE001
            tried.append(f"download ({type(error).__name__}: {str(error).splitlines()[0][:160]})")
    else:
        tried.append("download (skipped: download=False)")
    raise DatasetError(
        f"Could not load dataset {name!r} split {split!r}. Local datasets: {', '.join(LOCAL)}. "
        f"Tried TensorFlow Datasets: {'; '.join(tried)}. Online, load it once with "
        f"download=True; offline, copy a prepared TFDS folder into one of the folders above."
    )


def _tfds_arrays(tfds, data):
    images, labels = tfds.as_numpy(data)
    x = images.astype(np.float32)
    if np.issubdtype(images.dtype, np.integer):
        x /= float(np.iinfo(images.dtype).max)
    return x, labels.astype(np.int64)


LOCAL = ("fashion_mnist", "digits", "two_spirals")
#: the most training examples a validation split holds (5,000 of Fashion-MNIST's 60,000)
VALIDATION_SIZE = 5000


def validation_size(n_train: int) -> int:
    """How many of ``n_train`` training examples the ``"validation"`` split holds: a tenth,
    at most :data:`VALIDATION_SIZE` (the last ones of the training split, a fixed choice)."""
    return min(VALIDATION_SIZE, n_train // 10)


def load(name: str, split: str = "train", *, data_dir: Optional[str] = None,
         download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Load ``split`` of dataset ``name`` as ``(x, y)``.

    Args:
        name: ``fashion_mnist``, ``digits``, ``two_spirals`` or a TFDS name (``cifar10``,
            ``svhn_cropped``, ``mnist``, ...).
        split: ``"train"``, ``"test"``, or ``"fit"`` / ``"validation"`` (the training split
            without / with only its last :func:`validation_size` examples); TFDS names also
            take TFDS split strings.
        data_dir: a folder to look in first (IDX files, or a TFDS data folder).
        download: let TFDS download a dataset that is not found locally.
    """
    if split in ("fit", "validation"):
        x, y = load(name, "train", data_dir=data_dir, download=download)
        held_out = validation_size(len(x))
        return (x[:-held_out], y[:-held_out]) if split == "fit" else (x[-held_out:], y[-held_out:])
    if name in LOCAL and split not in ("train", "test"):
        raise ValueError(f"split must be 'train', 'test', 'fit' or 'validation' for {name}, got {split!r}")
    if name == "fashion_mnist":
        return _fashion_mnist(split, data_dir)
    if name == "digits":
        return _digits(split)
    if name == "two_spirals":
        return two_spirals(seed=0 if split == "train" else 1)
    return _tfds(name, split, data_dir, download)

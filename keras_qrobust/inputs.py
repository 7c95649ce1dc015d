"""Reading and checking the user's inputs: a saved model file and a dataset.

Every problem raises :class:`InputError` with one line naming it and the fix, before
anything is written. Used by every ``keras-qrobust`` subcommand and by the guard pipeline
(which is why it sits below both ``keras_qrobust.cli`` and ``keras_qrobust.guard``).
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["InputError", "check_count", "Data", "load_model_file", "load_data", "check_data_fits", "check_model_output",
           "check_above_chance", "fingerprint"]

#: a model whose clean accuracy is within this of the most frequent class's rate is near chance
CHANCE_MARGIN = 0.10
#: test inputs the chance check scores (the first ones)
CHANCE_INPUTS = 1000


class InputError(ValueError):
    """Bad usage or bad input: the message names the problem and the fix (the CLI exits with
    code 2). ``keras_qrobust.guard.InputError`` is this class."""


def check_count(value, name: str):
    """A count the user gave (``None``: not given) is at least 1; returns it."""
    if value is not None and value < 1:
        raise InputError(f"{name} must be >= 1, got {value}")
    return value


def load_model_file(path: str, argument: str = "--model", trust: bool = False):
    """Load a saved tf_keras model (``.keras``, ``.h5`` or a SavedModel folder), checked; a
    file naming code outside Keras, tfmot and keras_qrobust is refused unless ``trust``
    (see :mod:`keras_qrobust.model_files`)."""
    from ._keras import check_model
    from .model_files import SAVE_HINT, ModelFileError, UntrustedModelError, load_model

    try:
        model = load_model(Path(path), trust=trust)
    except (UntrustedModelError, ModelFileError) as error:  # a missing file too: one line naming the fix
        raise InputError(f"{argument} {error}") from None
    except Exception as error:  # noqa: BLE001 - every loader failure is the same user problem
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise InputError(f"{argument} {path} could not be loaded as a tf_keras model ({first}); check the file "
                              f"is complete, or {SAVE_HINT}") from None
    try:
        model = check_model(model, argument)
    except TypeError as error:
        raise InputError(str(error)) from None
    check_model_output(model, argument)
    return model


@dataclass
class Data:
    """Train and test arrays (inputs in [0, 1]) and where they came from."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def describe(self) -> str:
        return (f"{self.name}: {len(self.x_train)} training and {len(self.x_test)} test inputs of shape "
                f"{tuple(self.x_train.shape[1:])}, {self.num_classes} classes")


def _npz_arrays(path: Path) -> dict:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise InputError(f"--dataset {path} is not a readable .npz file ({error}); write it with "
                              "np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)") from None
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
    if missing:
        held = ", ".join(arrays) or "nothing"
        raise InputError(f"--dataset {path} has no {', '.join(missing)} (it holds {held}); "
                              "write it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)")
    return arrays


def _check_split(x: np.ndarray, y: np.ndarray, split: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise InputError(f"{source}: y_{split} has shape {y.shape}; give integer class labels of shape (n,), not "
                              "one-hot rows (use y.argmax(axis=1))")
    if len(x) != len(y):
        raise InputError(f"{source}: x_{split} has {len(x)} inputs but y_{split} has {len(y)} labels; give one "
                              "label per input")
    if not len(x):
        raise InputError(f"{source}: the {split} split is empty; give at least one input")
    if not np.issubdtype(y.dtype, np.integer) and not (np.issubdtype(y.dtype, np.floating)
                                                        and np.all(np.isfinite(y)) and np.all(y == np.round(y))):
        raise InputError(f"{source}: y_{split} holds non-integer labels ({y.dtype}); give class indices 0..C-1")
    if y.min() < 0:
        raise InputError(f"{source}: y_{split} has a negative label ({int(y.min())}); give class indices 0..C-1")
    x = np.asarray(x, np.float32)
    if not np.all(np.isfinite(x)) or x.min() < 0.0 or x.max() > 1.0:
        raise InputError(f"{source}: x_{split} has values in [{np.nanmin(x):g}, {np.nanmax(x):g}]; guard's ε is "
                              "an L∞ budget on inputs in [0, 1], so scale them (e.g. x / 255)")
    return x, y.astype(np.int64)


def load_data(dataset: str, train_samples: Optional[int] = None, test_samples: Optional[int] = None) -> Data:
    """A built-in or TFDS dataset by name, or an ``.npz`` file, sliced to the first N of each split."""
    from .datasets import DatasetError, load

    path = Path(dataset)
    if dataset.lower().endswith(".npz"):
        if not path.is_file():
            raise InputError(f"--dataset {dataset} does not exist; pass an .npz file with x_train, y_train, "
                                  "x_test, y_test or a dataset name such as fashion_mnist")
        arrays = _npz_arrays(path)
        splits = {s: (arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in ("train", "test")}
    else:
        try:
            splits = {s: load(dataset, s) for s in ("train", "test")}
        except (DatasetError, ValueError) as error:
            raise InputError(f"--dataset {dataset}: {str(error).splitlines()[0]}") from None
    (x_train, y_train), (x_test, y_test) = (_check_split(*splits[s], s, f"--dataset {dataset}")
                                            for s in ("train", "test"))
    if x_train.shape[1:] != x_test.shape[1:]:
        raise InputError(f"--dataset {dataset}: x_train inputs have shape {x_train.shape[1:]} but x_test inputs "
                              f"{x_test.shape[1:]}; both splits need the same input shape")
    name = path.name if dataset.lower().endswith(".npz") else dataset  # no machine paths in outputs
    return Data(name, x_train[:train_samples], y_train[:train_samples], x_test[:test_samples], y_test[:test_samples])


def _classes_of(model) -> int:
    width = int(model.output_shape[-1])
    return 2 if width == 1 else width


def check_data_fits(data: Data, model=None) -> None:
    """The dataset's input shape and labels fit ``model`` (or guard's default cnn_small)."""
    shape = tuple(data.x_train.shape[1:])
    if model is None:
        if len(shape) != 3 or min(shape[:2]) < 10:
            raise InputError(f"--dataset {data.name} has inputs of shape {shape}; guard's default model cnn_small "
                                  "needs images (height, width, channels) of at least 10x10, so pass your own --model")
        return
    expected = tuple(model.input_shape[1:])
    if len(expected) != len(shape) or any(e is not None and e != s for e, s in zip(expected, shape)):
        raise InputError(f"--model takes inputs of shape {expected} but --dataset {data.name} inputs have shape "
                              f"{shape}; pass the dataset the model was built for (or reshape the .npz arrays)")
    classes = _classes_of(model)
    top = int(max(data.y_train.max(), data.y_test.max()))
    if top >= classes:
        raise InputError(f"--dataset {data.name} has labels up to {top} but --model scores {classes} classes; "
                              f"labels must be in 0..{classes - 1} (pass the matching dataset or model)")


def _output_activation(model) -> str:
    """The last layer's activation name ("linear" for logits)."""
    last = model.layers[-1]
    if type(last).__name__ == "Softmax":
        return "softmax"
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", str(activation)) if activation is not None else "linear"


def check_model_output(model, argument: str = "--model") -> None:
    """The model ends in one score per class (logits or softmax): a sigmoid or a one-unit head
    (a binary or multi-label classifier) would be read as class scores and give wrong numbers."""
    width = model.output_shape[-1] if not isinstance(model.output_shape, list) else None
    if width is None:
        raise InputError(f"{argument} has {len(model.outputs)} outputs; keras_qrobust scores one classification "
                              "output: pass a model with a single output (e.g. keras.Model(m.input, m.outputs[0]))")
    activation = _output_activation(model)
    if width == 1 or activation in ("sigmoid", "hard_sigmoid"):
        raise InputError(f"{argument} ends in {width} unit(s) with activation {activation} (a binary or "
                              "multi-label head); keras_qrobust needs one score per class: end the model in "
                              "Dense(num_classes) (logits) or with softmax (for a binary task, 2 classes)")


def check_above_chance(model, data: Data, argument: str = "--model", force: bool = False) -> Optional[str]:
    """Stop (unless ``force``) when ``model``'s clean accuracy on the first test inputs is within
    ``CHANCE_MARGIN`` of what always answering the most frequent class scores: an untrained
    model, or inputs preprocessed differently from training, would make every robustness
    number meaningless. Returns the warning when ``force`` let it pass."""
    from .metrics import predict_labels

    x, y = data.x_test[:CHANCE_INPUTS], data.y_test[:CHANCE_INPUTS]
    accuracy = float(np.mean(predict_labels(model, x) == y))
    majority = float(np.bincount(y).max() / len(y))
    if accuracy > majority + CHANCE_MARGIN:
        return None
    message = (f"{argument} is near chance on --dataset {data.name}: {100 * accuracy:.1f}% clean on the first {len(y)} "
               f"test inputs, where always answering the most frequent class scores {100 * majority:.1f}%; the model "
               "is untrained or its inputs are preprocessed differently (keras_qrobust feeds [0, 1] images as given)")
    if not force:
        raise InputError(f"{message}: fix that, or pass --force to go on")
    return message


def fingerprint(path: Optional[str]) -> Optional[str]:
    """sha256 of a file (of every file, by relative name, for a folder), to notice a changed input."""
    if path is None or not os.path.exists(path):
        return None
    digest = hashlib.sha256()
    root = Path(path)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(root) if file != root else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()

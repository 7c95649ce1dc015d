"""Modules that moved keep their old import path for one release, with a DeprecationWarning."""

import importlib
import subprocess
import sys

import numpy as np
import pytest

import keras_qrobust as kq
from keras_qrobust._deprecated import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_module_path_warns_and_is_the_new_module(old):
    sys.modules.pop(f"keras_qrobust.{old}", None)
    with pytest.warns(DeprecationWarning, match=f"keras_qrobust.{old} is deprecated.*keras_qrobust.{MOVED[old]}"):
        module = importlib.import_module(f"keras_qrobust.{old}")
    new = importlib.import_module(f"keras_qrobust.{MOVED[old]}")
    if old in ("training", "training.feedback"):  # shims that re-export the new package's names
        assert module.feedback_learning is new.feedback_learning
    else:
        assert module is new


@pytest.mark.parametrize("old", sorted(name for name in MOVED if "." not in name))
def test_an_old_attribute_of_the_package_warns(old):
    kq.__dict__.pop(old, None)
    with pytest.warns(DeprecationWarning, match=f"keras_qrobust.{MOVED[old]}"):
        module = getattr(kq, old)
    assert module.__name__ == f"keras_qrobust.{old if old == 'training' else MOVED[old]}"
    with pytest.raises(AttributeError, match="no attribute 'not_a_module'"):
        kq.not_a_module  # noqa: B018


def test_importing_the_package_warns_about_nothing():
    code = ("import warnings; warnings.filterwarnings('error', 'keras_qrobust', DeprecationWarning); "
            "import keras_qrobust")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_the_old_search_method_warns_and_forwards():
    with pytest.warns(DeprecationWarning, match="keras_qrobust.analysis.search"):
        with pytest.raises(ValueError, match="empty"):  # the search's own validation: it was called
            model = kq.keras.Sequential([kq.keras.Input((4,)), kq.keras.layers.Dense(2)])
            kq.RobustQuantizer().search(model, (np.zeros((3, 4), "float32"), np.zeros(3, "int64")), [])

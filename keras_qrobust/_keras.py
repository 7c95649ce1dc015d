"""The one module that imports Keras.

tfmot, quantizeml and cnn2snn are built on Keras 2 (``tf_keras``). TensorFlow 2.19
picks Keras 3 for ``tf.keras`` unless ``TF_USE_LEGACY_KERAS=1`` is set before
TensorFlow loads, so this module sets it and every other module of the package
imports ``keras`` and ``tf`` from here.
"""

from __future__ import annotations

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
# hide TensorFlow's start-up INFO lines (oneDNN, CPU features), which would bury the CLI's
# one-line errors; TF_CPP_MIN_LOG_LEVEL=0 shows them again
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["keras", "tf", "register", "check_model", "is_keras3_object"]

PACKAGE = "keras_qrobust"


def register(cls):
    """Register ``cls`` so ``keras.models.load_model`` finds it without custom_objects."""
    return keras.utils.register_keras_serializable(package=PACKAGE)(cls)


def is_keras3_object(obj) -> bool:
    """True when ``obj`` is an instance of a Keras 3 (``keras`` package) class."""
    return any(
        (klass.__module__ or "").split(".")[0] == "keras" for klass in type(obj).__mro__
    )


def _keras3_version() -> str:
    try:
        import keras as keras3  # the Keras 3 package, only to name its version

        return keras3.__version__
    except Exception:  # pragma: no cover - Keras 3 absent means the guard never fires
        return "3"


def check_model(model, argument: str = "model") -> "keras.Model":
    """Return ``model`` if it is a tf_keras model, else raise a TypeError saying how to fix it."""
    if isinstance(model, keras.Model):
        return model
    if is_keras3_object(model):
        raise TypeError(
            f"`{argument}` is a Keras 3 model ({type(model).__module__}.{type(model).__name__}, "
            f"Keras {_keras3_version()}). keras_qrobust works on Keras 2 (tf_keras) models, "
            "which tfmot, quantizeml and cnn2snn require. Build the model with "
            "`import keras_qrobust as kq; keras = kq.keras` (or `import tf_keras as keras`) "
            "and `keras.Sequential(...)` / `keras.Model(...)`, or load a saved file with "
            "`kq.keras.models.load_model(path)`."
        )
    raise TypeError(
        f"`{argument}` must be a tf_keras Model, got {type(model).__module__}."
        f"{type(model).__name__}. Build it with `keras_qrobust.keras` (tf_keras)."
    )


def registered_objects() -> dict:
    """This package's registered Keras classes by plain class name (for from_config)."""
    prefix = f"{PACKAGE}>"
    return {
        key[len(prefix):]: value
        for key, value in keras.utils.get_custom_objects().items()
        if key.startswith(prefix)
    }

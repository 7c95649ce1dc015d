import os
import re
import subprocess
import sys

import pytest

import keras_qrobust as kq


def test_legacy_keras_is_selected_before_tensorflow_loads():
    code = ("import keras_qrobust as kq, tensorflow as tf, os; "
            "print(os.environ['TF_USE_LEGACY_KERAS'], kq.keras.__name__, tf.keras.__name__)")
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    flag, ours, tfs = out.stdout.split()
    assert flag == "1" and ours == "tf_keras" and tfs.startswith("tf_keras")


# an import statement of the keras or tf_keras package (not `from .._keras import keras`, not a
# message that tells the user to `import tf_keras`)
DIRECT_KERAS_IMPORT = re.compile(r"^\s*(import\s+(tf_keras|keras)\b|from\s+(tf_keras|keras)(\.\w+)*\s+import\b)", re.M)


@pytest.mark.parametrize("line, direct", [
    ("import keras", True), ("import tf_keras as keras", True), ("    from keras.layers import Dense", True),
    ("from tf_keras import layers", True), ("from .._keras import keras", False),
    ('hint = "`import tf_keras as keras`"', False), ("import keras_qrobust as kq", False)])
def test_the_direct_import_pattern(line, direct):
    assert bool(DIRECT_KERAS_IMPORT.search(line)) is direct


def test_only_the_entry_module_imports_keras():
    root = os.path.dirname(kq.__file__)
    offenders = []
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py") and name != "_keras.py":
                text = open(os.path.join(folder, name)).read()
                if DIRECT_KERAS_IMPORT.search(text):
                    offenders.append(os.path.relpath(os.path.join(folder, name), root))
    assert offenders == []


def test_keras3_model_error_says_how_to_fix():
    import keras as keras3

    model = keras3.Sequential([keras3.Input((3,)), keras3.layers.Dense(1)])
    with pytest.raises(TypeError) as error:
        kq.metrics.accuracy(model, [[0, 0, 0]], [0])
    message = str(error.value)
    assert "Keras 3 model" in message and "tf_keras" in message and "kq.keras" in message


def test_non_model_is_rejected():
    with pytest.raises(TypeError, match="must be a tf_keras Model"):
        kq.RobustQuantizer(4, None).quantize("model.h5")

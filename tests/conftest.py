import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

import keras_qrobust as kq  # noqa: E402  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

settings.register_profile("default", max_examples=60, deadline=None)
settings.load_profile("default")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def randomize_batchnorm(model, rng) -> None:
    """Give every BatchNormalization non-trivial statistics so folding is really tested."""
    for layer in model.layers:
        if isinstance(layer, kq.keras.layers.BatchNormalization):
            n = layer.get_weights()[0].shape[0]
            layer.set_weights([
                rng.uniform(0.5, 1.5, n), rng.normal(0, 0.2, n), rng.normal(0, 0.2, n), rng.uniform(0.5, 2.0, n)
            ])


@pytest.fixture(scope="session")
def fashion_slice():
    """1,000 training and 500 test Fashion-MNIST images."""
    x_train, y_train = kq.datasets.load("fashion_mnist", "train")
    x_test, y_test = kq.datasets.load("fashion_mnist", "test")
    return (x_train[:1000], y_train[:1000]), (x_test[:500], y_test[:500])


@pytest.fixture(scope="session")
def trained_cnn(fashion_slice):
    """cnn_small trained for 2 epochs on 1,000 images."""
    (x, y), _ = fashion_slice
    kq.defenses.set_seed(0)
    model = kq.zoo.cnn_small()
    kq.defenses.train_classifier(model, x, y, epochs=2, batch_size=64, seed=0)
    return model


@pytest.fixture(scope="session")
def tiny_case(tmp_path_factory, fashion_slice):
    """The CLI tests' inputs: a Fashion-MNIST slice as an .npz (300 training, 80 test images)
    and a tiny tf_keras CNN (1,290 parameters) trained on it for 10 epochs, saved as .keras."""
    (x, y), (x_test, y_test) = fashion_slice
    folder = tmp_path_factory.mktemp("tiny_case")
    np.savez(folder / "data.npz", x_train=x[:300], y_train=y[:300], x_test=x_test[:80], y_test=y_test[:80])
    keras = kq.keras
    kq.defenses.set_seed(0)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, strides=2, activation="relu"),
                              keras.layers.MaxPooling2D(2), keras.layers.Flatten(),
                              keras.layers.Dense(8, activation="relu"), keras.layers.Dense(10)], name="tiny")
    kq.defenses.train_classifier(model, x[:300], y[:300], epochs=10, batch_size=32, seed=0)
    model.save(folder / "tiny.keras")
    return folder / "tiny.keras", folder / "data.npz"


@pytest.fixture(scope="session")
def guard_runs(tiny_case, tmp_path_factory):
    """``keras-qrobust guard`` on the tiny case: killed after the quantize stage and resumed,
    and an uninterrupted run with the same command and seed (tests/_guard_runs.py)."""
    from _guard_runs import guard_runs as run

    return run(tiny_case, tmp_path_factory.mktemp("guard"))


@pytest.fixture(scope="module")
def local_ray(request):
    """A Ray instance on this machine with 2 CPUs and no dashboard (no network), for the tests
    of one module; that module's functions are sent to the workers by value (tests/ is not
    importable there)."""
    from keras_qrobust.executor import start_ray

    pytest.importorskip("ray")
    ray = start_ray(num_cpus=2)
    ray.cloudpickle.register_pickle_by_value(request.module)
    yield
    ray.shutdown()

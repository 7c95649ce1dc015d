"""Training under tf.distribute.MirroredStrategy (issue 23): AdversarialModel, the
feedback-learning fine-tune and quantization-aware training with WXAYScheme.

TensorFlow fixes its logical devices when it first initializes them, which the other tests
of this session have already done, so the two-device runs happen in fresh interpreters.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

# shared by the scripts: 2 logical CPUs, 256 Fashion-MNIST images, a small MLP, a fixed start
PRELUDE = textwrap.dedent('''
    import json

    import numpy as np

    import keras_qrobust as kq
    from keras_qrobust._keras import keras, tf
    from keras_qrobust.defenses import AdversarialModel

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2

    x, y = kq.datasets.load("fashion_mnist", "train")
    x, y = x[:256], y[:256]
    PATTERN = np.sin(12.9898 * np.arange(784, dtype=np.float32)).reshape(28, 28, 1)


    class FixedStart(AdversarialModel):
        """A start in the ε-ball that depends on the example only, not on the replica."""

        def _start(self, x):
            return self.eps * tf.sin(1000.0 * x + PATTERN)


    def build(cls=keras.Sequential):
        return cls([keras.Input((28, 28, 1)), keras.layers.Flatten(),
                    keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10)])


    def scope(distributed):
        return strategy.scope() if distributed else tf.distribute.get_strategy().scope()


    def compile_sgd(model):
        # plain SGD: Adam's update hardly depends on the gradient's scale
        model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      ["accuracy"])
        return model


    def last(history):
        return {k: float(v[-1]) for k, v in history.items()}


    def max_diff(a, b):
        return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


    kq.defenses.set_seed(0)
    initial = build().get_weights()
''')

ADVERSARIAL = PRELUDE + textwrap.dedent('''
    class Unscaled(FixedStart):
        """The bug the test must catch: the replica's mean loss, not divided by the replicas."""

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
            return super().compute_loss(x, y, y_pred, sample_weight) * strategy.num_replicas_in_sync


    def fit(attack, cls=FixedStart, distributed=False):
        kq.defenses.set_seed(0)
        with scope(distributed):
            model = build()
            model.set_weights(initial)
            trainer = compile_sgd(cls(model, attack=attack, eps=0.1, steps=3))
        logs = trainer.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0).history
        return model.get_weights(), last(logs)


    results = {}
    for attack in ("pgd", "trades"):
        single, single_logs = fit(attack)
        mirrored, mirrored_logs = fit(attack, distributed=True)
        results[attack] = {"weights": max_diff(single, mirrored), "moved": max_diff(initial, single),
                           "logs": [single_logs, mirrored_logs]}
        if attack == "pgd":
            results["unscaled"] = max_diff(single, fit("pgd", Unscaled, distributed=True)[0])
    print("RESULT", json.dumps(results))
''')

FEEDBACK_QAT = PRELUDE + textwrap.dedent('''
    import warnings

    import tensorflow_model_optimization as tfmot

    from keras_qrobust import configs, quantizers
    from keras_qrobust.defenses import FeedbackLearning
    from keras_qrobust.defenses import feedback_learning


    class UnscaledSequential(keras.Sequential):
        """The bug the comparison must catch: the replica's mean loss, not divided by the replicas."""

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
            return super().compute_loss(x, y, y_pred, sample_weight) * strategy.num_replicas_in_sync


    # feedback learning needs correctly classified inputs: two epochs of plain training first
    start = compile_sgd(build())
    start.set_weights(initial)
    start.fit(x, y, batch_size=64, epochs=2, shuffle=False, verbose=0)
    trained = start.get_weights()


    def feedback(distributed=False, cls=keras.Sequential, batch_size=64):
        """One round, one epoch: 256 images + 128 generated, in an order drawn from seed=0."""
        with scope(distributed):
            model = build(cls)
            model.set_weights(trained)
            compile_sgd(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = feedback_learning(model, (x, y), t_max=0.3, rounds=1, epochs=1, directions=2,
                                        batch_size=batch_size, seed=0)
        uneven = any("split evenly" in str(w.message) for w in caught)
        return model.get_weights(), last(history.fit[0]), [m.tolist() for m in history.margins], uneven


    def callback(distributed=False):
        """One epoch of PGD-AT (fixed start) on 256 images, then the callback's fine-tune on
        128 of them + 64 generated (3 train_on_batch calls of 64)."""
        with scope(distributed):
            model = build()
            model.set_weights(trained)
            trainer = compile_sgd(FixedStart(model, attack="pgd", eps=0.1, steps=2))
        monitor = FeedbackLearning((x[:128], y[:128]), t_max=0.3, directions=2, batch_size=64, seed=0)
        kq.defenses.set_seed(0)
        logs = trainer.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0, callbacks=[monitor]).history
        return model.get_weights(), last(logs)


    def qat(distributed=False):
        """One epoch of QAT at w4a4 from the untrained weights (the ranges start at the first batch)."""
        with scope(distributed):
            model = build()
            model.set_weights(initial)
            annotated = tfmot.quantization.keras.quantize_annotate_model(model)
            q = compile_sgd(tfmot.quantization.keras.quantize_apply(annotated, scheme=kq.WXAYScheme(4, 4)))
        logs = q.fit(x, y, batch_size=64, epochs=1, shuffle=False, verbose=0).history
        # the largest gap between a variable's copies on the replicas (0 on one device)
        apart = max(float(np.max(np.abs(c.numpy() - v.numpy()))) for v in q.variables
                    for c in getattr(v, "values", [v]))
        moved = max_diff(initial, [v.numpy() for v in q.trainable_variables])  # the kernels and biases
        return q.get_weights(), last(logs), apart, moved


    results = {}
    single, single_logs, single_margins, _ = feedback()
    mirrored, mirrored_logs, mirrored_margins, uneven = feedback(distributed=True)
    results["feedback"] = {"weights": max_diff(single, mirrored), "moved": max_diff(trained, single),
                           "logs": [single_logs, mirrored_logs], "margins": [single_margins, mirrored_margins],
                           "warned": uneven}
    results["feedback_unscaled"] = max_diff(single, feedback(True, UnscaledSequential)[0])
    single_odd = feedback(batch_size=63)[0]
    mirrored_odd, _, _, uneven = feedback(True, batch_size=63)
    results["feedback_uneven"] = {"weights": max_diff(single_odd, mirrored_odd), "warned": uneven}

    single, single_logs = callback()
    mirrored, mirrored_logs = callback(distributed=True)
    results["callback"] = {"weights": max_diff(single, mirrored), "moved": max_diff(trained, single),
                           "logs": [single_logs, mirrored_logs]}

    single, single_logs, _, moved = qat()
    mirrored, mirrored_logs, apart, _ = qat(distributed=True)
    results["qat"] = {"weights": max_diff(single, mirrored), "moved": moved, "logs": [single_logs, mirrored_logs],
                      "apart": apart}
    # the bug the comparison must catch: each replica tracks the range of its own half batch
    global_batch_quantizer = configs.WXAYQuantizeConfig._activation_quantizer
    configs.WXAYQuantizeConfig._activation_quantizer = lambda self: quantizers.ActivationQuantizer(
        self.activation_bits, ema_decay=self.ema_decay)
    per_replica, _, apart, _ = qat(distributed=True)
    configs.WXAYQuantizeConfig._activation_quantizer = global_batch_quantizer
    results["qat_per_replica_range"] = {"weights": max_diff(single, per_replica), "apart": apart}
    print("RESULT", json.dumps(results))
''')


def _run(script, tmp_path_factory):
    path = tmp_path_factory.mktemp("distributed") / "run.py"
    path.write_text(script)
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    return _run(ADVERSARIAL, tmp_path_factory)


@pytest.fixture(scope="module")
def feedback_qat_results(tmp_path_factory):
    return _run(FEEDBACK_QAT, tmp_path_factory)


def assert_same_logs(single, mirrored, atol=None):
    """Same keys, values within rtol 1e-5 (``atol`` maps keys to an absolute tolerance)."""
    assert set(single) == set(mirrored)
    for key in single:
        np.testing.assert_allclose(mirrored[key], single[key], rtol=1e-5, atol=(atol or {}).get(key, 0.0),
                                   err_msg=key)


@pytest.mark.parametrize("attack", ["pgd", "trades"])
def test_mirrored_strategy_matches_one_device(attack, distributed_results):
    """One epoch (4 steps of 64) of PGD-AT / TRADES on 256 Fashion-MNIST images, on one CPU
    and under MirroredStrategy over 2 logical CPUs (32 examples per replica), from the same
    weights: the weights and the logged losses agree.

    The random starts (U(-ε, ε) for PGD, 0.001·N(0, I) for TRADES) are drawn per replica and
    cannot match the single-device draw, so this comparison replaces them with a fixed
    function of each example in the ε-ball (``FixedStart``); everything else is
    AdversarialModel's own train_step: the per-replica attack, the losses and the update.
    (With TRADES' 0.001 start, the first sign step follows KL gradients so small that the
    replicas' differently ordered float sums flip some signs: max |Δw| was 8e-5 there.)
    """
    result = distributed_results[attack]
    # measured (2 logical CPUs, tf 2.19): max |Δw| = 3e-8 (PGD-AT and TRADES) while training
    # moved the weights by up to 3.4e-2; the logged losses agree to ~1e-7 relative
    assert result["weights"] < 1e-5, result["weights"]
    assert result["moved"] > 1e-2
    assert_same_logs(*result["logs"])


def test_comparison_detects_a_loss_not_scaled_for_the_global_batch(distributed_results):
    """Summing the replicas' mean losses without dividing by the replicas (twice the
    gradient) moves the weights away from the one-device run: measured max |Δw| = 5.4e-2."""
    assert distributed_results["unscaled"] > 1e-3, distributed_results["unscaled"]


# the margins come from a bisection whose last step is t_max/(20·2^10) = 1.5e-5 (t_max = 0.3):
# weights 1e-8 apart can put a point on the other side of the boundary at one bisection step
MARGIN_RESOLUTION = 0.3 / 20 / 2**10


def test_feedback_learning_under_mirrored_strategy_matches_one_device(feedback_qat_results):
    """One round of ``feedback_learning`` (margins on 256 images along 2 directions each,
    128 generated examples, one fine-tune epoch of 6 ``train_on_batch`` calls of 64 at 0.1× the
    learning rate), on one CPU and under MirroredStrategy over 2 logical CPUs, from the same
    trained weights: the weights, the fine-tune logs and the margins (before and after) agree,
    and no warning."""
    result = feedback_qat_results["feedback"]
    # measured (2 logical CPUs, tf 2.19): max |Δw| = 7e-9 while the fine-tune moved the weights
    # by 8.4e-3; the fine-tune logs and the margins were equal
    assert result["weights"] < 1e-5, result["weights"]
    assert result["moved"] > 1e-3
    assert_same_logs(*result["logs"])
    single, mirrored = result["margins"]
    np.testing.assert_allclose(mirrored, single, rtol=0, atol=MARGIN_RESOLUTION)
    assert not result["warned"]


def test_feedback_comparison_detects_an_unscaled_loss_and_uneven_batches(feedback_qat_results):
    """The comparison can fail: a model whose loss is its replica's mean not divided by the
    replicas (twice the gradient) ends far from the one-device weights; batches of 63 (32 + 31
    per replica, the last 6 as 3 + 3), where Keras's compiled loss weighs the two replicas'
    means equally instead of the global mean, end beyond the comparison's 1e-5 too, and warn.
    Measured max |Δw|: 7.6e-3 (unscaled), 3.0e-5 (batches of 63)."""
    assert feedback_qat_results["feedback_unscaled"] > 1e-3, feedback_qat_results["feedback_unscaled"]
    uneven = feedback_qat_results["feedback_uneven"]
    assert uneven["weights"] > 1e-5, uneven["weights"]
    assert uneven["warned"]


def test_feedback_callback_under_mirrored_strategy_matches_one_device(feedback_qat_results):
    """One epoch of PGD-AT (fixed start) with the ``FeedbackLearning`` callback, whose
    fine-tune runs ``train_on_batch`` inside ``fit`` at 0.1× the learning rate, on one CPU and
    under MirroredStrategy: the same weights and logs (the margins, measured on weights that
    differ by float noise, to one bisection step)."""
    result = feedback_qat_results["callback"]
    # measured: max |Δw| = 3e-8, moved 5.2e-2; logs within 1e-7 relative
    assert result["weights"] < 1e-5, result["weights"]
    assert result["moved"] > 1e-2
    single = result["logs"][0]
    assert_same_logs(*result["logs"], atol={key: MARGIN_RESOLUTION for key in single if key.startswith("margin")})
    assert single["feedback_examples"] == 64


def test_qat_under_mirrored_strategy_matches_one_device(feedback_qat_results):
    """One epoch of quantization-aware training (``quantize_apply`` with ``WXAYScheme(4, 4)``
    inside the scope, 4 steps of 64) on one CPU and under MirroredStrategy: the same weights,
    EMA-tracked activation range included, the same logs, and each variable's replica copies
    equal."""
    result = feedback_qat_results["qat"]
    # measured: max |Δw| = 3e-8 while QAT moved the kernels and biases by 2.3e-2; logs equal
    assert result["weights"] < 1e-5, result["weights"]
    assert result["moved"] > 1e-2
    assert_same_logs(*result["logs"])
    assert result["apart"] == 0.0


def test_qat_comparison_detects_a_per_replica_activation_range(feedback_qat_results):
    """The comparison can fail: with the plain ``ActivationQuantizer`` (what WXAYScheme used
    before) each replica's copy of the mirrored range tracks the maximum of its own half batch,
    so the copies drift apart and the weights leave the one-device run: measured max |Δw| =
    2.2e-2 (the range itself), copies 2.2e-2 apart."""
    result = feedback_qat_results["qat_per_replica_range"]
    assert result["weights"] > 1e-3, result["weights"]
    assert result["apart"] > 1e-3, result["apart"]


@pytest.mark.parametrize("size, batch_size, warns", [(384, 64, False), (378, 64, False), (384, 63, True),
                                                     (385, 64, True)])
def test_uneven_fine_tune_batches_warn(size, batch_size, warns):
    """The check behind the warning of ``feedback_learning`` and ``FeedbackLearning``: on 2
    replicas, a batch size or a last batch (384 % 64 = 0, 378 % 64 = 58, 385 % 64 = 1) that is
    odd does not split evenly; on one replica nothing does."""
    import warnings
    from types import SimpleNamespace

    from keras_qrobust.defenses.feedback.retraining import warn_uneven_batches

    def model(replicas):
        return SimpleNamespace(distribute_strategy=SimpleNamespace(num_replicas_in_sync=replicas))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_uneven_batches(model(2), size, batch_size, "FeedbackLearning")
        warn_uneven_batches(model(1), size, batch_size, "FeedbackLearning")
    assert len(caught) == int(warns)
    assert all("FeedbackLearning" in str(w.message) and "2 replicas" in str(w.message) for w in caught)

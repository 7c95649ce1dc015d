"""Adversarial training inside ``model.fit``: PGD-AT, FGSM-RS and TRADES (also distilled).

:class:`AdversarialModel` wraps a tf_keras classifier (float or tfmot-quantized) and
overrides ``train_step``: each batch is attacked against the current weights (inference
mode) and the model is trained on the result. ``compile``, ``fit``, ``evaluate``,
callbacks and ``save`` behave as usual; the fit logs carry the training objective
(``loss``), the compiled metrics on clean inputs, and ``clean_loss``, ``adv_loss``,
``adv_accuracy``.

* PGD-AT (Madry et al. 2018): minimize ``CE(f(x'), y)``, ``x'`` = PGD with random start,
  ``α = 2.5ε/steps``; with ``clean_weight = w > 0`` the mixed objective of Goodfellow et
  al. 2015 (their weight α = w): ``w·CE(f(x), y) + (1 − w)·CE(f(x'), y)``, which trades
  robustness for clean accuracy (also for FGSM-RS);
* FGSM-RS (Wong et al. 2020): ``x' = clip(x + Π_ε(δ + α·sign(∇ℓ)))``, ``δ ~ U(-ε, ε)``,
  ``α = 1.25ε``;
* TRADES (Zhang et al. 2019): minimize ``CE(f(x), y) + β·KL(p(x) ‖ p(x'))`` with ``x'``
  maximizing the KL term by PGD from ``x + 0.001·N(0, I)``, ``β = 6``;
* TRADES with a ``teacher`` ``T`` (adversarially robust distillation, Goldblum et al. 2020,
  eq. 2 at temperature 1, its weights α, 1 − α as TRADES' 1, β): the target of the KL term is
  the teacher's prediction at the clean input, ``CE(f(x), y) + β·KL(p_T(x) ‖ p(x'))``, ``x'``
  maximizing that KL term. For a quantized copy of a robust float model, the teacher is the
  float model: the copy is trained to match it where an attacker looks.

Any of them can add adversarial weight perturbation (AWP, Wu et al. 2020, Algorithm 1 with
one ascent step on ``v``): the gradient is taken at weights ``w + v`` that increase the
batch's training objective ``ρ``, ``v_l = γ·‖w_l‖·∇_l ρ / ‖∇_l ρ‖`` for every kernel ``w_l``
(the one-step solution of ``max ‖v_l‖ ≤ γ‖w_l‖``; biases, BatchNorm and quantizer ranges are
not perturbed), and applied to ``w``: ``w ← w − η·∇ρ(w + v)``. It flattens the weight loss
landscape, which the paper ties to the robust generalization gap; suggested ``γ`` = 0.01
(PGD-AT), 0.005 (TRADES).

Under a ``tf.distribute`` strategy (build the model, the wrapper and ``compile`` inside
``strategy.scope()``) each replica attacks its own share of the batch against the mirrored
weights; every loss term is a replica's sum of per-example losses divided by the global batch
size, so the all-reduced gradient is the gradient of the global-batch mean, as on one device.
"""

from __future__ import annotations

import inspect
from typing import Optional, Sequence

from .._keras import check_model, keras, register, tf
from ..attacks._common import (
    AttackModel,
    as_attack_model,
    check_count,
    check_eps,
    check_norm,
    normalize,
    project,
    to_box,
)
from ..attacks.gradient import iterate

__all__ = ["AdversarialModel", "ATTACKS", "classifier_of"]

ATTACKS = ("pgd", "fgsm_rs", "trades")


def _kl(p_logits: tf.Tensor, q_logits: tf.Tensor) -> tf.Tensor:
    """Per-example ``KL(softmax(p) ‖ softmax(q))``."""
    p_log = tf.nn.log_softmax(p_logits)
    return tf.reduce_sum(tf.exp(p_log) * (p_log - tf.nn.log_softmax(q_logits)), axis=-1)


@register
class AdversarialModel(keras.Model):
    """Train ``model`` on adversarial examples crafted on the fly.

    Args:
        model: the tf_keras classifier to train (its weights are the ones trained).
        attack: ``"pgd"``, ``"fgsm_rs"`` or ``"trades"``.
        eps: perturbation budget (``norm`` ball).
        steps: attack iterations (PGD-AT and TRADES; FGSM-RS takes one step).
        step_size: attack step; default ``2.5·eps/steps`` (PGD, TRADES), ``1.25·eps`` (FGSM-RS).
        beta: TRADES trade-off.
        clean_weight: weight ``w ∈ [0, 1)`` of the clean loss in PGD-AT / FGSM-RS
            (``w·CE(clean) + (1 − w)·CE(adversarial)``; 0 = Madry's objective). TRADES has
            its own clean term, weighted against ``beta``.
        norm: ``"inf"`` or ``"2"``.
        clip: input box.
        awp_gamma: relative size ``γ ≥ 0`` of the adversarial weight perturbation (0: none).
        awp_warmup: epochs (counted by ``fit``'s epoch index, so from ``initial_epoch`` on a
            resumed run) trained without the weight perturbation before it starts.
        teacher: with ``attack="trades"``, a classifier of the same inputs and classes whose
            clean predictions are the KL term's target (module docstring); it is not trained.
            Saved with the wrapper (its configuration and weights).
    """

    def __init__(self, model, attack: str = "pgd", eps: float = 0.1, steps: int = 7,
                 step_size: Optional[float] = None, beta: float = 6.0, norm="inf",
                 clip: Optional[Sequence[float]] = (0.0, 1.0), clean_weight: float = 0.0,
                 awp_gamma: float = 0.0, awp_warmup: int = 0, teacher=None, **kwargs):
        super().__init__(**kwargs)
        self.model = check_model(model)
        if attack not in ATTACKS:
            raise ValueError(f"attack must be one of {ATTACKS}, got {attack!r}")
        steps = check_count(steps, "steps")
        self.attack = attack
        self.eps = check_eps(eps)
        self.steps = 1 if attack == "fgsm_rs" else steps
        default_step = 1.25 * self.eps if attack == "fgsm_rs" else 2.5 * self.eps / self.steps
        self.step_size = default_step if step_size is None else check_eps(step_size, "step_size")
        self.beta = float(beta)
        self.clean_weight = float(clean_weight)
        if not 0.0 <= self.clean_weight < 1.0:
            raise ValueError(f"clean_weight must be in [0, 1) (0 = adversarial loss only), got {clean_weight!r}")
        if attack == "trades" and self.clean_weight:
            raise ValueError("clean_weight applies to attack='pgd' or 'fgsm_rs'; TRADES weighs its clean "
                             "term against beta")
        self.teacher = None if teacher is None else _check_teacher(teacher, self.model, attack)
        self.norm = check_norm(norm)
        self.clip = None if clip is None else (float(clip[0]), float(clip[1]))
        self.awp_gamma = check_eps(awp_gamma, "awp_gamma")
        self.awp_warmup = check_count(awp_warmup, "awp_warmup", minimum=0)
        if self.awp_gamma and tf.distribute.get_strategy().num_replicas_in_sync > 1:
            raise ValueError("awp_gamma > 0 trains on one device: build the AdversarialModel outside a "
                             "multi-replica tf.distribute strategy, or set awp_gamma=0")
        # fit's epoch index, for awp_warmup (set by the callback fit adds); held outside Keras's
        # tracking, so it is not a weight of the model and saved files keep their variables
        self._epoch = _Counter()
        self._attack_model: AttackModel = as_attack_model(self.model)
        self.loss_tracker = keras.metrics.Mean(name="loss")  # the training objective
        self.clean_loss_tracker = keras.metrics.Mean(name="clean_loss")
        self.adv_loss_tracker = keras.metrics.Mean(name="adv_loss")
        self.adv_accuracy = keras.metrics.SparseCategoricalAccuracy(name="adv_accuracy")
        self.build((None, *self.model.input_shape[1:]))

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    @property
    def metrics(self):
        # our own "loss" tracker: compiled_loss is called for clean and adversarial batches
        compiled = self.compiled_metrics.metrics if self.compiled_metrics is not None else []
        return [self.loss_tracker, *compiled, self.clean_loss_tracker, self.adv_loss_tracker,
                self.adv_accuracy]

    # ----------------------------------------------------------------- attacks
    def adversarial_examples(self, x: tf.Tensor, y: tf.Tensor, teacher_logits=None) -> tf.Tensor:
        """The training attack's examples for ``(x, y)`` against the current weights
        (``teacher_logits``: the teacher's at ``x``, when the caller has them already)."""
        x = tf.convert_to_tensor(x, tf.float32)
        if self.attack == "trades":
            return self._trades_examples(x, teacher_logits)
        return iterate(self._attack_model, x, tf.cast(y, tf.int64), self._start(x), self.eps, self.step_size,
                       self.steps, norm=self.norm, clip=self.clip)

    def _start(self, x: tf.Tensor) -> tf.Tensor:
        """The attack's initial perturbation of ``x``: ``0.001·N(0, I)`` (TRADES), else
        ``U(-ε, ε)`` (L∞) or ``Π_ε(ε·N(0, I))`` (L2).

        Drawn by each replica for its own examples, so a distributed run's starts differ from
        a single-device run's.
        """
        if self.attack == "trades":
            return 0.001 * tf.random.normal(tf.shape(x))
        if self.norm == "inf":
            return tf.random.uniform(tf.shape(x), -self.eps, self.eps)
        return project(tf.random.normal(tf.shape(x)) * self.eps, self.eps, self.norm)

    def _teacher_logits(self, x: tf.Tensor, known=None):
        """The teacher's logits at ``x`` (``known`` when given; None without a teacher)."""
        if self.teacher is None or known is not None:
            return known
        return tf.stop_gradient(self.teacher(x, training=False))

    def _trades_examples(self, x: tf.Tensor, teacher_logits=None) -> tf.Tensor:
        # the KL term's target: the teacher's logits at x, else the model's own (fixed here)
        clean_logits = self._teacher_logits(x, teacher_logits)
        if clean_logits is None:
            clean_logits = tf.stop_gradient(self._attack_model.logits(x))
        adv = x + self._start(x)

        def step(i, adv):
            with tf.GradientTape() as tape:
                tape.watch(adv)
                divergence = _kl(clean_logits, self._attack_model.logits(adv))
            adv = adv + self.step_size * normalize(tape.gradient(divergence, adv), self.norm)
            adv = to_box(x + project(adv - x, self.eps, self.norm), self.clip)
            return i + 1, adv

        _, adv = tf.while_loop(lambda i, _: i < self.steps, step, (tf.constant(0), adv))
        return tf.stop_gradient(adv)

    # -------------------------------------------------------------- train step
    def train_step(self, data):
        """One optimizer step on the batch's training objective (runs once per replica).

        With ``R`` replicas each replica sees ``n`` of the ``N = R·n`` examples of the global
        batch. The compiled loss of Keras (default reduction) returns the replica's mean
        divided by ``R`` (``compile_utils.LossesContainer``), the TRADES term is ``Σ KL / N``
        (``tf.nn.compute_average_loss``), so the optimizer's sum of the replicas' gradients is
        the gradient of the global-batch objective. The logged losses are the batch means
        (``R`` times the replica's scaled values).
        """
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        teacher_logits = self._teacher_logits(x)  # once per step: the attack, AWP and the update share them
        x_adv = tf.stop_gradient(self.adversarial_examples(x, y, teacher_logits))
        variables = self.model.trainable_variables
        perturbation = self.weight_perturbation(x, x_adv, y, sample_weight, teacher_logits) if self.awp_gamma else []
        for weight, delta in perturbation:
            weight.assign_add(delta)
        with tf.GradientTape() as tape:
            loss, clean_pred, adv_pred, clean_loss, adv_loss = self._objective(x, x_adv, y, sample_weight,
                                                                               teacher_logits)
        if perturbation:
            gradients = self.optimizer.compute_gradients(loss, variables, tape)
            for weight, delta in perturbation:  # the step is taken from w, with the gradient at w + v
                weight.assign_sub(delta)
            self.optimizer.apply_gradients(gradients)
        else:
            self.optimizer.minimize(loss, variables, tape=tape)
        # the Mean trackers average the replicas' updates: log R × the scaled per-replica values
        self.loss_tracker.update_state(loss * replicas)
        self.compiled_metrics.update_state(y, clean_pred, sample_weight)
        self.clean_loss_tracker.update_state(clean_loss * replicas)
        self.adv_loss_tracker.update_state(adv_loss * replicas)
        self.adv_accuracy.update_state(y, adv_pred, sample_weight)
        return {m.name: m.result() for m in self.metrics}

    def _objective(self, x, x_adv, y, sample_weight, teacher_logits=None):
        """``(loss, clean_pred, adv_pred, clean_loss, adv_loss)`` of the training objective."""
        clean_pred = self.model(x, training=True)
        adv_pred = self.model(x_adv, training=True)
        clean_loss = self.compute_loss(x, y, clean_pred, sample_weight)  # already divided by R
        if self.attack == "trades":
            target = clean_pred if self.teacher is None else self._teacher_logits(x, teacher_logits)
            adv_loss = tf.nn.compute_average_loss(_kl(target, adv_pred))  # Σ KL / (n·R)
            loss = clean_loss + self.beta * adv_loss
        else:
            adv_loss = self.compute_loss(x_adv, y, adv_pred, sample_weight)
            loss = self.clean_weight * clean_loss + (1.0 - self.clean_weight) * adv_loss
        return loss, clean_pred, adv_pred, clean_loss, adv_loss

    def perturbed_weights(self) -> list:
        """The variables AWP perturbs: the trainable kernels (rank ≥ 2)."""
        return [w for w in self.model.trainable_variables if w.shape.rank >= 2]

    def weight_perturbation(self, x, x_adv, y, sample_weight=None, teacher_logits=None) -> list:
        """AWP's ``[(w_l, v_l)]`` for the batch: ``v_l = γ·‖w_l‖·g_l/‖g_l‖``, ``g = ∇_w ρ``
        (Wu et al. 2020, Algorithm 1: one normalized ascent step), zero before epoch ``awp_warmup``.

        The objective ``ρ`` is the training objective at the batch's adversarial examples
        (BatchNorm in training mode, as in the update that follows).
        """
        weights = self.perturbed_weights()

        def ascent():
            with tf.GradientTape() as tape:
                loss = self._objective(x, x_adv, y, sample_weight, teacher_logits)[0]
            gradients = tape.gradient(loss, weights)
            return [tf.zeros_like(w) if g is None  # a kernel the loss does not reach
                    else self.awp_gamma * tf.norm(w) / (tf.norm(g) + 1e-20) * g for w, g in zip(weights, gradients)]

        deltas = tf.cond(self._epoch.value >= self.awp_warmup, ascent, lambda: [tf.zeros_like(w) for w in weights])
        return list(zip(weights, deltas))

    def fit(self, *args, **kwargs):
        """``keras.Model.fit``, with a callback that keeps the epoch index for ``awp_warmup``."""
        bound = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs)
        bound.arguments["callbacks"] = [*(bound.arguments.get("callbacks") or []), _EpochIndex(self._epoch)]
        return keras.Model.fit(*bound.args, **bound.kwargs)

    def test_step(self, data):
        """Clean evaluation (attack the model with keras_qrobust.attacks to score robustness)."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        pred = self.model(x, training=False)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync  # compute_loss divides by it
        self.loss_tracker.update_state(self.compute_loss(x, y, pred, sample_weight) * replicas)
        self.compiled_metrics.update_state(y, pred, sample_weight)
        return {m.name: m.result() for m in [self.loss_tracker, *self.compiled_metrics.metrics]}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
        # the compiled loss only (the wrapper's own regularization losses are the model's)
        return self.compiled_loss(y, y_pred, sample_weight, regularization_losses=self.model.losses)

    # ------------------------------------------------------------------ config
    def get_config(self):
        return {
            "model": keras.layers.serialize(self.model),
            "attack": self.attack, "eps": self.eps, "steps": self.steps, "step_size": self.step_size,
            "beta": self.beta, "norm": self.norm, "clip": self.clip, "clean_weight": self.clean_weight,
            "awp_gamma": self.awp_gamma, "awp_warmup": self.awp_warmup, "name": self.name,
            "teacher": None if self.teacher is None else keras.layers.serialize(self.teacher),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["model"] = keras.layers.deserialize(config["model"], custom_objects=custom_objects)
        if config.get("teacher") is not None:
            config["teacher"] = keras.layers.deserialize(config["teacher"], custom_objects=custom_objects)
        return cls(**config)


def _check_teacher(teacher, model, attack: str):
    teacher = check_model(teacher)
    if attack != "trades":
        raise ValueError(f"a teacher sets the target of TRADES' KL term: use attack='trades' (got {attack!r}), "
                         "or no teacher")
    if teacher is model:
        raise ValueError("the teacher is the model being trained: pass the model to learn from (e.g. the float "
                         "model a quantized copy was made of)")
    if tuple(teacher.input_shape[1:]) != tuple(model.input_shape[1:]) or \
            teacher.output_shape[-1] != model.output_shape[-1]:
        raise ValueError(f"the teacher takes {teacher.input_shape[1:]} and gives {teacher.output_shape[-1]} classes, "
                         f"the model {model.input_shape[1:]} and {model.output_shape[-1]}: they must match")
    if as_attack_model(teacher).probabilities:
        raise ValueError(f"the teacher '{teacher.name}' ends in a softmax: pass a model that outputs logits")
    return teacher


class _Counter:
    """An int64 variable that Keras does not track (not a model weight, not saved)."""

    def __init__(self):
        with tf.init_scope():
            self.value = tf.Variable(0, trainable=False, dtype=tf.int64, name="epoch")


class _EpochIndex(keras.callbacks.Callback):
    """Writes ``fit``'s epoch index into ``counter`` at the start of every epoch."""

    def __init__(self, counter: _Counter):
        super().__init__()
        self.counter = counter

    def on_epoch_begin(self, epoch, logs=None):
        self.counter.value.assign(epoch)


def classifier_of(model) -> "keras.Model":
    """The classifier a model stands for: the wrapped model of an AdversarialModel."""
    model = check_model(model)
    return model.model if isinstance(model, AdversarialModel) else model

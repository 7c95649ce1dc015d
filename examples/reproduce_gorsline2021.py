"""Reproduce Gorsline, Smith & Merkel 2021, "On the adversarial robustness of quantized neural networks".

The paper's MLP (one hidden layer of 100 units, all weights and biases in [-1, 1]) with a step,
sigmoid or ReLU hidden activation, trained with its weights quantized to 1 … 10 bits on the
forward pass (deterministic rounding; the full-precision weights take straight-through
gradients), Adam, 10% of the training data held out for early stopping, no other
regularization (§4). Every model is attacked with white-box FGSM (eq. 2) at
ε ∈ [0, 0.5] in steps of 0.005. Reported: accuracy vs weight bits per ε (Fig. 3/6), the
critical attack strength (the ε whose accuracy-vs-bits curve has the smallest variance) and
the measured relative accuracy against the geometric lower bound of eq. 14 (Fig. 4/7).

Data: Fashion-MNIST (n = 784, in place of MNIST, which is not available here) and the
two-spirals problem (eq. 15: 200 points per spiral for training and for testing, 2 inputs,
one sigmoid output with binary cross-entropy, hidden pre-activations amplified by 10).

Choices the paper leaves open (ours): the quantization grid is the symmetric per-tensor one
of docs/methods.md (``s = max|w|`` ≤ 1, ``Δ = s/(2^(q−1) − 1)``, ``q = 1``: ``sign·s``; a grid
fixed on [-1, 1] rounds Glorot-initialized weights to 0 at 2-3 bits and those models never
train), applied to kernels and biases; the step activation's backward pass is the sigmoid's derivative (a
straight-through surrogate), which is also the gradient FGSM follows on the step networks;
the bound of eq. 14 (an ℓ2 model) is evaluated at the ℓ2 size of the FGSM step, ``ε·√n``
(the paper's own conversion: critical ε 0.01 ↔ ℓ2 0.28 on MNIST, 0.125 ↔ 0.18 on spirals).

    .venv/bin/python examples/reproduce_gorsline2021.py [--quick] [--seed 0] [--repeats 1]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

import _reproduce as rp  # the reproductions' shared pieces, beside this file
import keras_qrobust as kq

tf = kq.tf
keras = kq.keras
tf.get_logger().setLevel("ERROR")  # one tf.function per trained model: retracing warnings are expected
geo = kq.analysis

ACTIVATIONS = ("step", "sigmoid", "relu")
BITS = tuple(range(1, 11))
EPS = np.round(np.arange(0.0, 0.5 + 1e-9, 0.005), 3)  # docs/methods.md: [0, 0.5] step 0.005


@dataclass(frozen=True)
class Task:
    """One dataset of the paper and how its MLP is trained."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: int  # 1: a single sigmoid output (binary cross-entropy)
    gain: float  # hidden pre-activations are multiplied by this (10 on spirals, §4.2)
    clip: tuple | None  # the input box FGSM stays in (images: [0, 1]; spirals: none)
    batch_size: int
    learning_rate: float
    max_epochs: int
    patience: int

    @property
    def n(self) -> int:
        """Input dimension ``n`` of the geometric model."""
        return int(np.prod(self.x_train.shape[1:]))


# ---------------------------------------------------------------------------- quantization
def quantize_weights(w: tf.Tensor, bits: int) -> tf.Tensor:
    """Deterministic rounding onto the symmetric ``q``-bit grid of ``[−s, s]``, ``s = max|w|`` ≤ 1
    per tensor: ``Δ = s/(2^(q−1) − 1)``, ``q = 1``: ``sign(w)·s`` (docs/methods.md; the library's
    ``SymmetricQuantizer`` per tensor)."""
    return kq.quantizers.SymmetricQuantizer(bits, per_axis=False).quantize(w)


def straight_through(w: tf.Tensor, bits: int) -> tf.Tensor:
    """Quantized on the forward pass, identity gradient to the full-precision ``w``."""
    return w + tf.stop_gradient(quantize_weights(w, bits) - w)


# ---------------------------------------------------------------------------- activations
@tf.custom_gradient
def step(z):
    """Heaviside step ``1[z > 0]``; backward: the sigmoid derivative (straight-through surrogate)."""
    def grad(dy):
        s = tf.sigmoid(z)
        return dy * s * (1.0 - s)
    return tf.cast(z > 0, z.dtype), grad


def activation(kind: str, gain: float) -> Callable:
    """The hidden activation ``φ(gain·z)``."""
    fn = {"step": step, "sigmoid": tf.sigmoid, "relu": tf.nn.relu}[kind]
    return lambda z: fn(gain * z)


# ---------------------------------------------------------------------------- training
def build(task: Task, kind: str, seed: int):
    """``kq.zoo.mlp_gorsline`` (weights and biases constrained to [-1, 1]) for ``task``."""
    kq.defenses.set_seed(seed)
    return kq.zoo.mlp_gorsline(input_shape=task.x_train.shape[1:], hidden=100, num_classes=task.classes,
                               activation=activation(kind, task.gain), name=f"mlp_{kind}")


def quantized_logits(model, x: tf.Tensor, bits: int) -> tf.Tensor:
    """The forward pass with every kernel and bias on the ``bits``-bit grid (straight-through)."""
    hidden, out = model.get_layer("hidden"), model.get_layer("logits")
    h = tf.reshape(x, (tf.shape(x)[0], -1))
    h = hidden.activation(h @ straight_through(hidden.kernel, bits) + straight_through(hidden.bias, bits))
    return h @ straight_through(out.kernel, bits) + straight_through(out.bias, bits)


def loss_fn(task: Task) -> Callable:
    """Softmax cross-entropy; binary cross-entropy on a single sigmoid output (§4.2)."""
    if task.classes == 1:
        return lambda y, logits: tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
            labels=tf.cast(y[:, None], tf.float32), logits=logits))
    return lambda y, logits: tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))


def predictions(logits: tf.Tensor) -> tf.Tensor:
    return tf.cast(logits[:, 0] > 0, tf.int64) if logits.shape[-1] == 1 else tf.argmax(logits, -1)


def train(task: Task, kind: str, bits: int, seed: int) -> tuple:
    """Quantization-aware training with early stopping on a 10% validation split (§4).

    Returns the model holding the best full-precision weights and the epochs run.
    """
    model = build(task, kind, seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(task.x_train))
    n_val = len(order) // 10
    val, fit = order[:n_val], order[n_val:]
    x_val, y_val = tf.constant(task.x_train[val]), tf.constant(task.y_train[val])
    optimizer = keras.optimizers.Adam(task.learning_rate)
    loss = loss_fn(task)
    variables = model.trainable_variables

    @tf.function
    def train_epoch(x, y):
        """One pass over ``(x, y)`` (already shuffled) in batches, inside one graph."""
        for start in tf.range(0, tf.shape(x)[0], task.batch_size):
            xb, yb = x[start:start + task.batch_size], y[start:start + task.batch_size]
            with tf.GradientTape() as tape:
                value = loss(yb, quantized_logits(model, xb, bits))
            optimizer.apply_gradients(zip(tape.gradient(value, variables), variables))
            for v in variables:  # the [-1, 1] constraint of the paper
                v.assign(tf.clip_by_value(v, -1.0, 1.0))

    @tf.function
    def val_accuracy():
        return tf.reduce_mean(tf.cast(predictions(quantized_logits(model, x_val, bits)) == y_val, tf.float32))

    best, best_weights, waited, epochs = -1.0, model.get_weights(), 0, 0
    for epoch in range(task.max_epochs):
        shuffled = rng.permutation(fit)
        train_epoch(tf.constant(task.x_train[shuffled]), tf.constant(task.y_train[shuffled]))
        epochs = epoch + 1
        accuracy = float(val_accuracy())
        if accuracy > best:
            best, best_weights, waited = accuracy, model.get_weights(), 0
        else:
            waited += 1
            if waited >= task.patience:
                break
    model.set_weights(best_weights)
    return model, epochs, best


def deployed(model, task: Task, bits: int):
    """A copy of ``model`` holding the quantized weights (two logits ``[0, z]`` for a single
    sigmoid output, so softmax cross-entropy is the binary cross-entropy FGSM should ascend)."""
    copy = build(task, model.name.split("_", 1)[1], 0)
    copy.set_weights([quantize_weights(tf.constant(w), bits).numpy() for w in model.get_weights()])
    if task.classes == 1:
        two_logits = keras.layers.Lambda(lambda z: tf.concat([tf.zeros_like(z), z], -1), name="two_logits")
        copy = keras.Sequential([keras.Input(task.x_train.shape[1:]), copy, two_logits], name=copy.name)
    return copy


# ---------------------------------------------------------------------------- the FGSM sweep
def fgsm_sweep(model, task: Task) -> np.ndarray:
    """Accuracy under FGSM (eq. 2) at every ε of :data:`EPS`.

    One FGSM step from the clean input has the direction ``sign(∇_x L)`` at every ε, so the
    sign is computed once (``kq.attacks.fgsm`` at ε = 1 without the box) and every strength
    is ``clip(x + ε·sign)``.
    """
    x, y = task.x_test, task.y_test
    direction = np.sign(kq.attacks.fgsm(model, x, y, eps=1.0, clip=None) - x)
    low, high = task.clip if task.clip is not None else (-np.inf, np.inf)

    @tf.function
    def accuracy_at(eps):
        x_adv = tf.clip_by_value(x + eps * direction, low, high)
        return tf.reduce_mean(tf.cast(tf.argmax(model(x_adv, training=False), -1) == y, tf.float32))

    x, direction, y = tf.constant(x), tf.constant(direction, tf.float32), tf.constant(y)
    return np.array([float(accuracy_at(tf.constant(eps, tf.float32))) for eps in EPS])


def run_task(task: Task, repeats: int, seed: int) -> dict:
    """``accuracy[kind][bits]``: mean FGSM curve over ``repeats`` trainings, and the training facts."""
    accuracy, facts = {}, {}
    for kind in ACTIVATIONS:
        accuracy[kind], facts[kind] = {}, {}
        for bits in BITS:
            curves, runs = [], []
            for r in range(repeats):
                clock = rp.Clock()
                model, epochs, val = train(task, kind, bits, seed + r)
                curves.append(fgsm_sweep(deployed(model, task, bits), task))
                runs.append({"seed": seed + r, "epochs": epochs, "val_accuracy": val,
                             "seconds": round(clock.seconds, 1)})
            accuracy[kind][bits] = np.mean(curves, axis=0)
            facts[kind][bits] = runs
            rp.log(f"{task.name} {kind} w{bits}: clean {100 * accuracy[kind][bits][0]:.2f}%, "
                   f"FGSM ε=0.1 {100 * accuracy[kind][bits][20]:.2f}% ({runs[-1]['epochs']} epochs, "
                   f"{runs[-1]['seconds']} s)")
    return {"accuracy": accuracy, "training": facts}


# ---------------------------------------------------------------------------- analysis
def critical(accuracy: dict, floor: float) -> dict | None:
    """Critical attack strength over bits 1-10 (smallest variance of accuracy across bits),
    counting only strengths whose mean accuracy over the bit widths is above ``floor``
    (None when there is none)."""
    try:
        found = geo.critical_attack_strength({b: accuracy[b] for b in BITS}, EPS, min_mean_accuracy=floor)
    except ValueError:
        return None
    return {"eps": found.eps, "variance": float(found.variance[found.index]),
            "accuracy_by_bits": {b: float(accuracy[b][found.index]) for b in BITS}}


def bound_comparison(curve: np.ndarray, n: int, bits: int) -> dict:
    """Measured relative accuracy ``A_r = acc(ε)/acc(0)`` against eq. 14 at the ℓ2 size ``ε·√n``."""
    relative = curve / curve[0] if curve[0] > 0 else np.zeros_like(curve)
    l2 = EPS * math.sqrt(n)
    bound = geo.geometric_lower_bound(l2, n, bits)
    above = relative >= bound - 1e-9
    below_eps = EPS[~above]
    fit = geo.fit_geometric_bound(l2, relative, bits)
    positive = bound[1:] > 1e-6
    return {"above_fraction": float(np.mean(above[1:])),
            "below_eps": [float(e) for e in below_eps],
            "min_margin": float(np.min(relative - bound)),
            "bound_positive_up_to_eps": float(EPS[1:][positive].max()) if positive.any() else 0.0,
            "height_h": geo.simplex_height(n, bits), "fitted_n": fit.n, "fit_rmse": fit.rmse}


def report_for(task: Task, kind: str, accuracy: dict, repeats: int, seed: int):
    """The RobustnessReport (accuracy vs ε, vs bits with ε*, relative accuracy vs the bound)."""
    names = {f"{kind} w{b}": b for b in BITS}
    provenance = {"attacks": {"fgsm": "FGSM (one step, white-box"
                              + (", through the sigmoid-derivative surrogate of the step" if kind == "step" else "")
                              + ")"},
                  "eps": EPS.tolist(), "norm": "inf", "samples": int(len(task.x_test)), "seed": seed,
                  "dataset": task.name, "repeats": repeats,
                  "model": f"mlp_gorsline, 100 {kind} units, weights quantized during training"}
    return kq.report.RobustnessReport.build(
        accuracy={name: {"fgsm": [float(v) for v in accuracy[b]]} for name, b in names.items()},
        eps=EPS.tolist(), attacks=["fgsm"], provenance=provenance, bits=names)


def task_markdown(task: Task, result: dict, analysis: dict) -> list[str]:
    """Accuracy at a few ε per activation and bits, the critical strengths and the bound check."""
    shown = [0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.125, 0.2, 0.3, 0.5]
    index = [int(np.argmin(np.abs(EPS - e))) for e in shown]
    lines = [f"## {task.name}: FGSM accuracy % by weight bits", "",
             f"{len(task.x_train)} training images (10% held out for early stopping), {len(task.x_test)} test "
             f"inputs, n = {task.n}.", ""]
    for kind in ACTIVATIONS:
        rows = [[f"w{b}"] + [rp.pct(result["accuracy"][kind][b][i]) for i in index] for b in BITS]
        lines += [f"### {kind}", ""] + rp.markdown_table(["bits"] + [f"ε={e:g}" for e in shown], rows) + [""]
    rows = []
    for kind in ACTIVATIONS:
        a = analysis[kind]
        any_, above = a["critical_any"], a["critical_above_chance"]
        rows.append([kind, f"{any_['eps']:g}" if any_ else "none", f"{above['eps']:g}" if above else "none",
                     ", ".join(f"{100 * v:.1f}" for v in (above or any_)["accuracy_by_bits"].values())
                     if (above or any_) else "—"])
    lines += ["### Critical attack strength", "",
              "ε* = the ε whose accuracy-vs-bits (1-10) curve has the smallest variance; \"any\" counts every ε "
              "with a non-zero mean accuracy (the library default), \"above chance\" only strengths whose mean "
              "accuracy is above chance (1/classes).", ""]
    lines += rp.markdown_table(["activation", "ε* (any)", "ε* (above chance)",
                                "accuracy % at ε* (above chance, else any), w1…w10"], rows) + [""]
    rows = []
    for kind in ACTIVATIONS:
        for b in BITS:
            c = analysis[kind]["bound"][b]
            below = c["below_eps"]
            where = "none" if not below else f"{len(below)} of {len(EPS) - 1} (ε {min(below):g}–{max(below):g})"
            rows.append([kind, f"w{b}", f"{c['height_h']:.3g}", f"{c['bound_positive_up_to_eps']:g}",
                         f"{100 * c['above_fraction']:.0f}", where, f"{c['fitted_n']:.3g}"])
    lines += ["### Relative accuracy vs the geometric lower bound (eq. 14 at ℓ2 = ε·√n)", "",
              "h: inradius of the simplex (eq. 3); the bound is 0 beyond ε = h/√n. 'above %': share of the "
              "ε > 0 points where the measured A_r = acc(ε)/acc(0) is at or above the bound.", ""]
    lines += rp.markdown_table(["activation", "bits", "h", "bound > 0 up to ε", "above %", "ε where below",
                                "fitted n"], rows) + [""]
    return lines


# ---------------------------------------------------------------------------- tasks
def tasks(quick: bool) -> list[Task]:
    (xf, yf), (xt, yt) = rp.fashion_mnist(quick, 30000, 5000, quick_train=3000, quick_test=500)
    xs, ys = kq.datasets.load("two_spirals", "train")
    xst, yst = kq.datasets.load("two_spirals", "test")
    return [
        Task("fashion_mnist", xf, yf, xt, yt, classes=10, gain=1.0, clip=(0.0, 1.0), batch_size=256,
             learning_rate=1e-3, max_epochs=2 if quick else 10, patience=2),
        Task("two_spirals", xs, ys, xst, yst, classes=1, gain=10.0, clip=None, batch_size=len(xs),
             learning_rate=1e-2, max_epochs=200 if quick else 2500, patience=500),
    ]


def main(argv=None) -> dict:
    args = rp.parse_args(__doc__.splitlines()[0], argv,
                         repeats=(int, 1, "independent trainings averaged per model (the paper: 5)"))
    clock = rp.Clock()
    folder = rp.results_dir("gorsline2021", args)
    if args.replot:
        rp.replot(folder)
        return {}
    repeats = 1 if args.quick else args.repeats
    summary, lines = {"repeats": repeats, "seed": args.seed, "eps": EPS.tolist(), "bits": list(BITS)}, [
        "# Gorsline et al. 2021 reproduction", "",
        f"Weight bits 1-10 × FGSM ε ∈ [0, 0.5] step 0.005 ({len(EPS)} strengths) × step/sigmoid/ReLU, "
        f"mean of {repeats} training run(s) per model, seed {args.seed}.", ""]
    for task in tasks(args.quick):
        rp.log(f"{task.name}: {len(task.x_train)} train, {len(task.x_test)} test inputs")
        result = run_task(task, repeats, args.seed)
        chance = 1.0 / max(task.classes, 2)
        analysis = {}
        for kind in ACTIVATIONS:
            acc = result["accuracy"][kind]
            analysis[kind] = {"critical_any": critical(acc, 0.0), "critical_above_chance": critical(acc, chance),
                              "bound": {b: bound_comparison(acc[b], task.n, b) for b in BITS}}
            report = report_for(task, kind, acc, repeats, args.seed)
            rp.save_report(report, folder / f"{task.name}_{kind}")
        summary[task.name] = rp.to_jsonable({"accuracy": result["accuracy"], "training": result["training"],
                                             "analysis": analysis, "n": task.n, "train": len(task.x_train),
                                             "test": len(task.x_test)})
        lines += task_markdown(task, result, analysis)
    summary["seconds"] = round(clock.seconds, 1)
    lines += [clock.line("examples/reproduce_gorsline2021.py", args.quick), ""]
    rp.write_outputs(folder, "summary", summary, "\n".join(lines))
    print(clock.line("examples/reproduce_gorsline2021.py", args.quick))
    return summary


if __name__ == "__main__":
    main()

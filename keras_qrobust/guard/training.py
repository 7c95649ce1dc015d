"""Stage 1, train: adversarial training (skipped for an already robust model or --no-train)
and the independently trained surrogate the transfer attack crafts on."""

from __future__ import annotations

from .. import attacks, metrics, zoo
from .._keras import keras
from .._progress import progress_bar
from ..defenses import AdversarialModel, compile_classifier, set_seed, train_classifier
from .context import Context, save_model, say

__all__ = ["train_stage", "ROBUST_CHECK_SAMPLES", "SURROGATE_SEED_OFFSET"]

ROBUST_CHECK_SAMPLES = 500
SURROGATE_SEED_OFFSET = 1000
AT_STEPS = 7


def _recipe(config) -> str:
    if config.train_attack == "fgsm_rs":
        return f"FGSM-RS (Wong 2020, α = 1.25ε), ε = {config.eps:g}"
    return f"PGD-AT (Madry 2018, {AT_STEPS} steps, α = 2.5ε/{AT_STEPS}, random start), ε = {config.eps:g}"


def _robust_check(model, ctx: Context) -> dict:
    """Clean and PGD accuracy of the given model on the first test inputs."""
    config, data = ctx.config, ctx.data
    x, y = data.x_test[:ROBUST_CHECK_SAMPLES], data.y_test[:ROBUST_CHECK_SAMPLES]
    clean = metrics.accuracy(model, x, y)
    x_adv = attacks.pgd(model, x, y, eps=config.eps, steps=config.pgd_steps, seed=config.seed, verbose=0)
    pgd = metrics.accuracy(model, x_adv, y)
    robust = clean > 0 and pgd >= config.robust_ratio * clean
    return {"clean": clean, "pgd": pgd, "samples": int(len(x)), "robust": bool(robust)}


class _EpochBar(keras.callbacks.Callback):
    """A tqdm bar ticked once per epoch, showing the epoch's logs."""

    def __init__(self, epochs: int, desc: str):
        super().__init__()
        self._bar = progress_bar(total=epochs, desc=desc, unit="epoch", leave=True)

    def on_epoch_end(self, epoch, logs=None):
        self._bar.set_postfix({k: f"{v:.3f}" for k, v in (logs or {}).items() if "acc" in k})
        self._bar.update(1)

    def on_train_end(self, logs=None):
        self._bar.close()


def _adversarially_train(model, ctx: Context) -> None:
    config, data = ctx.config, ctx.data
    trainer = AdversarialModel(model, attack=config.train_attack, eps=config.eps, steps=AT_STEPS)
    compile_classifier(trainer)
    say(f"adversarial training: {_recipe(config)}, {config.epochs} epochs on {len(data.x_train)} training inputs")
    train_classifier(trainer, data.x_train, data.y_train, epochs=config.epochs, seed=config.seed,
                     callbacks=[_EpochBar(config.epochs, "adversarial training")])


def _surrogate(model, ctx: Context):
    """Same architecture, fresh weights from another seed, standard training."""
    config, data = ctx.config, ctx.data
    set_seed(config.seed + SURROGATE_SEED_OFFSET, deterministic_ops=True)
    surrogate = keras.models.clone_model(model)
    surrogate._name = f"{model.name}_surrogate"
    say(f"training the transfer surrogate (standard training, {config.surrogate_epochs} epochs, "
        f"seed {config.seed + SURROGATE_SEED_OFFSET})")
    train_classifier(surrogate, data.x_train, data.y_train, epochs=config.surrogate_epochs,
                     seed=config.seed + SURROGATE_SEED_OFFSET,
                     callbacks=[_EpochBar(config.surrogate_epochs, "surrogate")])
    return surrogate


def train_stage(ctx: Context) -> tuple[dict, dict]:
    """Returns the artifacts (``float``, ``surrogate``) and the summary of what was done."""
    config, data = ctx.config, ctx.data
    summary = {"recipe": None, "epochs": 0, "train_inputs": int(len(data.x_train))}
    if ctx.model is None:
        model = zoo.cnn_small(input_shape=data.x_train.shape[1:], num_classes=data.num_classes)
        summary["model"] = f"cnn_small built for {data.num_classes} classes (no --model)"
        summary["trained"] = True
        summary["reason"] = "no --model: cnn_small trained from scratch"
    else:
        model = ctx.model
        summary["model"] = f"--model {config.shown(config.model)}"
        check = _robust_check(model, ctx)
        summary["robust_check"] = check
        say(f"the given model: clean {100 * check['clean']:.2f}%, PGD-{config.pgd_steps} {100 * check['pgd']:.2f}% at "
            f"ε = {config.eps:g} on {check['samples']} test inputs")
        if config.no_train:
            summary["trained"], summary["reason"] = False, "--no-train"
        elif check["robust"]:
            summary["trained"] = False
            summary["reason"] = (f"already robust: PGD accuracy {100 * check['pgd']:.2f}% ≥ {config.robust_ratio:g} × "
                                 f"clean {100 * check['clean']:.2f}%")
        else:
            summary["trained"] = True
            summary["reason"] = (f"not robust: PGD accuracy {100 * check['pgd']:.2f}% < {config.robust_ratio:g} × "
                                 f"clean {100 * check['clean']:.2f}%")
    say(("adversarial training: " if summary["trained"] else "adversarial training skipped: ") + summary["reason"])
    if summary["trained"]:
        _adversarially_train(model, ctx)
        summary["recipe"], summary["epochs"] = _recipe(config), config.epochs
    surrogate = _surrogate(model, ctx)
    summary["surrogate"] = (f"same architecture as the float model, fresh weights (seed "
                            f"{config.seed + SURROGATE_SEED_OFFSET}), standard training for {config.surrogate_epochs} "
                            f"epochs on the {len(data.x_train)} training inputs")
    artifacts = {"float": save_model(model, ctx.folder, "float.keras"),
                 "surrogate": save_model(surrogate, ctx.folder, "surrogate.keras")}
    return artifacts, summary

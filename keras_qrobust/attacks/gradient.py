"""Gradient attacks: FGSM, PGD (L∞ / L2, random start, restarts), BIM and MIM.

Each runs as one compiled ``tf.function`` per model and configuration (ε, step size and
step count are tensors, so sweeping ε does not retrace), batch by batch. Quantized models
give straight-through gradients. Step rules follow cleverhans 4.0.0, so with the same
schedule and no random start the adversarial examples match cleverhans's:

* FGSM (Goodfellow 2015): ``x' = clip(x + ε·sign(∇ℓ))`` (L2: ``ε·∇ℓ/‖∇ℓ‖₂``);
* PGD (Madry 2018): ``x_{t+1} = clip(x + Π_ε(x_t + α·dir(∇ℓ) - x))``, ``α = 2.5ε/steps``;
* BIM (Kurakin 2017): PGD without random start, ``α = 1.25ε/steps``;
* MIM (Dong 2018): ``g_{t+1} = μ g_t + ∇ℓ/mean|∇ℓ|``, ``x_{t+1} = clip(x + Π_ε(x_t + α·dir(g_{t+1}) - x))``,
  ``α = ε/steps``, ``μ = 1``.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .._keras import tf
from ._common import (
    as_attack_model,
    batches,
    check_count,
    check_eps,
    check_inputs,
    check_norm,
    clip_key,
    compiled,
    generator,
    gradient,
    normalize,
    progress,
    project,
    random_in_ball,
    to_box,
)

__all__ = ["fgsm", "pgd", "bim", "mim", "iterate"]

def iterate(model, x, y, delta0, eps, step_size, steps, decay=0.0, *, norm: str = "inf",
            targeted: bool = False, loss: str = "ce", clip=(0.0, 1.0), momentum: bool = False):
    """The iterative attack loop (PGD/BIM, or MIM with ``momentum``) on tensors; traceable.

    x-space updates in cleverhans's order, so results match it to float precision.
    ``model``: an AttackModel. Returns the adversarial examples.
    """
    axes = list(range(1, x.shape.rank))
    adv = to_box(x + project(delta0, eps, norm), clip)

    def step(i, adv, velocity):
        grad = gradient(model, adv, y, targeted, loss)
        if momentum:
            grad = grad / tf.maximum(1e-12, tf.reduce_mean(tf.abs(grad), axes, keepdims=True))
            velocity = decay * velocity + grad
            grad = velocity
        adv = adv + step_size * normalize(grad, norm)
        if clip is not None and not momentum:
            # cleverhans's FGM step clips to the box before the ε-projection (this matters
            # for L2 only); its MIM does not
            adv = tf.clip_by_value(adv, clip[0], clip[1])
        adv = to_box(x + project(adv - x, eps, norm), clip)
        return i + 1, adv, velocity

    # an explicit while_loop: callers may be traced without AutoGraph (Keras train_step)
    _, adv, _ = tf.while_loop(lambda i, *_: i < steps, step, (tf.constant(0), adv, tf.zeros_like(x)))
    return adv


def _compiled_iterative(attack_model, norm: str, targeted: bool, loss: str, clip, momentum: bool):
    """``run(x, y, delta0, eps, step_size, steps, decay) -> x_adv`` for this model/configuration."""

    def factory(get_model):
        @tf.function(reduce_retracing=True)
        def run(x, y, delta0, eps, step_size, steps, decay):
            return iterate(get_model(), x, y, delta0, eps, step_size, steps, decay, norm=norm,
                           targeted=targeted, loss=loss, clip=clip, momentum=momentum)

        return run

    key = ("iterative", norm, targeted, loss, clip_key(clip), momentum)
    return compiled(attack_model, key, factory)


def _per_example_loss(attack_model, x, y):
    logits = attack_model.compiled_logits(x)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits).numpy()


def _iterative(model, x, y, *, eps, steps, step_size, norm, random_start, restarts, targeted, loss,
               clip, batch_size, seed, verbose, output, momentum, decay, name):
    attack_model = as_attack_model(model, output)
    eps = check_eps(eps)
    norm = check_norm(norm)
    steps, restarts = check_count(steps, "steps"), check_count(restarts, "restarts")
    step_size = check_eps(step_size, "step_size")
    x, y = check_inputs(attack_model, x, y, clip, require_labels=targeted)
    if y is None:  # the model's own predictions: no label leaking (cleverhans's default)
        y = attack_model.predict_labels(x, batch_size)
    run = _compiled_iterative(attack_model, norm, targeted, loss, clip, momentum)
    rng = generator(seed)
    constants = [tf.constant(v, tf.float32) for v in (eps, step_size)] + [tf.constant(int(steps)),
                                                                          tf.constant(float(decay))]
    out = np.empty_like(x)
    total = len(range(0, len(x), batch_size)) * restarts
    bar = progress(range(total), total=total, verbose=verbose, desc=name)
    ticks = iter(bar)
    for part in batches(len(x), batch_size):
        xb, yb = tf.constant(x[part]), tf.constant(y[part])
        best, best_loss = None, None
        for _ in range(restarts):
            start = random_in_ball(xb.shape, eps, norm, rng) if random_start else tf.zeros_like(xb)
            adv = run(xb, yb, start, *constants)
            if restarts == 1:
                best = adv.numpy()
            else:
                adv_loss = _per_example_loss(attack_model, adv, yb) * (-1.0 if targeted else 1.0)
                if best is None:
                    best, best_loss = adv.numpy(), adv_loss
                else:
                    better = adv_loss > best_loss
                    best[better], best_loss[better] = adv.numpy()[better], adv_loss[better]
            next(ticks, None)
        out[part] = best
    if verbose and hasattr(bar, "close"):
        bar.close()
    return out


def fgsm(model, x, y=None, *, eps: float, norm="inf", targeted: bool = False,
         clip: Optional[Sequence[float]] = (0.0, 1.0), batch_size: int = 256, verbose: int = 0,
         output: str = "auto") -> np.ndarray:
    """Fast gradient sign method: one step of size ``eps`` (L∞ sign, or L2 normalized).

    ``y``: true labels (untargeted) or target labels (``targeted=True``); by default the
    model's predictions. Returns the adversarial examples.
    """
    return _iterative(model, x, y, eps=eps, steps=1, step_size=check_eps(eps), norm=norm,
                      random_start=False, restarts=1, targeted=targeted, loss="ce", clip=clip,
                      batch_size=batch_size, seed=None, verbose=verbose, output=output,
                      momentum=False, decay=0.0, name="fgsm")


def pgd(model, x, y=None, *, eps: float, steps: int = 20, step_size: Optional[float] = None,
        norm="inf", random_start: bool = True, restarts: int = 1, targeted: bool = False,
        loss: str = "ce", clip: Optional[Sequence[float]] = (0.0, 1.0), batch_size: int = 256,
        seed: Optional[int] = None, verbose: int = 1, output: str = "auto") -> np.ndarray:
    """Projected gradient descent (Madry et al. 2018), L∞ or L2.

    ``step_size`` defaults to ``2.5·eps/steps``; ``random_start`` draws the start uniformly
    in the ε-ball; with ``restarts > 1`` each input keeps the restart with the highest loss.
    ``loss``: ``"ce"`` or ``"margin"`` (CW margin loss). ``seed`` fixes the random starts.
    """
    eps = check_eps(eps)
    step_size = 2.5 * eps / check_count(steps, "steps") if step_size is None else step_size
    return _iterative(model, x, y, eps=eps, steps=steps, step_size=step_size, norm=norm,
                      random_start=random_start, restarts=restarts, targeted=targeted, loss=loss,
                      clip=clip, batch_size=batch_size, seed=seed, verbose=verbose, output=output,
                      momentum=False, decay=0.0, name="pgd")


def bim(model, x, y=None, *, eps: float, steps: int = 10, step_size: Optional[float] = None,
        norm="inf", targeted: bool = False, clip: Optional[Sequence[float]] = (0.0, 1.0),
        batch_size: int = 256, verbose: int = 1, output: str = "auto") -> np.ndarray:
    """Basic iterative method (Kurakin et al. 2017): PGD from ``x`` without random start,
    ``step_size`` defaulting to ``1.25·eps/steps``."""
    eps = check_eps(eps)
    step_size = 1.25 * eps / check_count(steps, "steps") if step_size is None else step_size
    return _iterative(model, x, y, eps=eps, steps=steps, step_size=step_size, norm=norm,
                      random_start=False, restarts=1, targeted=targeted, loss="ce", clip=clip,
                      batch_size=batch_size, seed=None, verbose=verbose, output=output,
                      momentum=False, decay=0.0, name="bim")


def mim(model, x, y=None, *, eps: float, steps: int = 10, step_size: Optional[float] = None,
        decay: float = 1.0, norm="inf", targeted: bool = False,
        clip: Optional[Sequence[float]] = (0.0, 1.0), batch_size: int = 256, verbose: int = 1,
        output: str = "auto") -> np.ndarray:
    """Momentum iterative method (Dong et al. 2018): gradients normalized by their mean
    absolute value accumulate with ``decay``; ``step_size`` defaults to ``eps/steps``."""
    eps = check_eps(eps)
    step_size = eps / check_count(steps, "steps") if step_size is None else step_size
    return _iterative(model, x, y, eps=eps, steps=steps, step_size=step_size, norm=norm,
                      random_start=False, restarts=1, targeted=targeted, loss="ce", clip=clip,
                      batch_size=batch_size, seed=None, verbose=verbose, output=output,
                      momentum=True, decay=float(decay), name="mim")

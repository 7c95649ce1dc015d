"""Ensemble UAP (Zhou et al. 2022, "Guarding Against Universal Adversarial Perturbations in
Data-driven Cloud/Edge Services", Algorithm 2): the :func:`~keras_qrobust.attacks.uap.uap`
loop where each update samples a model from a set of differently quantized copies of one
network (fp32 included), so that the perturbation fools all of them."""

from __future__ import annotations

from typing import Optional

from ._base import Clip, UAPResult
from .universal import make_loop, run_loop

__all__ = ["ensemble_uap"]


def ensemble_uap(models, x, *, eps: float, sampling: str = "step", step_size: Optional[float] = None,
                 max_passes: int = 10, target_fooling: float = 0.8, patience: Optional[int] = 1,
                 min_gain: float = 0.02, batch_size: int = 32, aggregate: str = "steps", norm="inf",
                 inner: str = "fgsm", clip: Clip = (0.0, 1.0), seed: Optional[int] = None,
                 verbose: int = 1, output: str = "auto", deepfool: Optional[dict] = None) -> UAPResult:
    """Ensemble UAP (Zhou et al. 2022, Algorithm 2): one perturbation for a set of models.

    The :func:`uap` loop, but each update uses a model ``f`` drawn uniformly from ``models``
    (differently quantized copies of one network, fp32 included): re-drawn every step
    (``sampling="step"``, default) or once per pass (``sampling="pass"``). The default step
    is the authors' (docs/methods.md): FGSM of strength ``α = step_size = eps``, the mean of the
    per-input steps of the inputs ``A`` that ``f`` still labels as before,
    ``v ← Π_ε(v + mean_{i∈A} α·sign(∇ CE(f(clip(x_i + v)), f(x_i))))``. Each model's fooling
    rate is measured against its own clean predictions; the loop stops when their mean
    reaches ``target_fooling``, when it stalls for ``patience`` passes (see :func:`uap`), or
    after ``max_passes``. ``result.model_fooling_rates`` holds each model's rate.

    ``step_size=eps/5, aggregate="gradient"`` (the :func:`uap` default rule) is markedly
    stronger: on Fashion-MNIST cnn_small with {fp32, w8a8, w4a4, w2a2} at ε = 0.1 it fools
    20-35% of the test images on fp32/w8a8/w4a4 against 14-20% for the default
    (``benchmarks/attacks.py`` runs both).

    Zhou's two settings are only a choice of ``x``:

    * direct — craft on the test data (and measure on it);
    * indirect — craft on training data, measure on the test data (the realistic one).

    Example::

        import keras_qrobust as kq
        from keras_qrobust.attacks.uap import ensemble_uap, fooling_rate

        models = [model] + [kq.RobustQuantizer.from_setting(s).quantize(model, x_train[:1000])
                            for s in ("w8a8", "w4a4", "w2a2")]
        # direct: craft on the test data
        direct = ensemble_uap(models, x_test, eps=0.1, seed=0)
        print(direct.model_fooling_rates)
        # indirect: craft on training data, score on the test data
        indirect = ensemble_uap(models, x_train[:2000], eps=0.1, seed=0)
        print([fooling_rate(m, x_test, indirect) for m in models])

    Raises ValueError for an empty ``models`` or models with different input shapes.
    """
    loop = make_loop(models, x, eps=eps, norm=norm, inner=inner, aggregate=aggregate,
                     step_size=(lambda e: e) if step_size is None else step_size,
                     max_passes=max_passes, target_fooling=target_fooling, patience=patience,
                     min_gain=min_gain, batch_size=batch_size, clip=clip, seed=seed, verbose=verbose,
                     output=output, sampling=sampling, method="ensemble_uap", deepfool=deepfool)
    return run_loop(loop)

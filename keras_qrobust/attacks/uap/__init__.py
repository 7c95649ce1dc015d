"""Universal adversarial perturbations (UAPs): one perturbation ``v`` with ``‖v‖ ≤ ε`` that
changes the prediction of many inputs at once, ``f(clip(x + v)) ≠ f(x)``.

* :func:`uap` — Moosavi-Dezfooli et al. 2017, "Universal adversarial perturbations"
  (Algorithm 1): ``v = 0``; pass over the shuffled data; for every input still classified as
  before (``f(x + v) = f(x)``) find a small step ``δ`` at ``x + v`` (DeepFool, or FGSM of
  strength α), then ``v ← Π_ε(v + δ)``; stop when the fooling rate reaches ``1 − δ`` or
  after ``max_passes``. Batched here: each update aggregates the steps of ``batch_size``
  inputs; ``batch_size=1`` is the original sequential algorithm.
* :func:`sgd_uap` / :func:`targeted_uap` — Shafahi et al. 2020, "Universal adversarial
  training" (SGD-UAP): ``v ← Π_ε(v + α·sign(∇_v mean_batch min(CE(x + v), β)))``; the
  targeted variant descends the cross-entropy of the target class.
* :func:`ensemble_uap` — Zhou et al. 2022, "Guarding Against Universal Adversarial
  Perturbations in Data-driven Cloud/Edge Services" (Algorithm 2): the UAP loop where each
  update samples a model from a set of differently quantized copies of one network (fp32
  included), so the perturbation fools all of them.
* :func:`uap_transfer_matrix` — UAP crafted on model i, accuracy of model j.

The fooling rate is always measured against the model's own clean predictions
(``mean[f(clip(x + v)) ≠ f(x)]``), never against the true labels. Every update runs as a
``tf.function`` compiled once per model and configuration (ε and step sizes are tensors, so
sweeping ε does not retrace). Quantized models give straight-through gradients.

Modules: :mod:`.universal` (``uap``), :mod:`.sgd` (``sgd_uap``, ``targeted_uap``),
:mod:`.ensemble` (``ensemble_uap``), :mod:`.transfer` (``fooling_rate``,
``uap_transfer_matrix``); ``_base`` holds what they share.
"""

from ._base import UAPResult
from .ensemble import ensemble_uap
from .sgd import sgd_uap, targeted_uap
from .transfer import TransferMatrix, fooling_rate, uap_transfer_matrix
from .universal import uap

# the module-level names attacks/uap.py also had, outside __all__
from ._base import Clip as Clip
from .transfer import METHODS as METHODS
from .universal import AGGREGATES as AGGREGATES, INNER_ATTACKS as INNER_ATTACKS, SAMPLINGS as SAMPLINGS

__all__ = [
    "UAPResult",
    "TransferMatrix",
    "fooling_rate",
    "uap",
    "sgd_uap",
    "targeted_uap",
    "ensemble_uap",
    "uap_transfer_matrix",
]

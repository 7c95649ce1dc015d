"""Adversarial attacks on tf_keras models (float, tfmot-quantized and RobustQuantizer alike).

Every attack takes ``(model, x, y=None, *, eps, ...)`` with numpy images in ``[0, 1]`` and
returns adversarial numpy images of the same shape; ``y=None`` attacks the model's own
predictions. ``ATTACKS`` maps each per-example attack's name to its function.
"""

from ._common import AttackModel, as_attack_model
from .bpda import bpda
from .blackbox import TransferResult, spsa, square, transfer
from .cw import cw_l2
from .deepfool import deepfool, deepfool_perturbation
from .gradient import bim, fgsm, iterate, mim, pgd
from .noise import noise
from .uap import (
    TransferMatrix,
    UAPResult,
    ensemble_uap,
    fooling_rate,
    sgd_uap,
    targeted_uap,
    uap,
    uap_transfer_matrix,
)

ATTACKS = {
    "fgsm": fgsm,
    "pgd": pgd,
    "bim": bim,
    "mim": mim,
    "cw_l2": cw_l2,
    "deepfool": deepfool,
    "spsa": spsa,
    "square": square,
}

__all__ = [
    "ATTACKS",
    "AttackModel",
    "as_attack_model",
    "fgsm",
    "pgd",
    "bim",
    "mim",
    "iterate",
    "cw_l2",
    "deepfool",
    "deepfool_perturbation",
    "noise",
    "spsa",
    "square",
    "transfer",
    "bpda",
    "TransferResult",
    "uap",
    "sgd_uap",
    "targeted_uap",
    "ensemble_uap",
    "fooling_rate",
    "uap_transfer_matrix",
    "UAPResult",
    "TransferMatrix",
]

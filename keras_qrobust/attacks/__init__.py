"""Adversarial attacks on tf_keras models (float, tfmot-quantized and RobustQuantizer alike).

Every attack takes ``(model, x, y=None, *, eps, ...)`` with numpy images in ``[0, 1]`` and
returns adversarial numpy images of the same shape; ``y=None`` attacks the model's own
predictions. ``ATTACKS`` maps each per-example attack's name to its function; the
registry (:mod:`.registry`) holds every attack once, with its kind, norms and defaults.
``autoattack`` is the standard robust accuracy is measured by.
"""

from ._common import AttackModel, as_attack_model
from .apgd import apgd, apgd_t
from .autoattack import AUTOATTACK_VERSIONS, AutoAttackResult, autoattack
from .gradient_check import gradient_status
from .integrity import MaskingReport, masking_checks
from .registry import AttackSpec, attack_names, check_budget, get_attack, register_attack
from .bpda import bpda
from .blackbox import TransferResult, spsa, square, transfer
from .cw import cw_l2
from .fab import fab
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
    "apgd": apgd,
    "apgd_t": apgd_t,
    "fab": fab,
}

__all__ = [
    "ATTACKS",
    "apgd",
    "apgd_t",
    "fab",
    "autoattack",
    "AutoAttackResult",
    "AUTOATTACK_VERSIONS",
    "gradient_status",
    "masking_checks",
    "MaskingReport",
    "AttackSpec",
    "attack_names",
    "check_budget",
    "get_attack",
    "register_attack",
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

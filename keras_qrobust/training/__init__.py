"""Training: standard and adversarial (PGD-AT, FGSM-RS, TRADES) training of classifiers."""

from .adversarial import AdversarialModel
from .standard import compile_classifier, set_seed, train_classifier

__all__ = ["AdversarialModel", "compile_classifier", "set_seed", "train_classifier"]

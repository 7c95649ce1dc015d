"""Training: standard classifier training (adversarial training lands here too)."""

from .standard import compile_classifier, set_seed, train_classifier

__all__ = ["compile_classifier", "set_seed", "train_classifier"]

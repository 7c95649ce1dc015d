"""Training: standard, adversarial (PGD-AT, FGSM-RS, TRADES) and feedback-learning
retraining of classifiers."""

from . import feedback
from .adversarial import AdversarialModel
from .feedback import (
    BoundaryDistances,
    FeedbackExamples,
    FeedbackHistory,
    boundary_distance,
    class_margins,
    feedback_learning,
    generate_feedback_examples,
)
from .standard import compile_classifier, set_seed, train_classifier

__all__ = [
    "AdversarialModel",
    "compile_classifier",
    "set_seed",
    "train_classifier",
    "feedback",
    "boundary_distance",
    "class_margins",
    "generate_feedback_examples",
    "feedback_learning",
    "BoundaryDistances",
    "FeedbackExamples",
    "FeedbackHistory",
]

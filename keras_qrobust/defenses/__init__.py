"""Defenses: make a classifier robust while it trains, and watch its robustness do so.

* adversarial training inside ``model.fit`` — PGD-AT, FGSM-RS and TRADES
  (:class:`AdversarialModel`, :mod:`.adversarial_model`);
* feedback learning — widen the margins of the classes closest to the decision boundary
  (:func:`feedback_learning`, the :class:`FeedbackLearning` callback, :mod:`.feedback`);
* the orthogonality (Lipschitz) regularizer of Defensive Quantization
  (:class:`OrthogonalityRegularizer`, kept with the Lipschitz layers that use it in
  :mod:`keras_qrobust.layers.regularizers`);
* callbacks that log robustness while training (:class:`UAPMonitor`,
  :class:`LipschitzMonitor`, :mod:`.callbacks`);
* standard training, the baseline the defenses start from and are compared with
  (:func:`train_classifier`, :func:`compile_classifier`, :func:`set_seed`, :mod:`.standard`).
"""

from ..layers import regularizers
from ..layers.regularizers import OrthogonalityRegularizer
from . import callbacks, feedback
from .adversarial_model import ATTACKS, AdversarialModel
from .callbacks import FeedbackLearning, LipschitzMonitor, UAPMonitor
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
    "callbacks",
    "feedback",
    "regularizers",
    "ATTACKS",
    "AdversarialModel",
    "compile_classifier",
    "set_seed",
    "train_classifier",
    "boundary_distance",
    "class_margins",
    "generate_feedback_examples",
    "feedback_learning",
    "BoundaryDistances",
    "FeedbackExamples",
    "FeedbackHistory",
    "FeedbackLearning",
    "UAPMonitor",
    "LipschitzMonitor",
    "OrthogonalityRegularizer",
]

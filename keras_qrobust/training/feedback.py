"""Deprecated: moved to :mod:`keras_qrobust.defenses.feedback`; kept for one release."""

import warnings

from ..defenses._common import check_data
from ..defenses.adversarial_model import classifier_of
from ..defenses.feedback import (
    BoundaryDistances,
    FeedbackExamples,
    FeedbackHistory,
    boundary_distance,
    class_margins,
    examples_from_distances,
    feedback_counts,
    feedback_learning,
    generate_feedback_examples,
)
from ..defenses.feedback.retraining import (
    check_compiled,
    check_settable_learning_rate,
    scaled_learning_rate,
    warn_uneven_batches,
)

warnings.warn("keras_qrobust.training.feedback is deprecated; import from keras_qrobust.defenses.feedback",
              DeprecationWarning, stacklevel=2)

__all__ = [
    "BoundaryDistances",
    "FeedbackExamples",
    "FeedbackHistory",
    "boundary_distance",
    "class_margins",
    "feedback_counts",
    "generate_feedback_examples",
    "examples_from_distances",
    "feedback_learning",
    # helpers the old module held
    "check_compiled",
    "check_data",
    "check_settable_learning_rate",
    "classifier_of",
    "scaled_learning_rate",
    "warn_uneven_batches",
]

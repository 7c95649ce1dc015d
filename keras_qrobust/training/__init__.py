"""Deprecated: moved to :mod:`keras_qrobust.defenses`; this package re-exports its old names
and will be removed in the next release."""

import importlib
import warnings

from ..defenses import (
    AdversarialModel,
    BoundaryDistances,
    FeedbackExamples,
    FeedbackHistory,
    boundary_distance,
    class_margins,
    compile_classifier,
    feedback_learning,
    generate_feedback_examples,
    set_seed,
    train_classifier,
)

warnings.warn("keras_qrobust.training is deprecated; import from keras_qrobust.defenses", DeprecationWarning,
              stacklevel=2)

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


def __getattr__(name: str):
    # the old submodules, each a shim that warns on its own
    if name in ("adversarial", "feedback", "standard"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

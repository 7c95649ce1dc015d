"""Feedback learning: widen the margins of the classes closest to the decision boundary.

Song, Wang & Li 2019, "Feedback learning for improving the robustness of neural networks";
the steps are docs/methods.md's:

1. For each correctly classified ``(x, y)`` and ``K`` random unit directions ``d`` (random
   signs for L∞, normalised Gaussians for L2), the boundary distance along ``d`` is
   ``r(x, d) = min {t ≤ t_max : argmax f(clip(x + t·d)) ≠ y}``, found on a grid of 20 steps
   and refined by 10 bisection steps; ``r = t_max`` when nothing flips.
2. The per-class mean ``r̄_c`` over the correct examples of class ``c`` is the margin
   criterion.
3. Generate ``x' = clip(x + min((1 + γ)·r, t_max)·d)`` labelled ``y`` (just past the boundary,
   ``γ = 0.1``), ``0.5·N`` examples in all, class ``c`` getting a share ``∝ 1/r̄_c``.
4. Fine-tune on the original plus generated examples, 5 epochs at 0.1× the learning rate;
   2 rounds.

Steps 1–2 are in :mod:`.margins`, step 3 in :mod:`.examples`, step 4 and the loop in
:mod:`.retraining`. :func:`feedback_learning` runs the whole loop;
:class:`FeedbackLearning` does it inside ``model.fit`` (both through :func:`fine_tune`).
"""

from .callback import FeedbackLearning
from .examples import FeedbackExamples, examples_from_distances, feedback_counts, generate_feedback_examples
from .margins import BoundaryDistances, boundary_distance, class_margins
from .retraining import FeedbackHistory, feedback_learning, fine_tune

__all__ = [
    "BoundaryDistances",
    "FeedbackExamples",
    "FeedbackHistory",
    "FeedbackLearning",
    "boundary_distance",
    "class_margins",
    "feedback_counts",
    "generate_feedback_examples",
    "examples_from_distances",
    "feedback_learning",
    "fine_tune",
]

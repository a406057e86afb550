"""Test-time learning: the CMS levels learning while a model reads (InContextLearner) and the
first-order meta-learning of their initial state. Imports modeling and optim, never training."""

from .in_context import InContextLearner, ReadingState, per_row_linear_weights
from .meta import learning_parameters, meta_learning_step

__all__ = ["InContextLearner", "ReadingState", "learning_parameters", "meta_learning_step", "per_row_linear_weights"]

"""Test-time learning: the CMS levels learning while a model reads (InContextLearner), the
dynamic-evaluation baseline, the calibration of a model's own rule and the first-order
meta-learning of the levels' initial state. Imports modeling and optim, never training."""

from .dynamic_evaluation import DynamicEvaluation, gradient_statistics, parameter_names
from .in_context import BUILT_IN_RULE, InContextLearner, ReadingState, per_row_weights
from .meta import learning_parameters, meta_learning_step

__all__ = ["BUILT_IN_RULE", "DynamicEvaluation", "InContextLearner", "ReadingState", "gradient_statistics",
           "learning_parameters", "meta_learning_step", "parameter_names", "per_row_weights"]

"""Everything that predicts in context: reference algorithms and trained models, one protocol."""

from iclab.learners.base import Learner, LinearLearner
from iclab.learners.descriptor import Bilinear, CentredGD
from iclab.learners.fitted import FittedNet, SklearnRegressor, boosted_trees, greedy_tree
from iclab.learners.kernel import FunctionalGD, GPPosterior, KernelRidge
from iclab.learners.lasso import Lasso
from iclab.learners.reference import (
    Averaging,
    GradientDescent,
    KNearest,
    LeastSquares,
    NewtonSchulz,
    PreconditionedGD,
    Ridge,
    Zero,
)
from iclab.learners.trained import ModelLearner, from_model

__all__ = [
    "Averaging",
    "Bilinear",
    "CentredGD",
    "FittedNet",
    "FunctionalGD",
    "GPPosterior",
    "KernelRidge",
    "GradientDescent",
    "KNearest",
    "Lasso",
    "LeastSquares",
    "Learner",
    "LinearLearner",
    "ModelLearner",
    "NewtonSchulz",
    "PreconditionedGD",
    "Ridge",
    "SklearnRegressor",
    "Zero",
    "boosted_trees",
    "from_model",
    "greedy_tree",
]

"""Everything that predicts in context: reference algorithms and trained models, one protocol."""

from iclab.learners.base import Learner, LinearLearner
from iclab.learners.kernel import FunctionalGD, GPPosterior, KernelRidge
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
    "FunctionalGD",
    "GPPosterior",
    "KernelRidge",
    "GradientDescent",
    "KNearest",
    "LeastSquares",
    "Learner",
    "LinearLearner",
    "ModelLearner",
    "NewtonSchulz",
    "PreconditionedGD",
    "Ridge",
    "Zero",
    "from_model",
]

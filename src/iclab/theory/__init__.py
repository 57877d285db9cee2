"""Exact theory of in-context learners (closed forms checked against Monte Carlo in the tests).

docs/theory.md states every formula, its derivation and the test that checks it.
"""

from iclab.theory.descriptors import (
    centred_gd_loss,
    centred_gd_step,
    descriptor_gap,
    descriptor_problem,
    standardising_predictor,
    task_problem,
)
from iclab.theory.gradient_flow import FlowResult, SGDResult, gradient_flow, initial_weights, sgd_run
from iclab.theory.lsa import (
    GDOptimum,
    LSAOptimum,
    isotropic_gd_optimum,
    isotropic_reference,
    lsa_loss,
    lsa_moment,
    lsa_optimum,
)
from iclab.theory.lsa_weights import effective_bilinear, effective_gamma, lsa_from_bilinear, lsa_from_gamma
from iclab.theory.montecarlo import MCEstimate, mc_loss
from iclab.theory.nonlinear import nonlinear_loss, nonlinear_moments, nonlinear_optimum
from iclab.theory.quadratic import QuadraticLoss

__all__ = [
    "FlowResult",
    "GDOptimum",
    "LSAOptimum",
    "MCEstimate",
    "QuadraticLoss",
    "SGDResult",
    "centred_gd_loss",
    "centred_gd_step",
    "descriptor_gap",
    "descriptor_problem",
    "effective_bilinear",
    "effective_gamma",
    "gradient_flow",
    "initial_weights",
    "isotropic_gd_optimum",
    "isotropic_reference",
    "lsa_from_bilinear",
    "lsa_from_gamma",
    "lsa_loss",
    "lsa_moment",
    "lsa_optimum",
    "mc_loss",
    "nonlinear_loss",
    "nonlinear_moments",
    "nonlinear_optimum",
    "sgd_run",
    "standardising_predictor",
    "task_problem",
]

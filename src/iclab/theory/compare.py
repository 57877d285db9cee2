"""A trained one-layer LSA beside the exact optimum of the task it was trained on: what ``iclab theory compare
RUN`` prints and ``iclab reproduce mahankali`` tabulates.

Three theories cover a linear task (x, w Gaussian, centred):

- ``nonlinear``: y = ξ f(wᵀx) + ε with f = relu, tanh or cubic and x, w ~ N(0, I): Γ* = η* I
  (:mod:`iclab.theory.nonlinear`);
- ``linear``: y = wᵀx + ε, any x and w covariance (not rotated per prompt): Γ* = Σ_w Λ M⁻¹
  (:mod:`iclab.theory.lsa`);
- ``descriptor``: a mean-shifted task or one with a descriptor: the bilinear weights B over (x, descriptor)
  (:mod:`iclab.theory.descriptors`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from iclab.models.lsa import LSA
from iclab.theory.descriptors import task_problem
from iclab.theory.lsa import LSAOptimum, lsa_loss, lsa_optimum
from iclab.theory.lsa_weights import effective_bilinear, effective_gamma
from iclab.theory.nonlinear import RESPONSES, nonlinear_loss, nonlinear_optimum

if TYPE_CHECKING:
    from iclab.tasks.linear import LinearTaskConfig


@dataclass(frozen=True)
class TheoryComparison:
    """A model's effective weights beside the optimum. ``name``: "Γ" (ŷ = x_qᵀ Γ h, ``weights`` (d, d)) or
    "B" (with a descriptor, ŷ = h_fᵀ B f_q, (F, F)); ``model_loss`` the exact population loss E(ŷ − y_q)² of
    ``weights``, ``optimal_loss`` L* that of ``optimum``; ``distance`` ‖W − W*‖_F / ‖W*‖_F (for B, in the
    directions the loss sees); ``step_size`` η* where the optimum is one plain GD step (Γ* = η* I)."""

    name: str
    weights: np.ndarray
    optimum: np.ndarray
    model_loss: float
    optimal_loss: float
    distance: float
    step_size: float | None


def theory_kind(task: LinearTaskConfig) -> str:
    """Which exact theory covers a linear ``task``: "nonlinear", "linear" or "descriptor". Raises ValueError
    (one line) for a task none covers."""
    if task.name != "linear":
        raise ValueError(f"the exact theory covers linear tasks, got task.name={task.name}")
    if task.response != "identity":
        if task.response not in RESPONSES:
            raise ValueError(
                f"compare has no exact theory for task.response={task.response} (it covers {', '.join(RESPONSES)})"
            )
        extras = {
            "task.x_cov_diag": task.x_cov_diag is not None,
            "task.condition_number": task.condition_number is not None,
            "task.w_cov": task.w_cov != "identity",
            "task.x_mean_std": task.x_mean_std != 0,
            "task.descriptor": task.descriptor != "none",
        }
        given = [key for key, used in extras.items() if used]
        if given:
            raise ValueError(
                f"compare's theory for task.response={task.response} needs isotropic x and w ~ N(0, I); "
                f"this run sets {', '.join(given)}"
            )
        return "nonlinear"
    if task.x_mean_std == 0 and task.descriptor == "none":
        if task.rotation == "per_prompt":
            raise ValueError("task.rotation=per_prompt is not covered by the exact theory")
        return "linear"
    return "descriptor"


def compare_with_theory(model: LSA, task: LinearTaskConfig, seed: int = 0) -> TheoryComparison:
    """The one-layer LSA ``model`` trained on ``task`` (its fixed covariances and means drawn from ``seed``, the
    run's seed) beside the exact optimum of that task; see :func:`theory_kind`."""
    kind = theory_kind(task)
    if kind == "nonlinear":
        opt = nonlinear_optimum(task.response, task.n, task.d, task.noise_std)
        weights = effective_gamma(model)
        model_loss = nonlinear_loss(weights, task.response, task.n, task.d, task.noise_std)
        return _gamma_comparison(weights, opt, model_loss)
    if kind == "linear":
        from iclab.tasks import make_task

        sampler = make_task(task, seed)
        covs = (sampler.x_cov.numpy(), sampler.w_cov.numpy(), task.noise_std)
        opt = lsa_optimum(task.n, *covs)
        weights = effective_gamma(model)
        return _gamma_comparison(weights, opt, lsa_loss(weights, task.n, *covs))
    problem = task_problem(task, seed)
    weights = effective_bilinear(model)
    optimum, optimal = problem.optimum()
    distance = problem.relative_error(weights, optimum)
    return TheoryComparison("B", weights, optimum, problem.loss(weights), optimal, distance, None)


def _gamma_comparison(weights: np.ndarray, opt: LSAOptimum, model_loss: float) -> TheoryComparison:
    distance = float(np.linalg.norm(weights - opt.gamma) / np.linalg.norm(opt.gamma))
    return TheoryComparison("Γ", weights, opt.gamma, model_loss, opt.loss, distance, opt.step_size)

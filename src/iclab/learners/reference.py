"""Reference learners: each holds its hyper-parameters and calls a pure function of algorithms.py."""

from __future__ import annotations

import torch
from torch import Tensor

from iclab.learners import algorithms
from iclab.learners.base import Learner, LinearLearner
from iclab.validate import check_number


class LeastSquares(Learner):
    """Minimum-norm ordinary least squares w = X⁺y, solved from X (see :func:`algorithms.ridge_predictions`):
    equal to ``np.linalg.lstsq`` (same rank cutoff) at every prefix."""

    name = "least_squares"

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        return algorithms.ridge_predictions(xs, ys, xq)

    def predict_prefixes(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        return algorithms.ridge_predictions(xs, ys, xq, prefixes=True)


class Ridge(Learner):
    """w = (XᵀX + αI)⁻¹Xᵀy (α is not scaled by k), solved from X: exact for every α > 0, tending to
    :class:`LeastSquares` as α → 0 (see :func:`algorithms.ridge_predictions`)."""

    def __init__(self, alpha: float) -> None:
        self.alpha = check_number("Ridge.alpha", alpha, gt=0.0)
        self.name = f"ridge(alpha={self.alpha:g})"

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        return algorithms.ridge_predictions(xs, ys, xq, self.alpha)

    def predict_prefixes(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        return algorithms.ridge_predictions(xs, ys, xq, self.alpha, prefixes=True)


class GradientDescent(LinearLearner):
    """``steps`` steps of GD from w₀ = 0: w ← w + (lr/n)·Xᵀ(y − Xw)."""

    def __init__(self, steps: int, lr: float) -> None:
        self.steps = check_number("GradientDescent.steps", steps, ge=0, integer=True)
        self.lr = check_number("GradientDescent.lr", lr, gt=0.0)
        self.name = f"gd(steps={self.steps}, lr={self.lr:.4g})"

    def weights(self, gram: Tensor, moment: Tensor, count: Tensor) -> Tensor:
        return algorithms.gradient_descent(gram, moment, count, self.steps, self.lr)


class PreconditionedGD(LinearLearner):
    """GD with a fixed preconditioner P: w ← w + (lr/n)·P·Xᵀ(y − Xw)."""

    def __init__(self, steps: int, lr: float, preconditioner: Tensor) -> None:
        steps = check_number("PreconditionedGD.steps", steps, ge=0, integer=True)
        lr = check_number("PreconditionedGD.lr", lr, gt=0.0)
        if preconditioner.ndim != 2 or preconditioner.shape[0] != preconditioner.shape[1]:
            raise ValueError(
                f"PreconditionedGD.preconditioner must be a square (d, d) matrix, "
                f"got shape {tuple(preconditioner.shape)}"
            )
        self.steps, self.lr, self.preconditioner = steps, lr, preconditioner
        self.name = f"pgd(steps={self.steps}, lr={self.lr:.4g})"

    def weights(self, gram: Tensor, moment: Tensor, count: Tensor) -> Tensor:
        if gram.shape[-1] != self.preconditioner.shape[0]:
            raise ValueError(
                f"PreconditionedGD.preconditioner is {self.preconditioner.shape[0]}-dimensional "
                f"but the prompts have d={gram.shape[-1]}"
            )
        pre = self.preconditioner.to(dtype=gram.dtype, device=gram.device)
        return algorithms.gradient_descent(gram, moment, count, self.steps, self.lr, pre)


class NewtonSchulz(LinearLearner):
    """``steps`` Newton–Schulz iterations towards (XᵀX)⁻¹ (see :func:`algorithms.newton_schulz`); the
    prediction is x_qᵀ M_steps Xᵀy, so ``steps=0`` uses M₀ = αXᵀX and many steps approach least squares."""

    def __init__(self, steps: int) -> None:
        self.steps = check_number("NewtonSchulz.steps", steps, ge=0, integer=True)
        self.name = f"newton(steps={self.steps})"

    def weights(self, gram: Tensor, moment: Tensor, count: Tensor) -> Tensor:
        return algorithms.newton_schulz(gram, moment, self.steps)


class Averaging(LinearLearner):
    """ŵ = (1/n) Σ y_i x_i."""

    name = "averaging"
    needs_gram = False

    def weights(self, gram: Tensor | None, moment: Tensor, count: Tensor) -> Tensor:
        return algorithms.averaging(moment, count)


class Zero(LinearLearner):
    """Always predicts 0."""

    name = "zero"
    needs_gram = False

    def weights(self, gram: Tensor | None, moment: Tensor, count: Tensor) -> Tensor:
        return torch.zeros_like(moment)


class KNearest(Learner):
    """Mean label of the k nearest context points (Euclidean; at equal distance the earliest point wins)."""

    def __init__(self, k: int) -> None:
        self.k = check_number("KNearest.k", k, ge=1, integer=True)
        self.name = f"knn(k={self.k})"

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        return algorithms.k_nearest(xs, ys, xq, self.k)

    def predict_prefixes(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        return algorithms.k_nearest(xs, ys, xq, self.k, prefixes=True)

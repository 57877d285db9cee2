"""The algorithms a layer is compared with, each a family over an iteration count and one hyper-parameter.

Prompts with a descriptor (mean-shifted tasks) add the descriptor-aware families of
:func:`descriptor_families`: centred GD (its step fitted) and the exact finite-n optimum of a one-layer LSA.

A family's ``path(value, counts)`` gives its prediction after every prefix 1..n of the context on the probe's
prompts, at every iteration count of ``counts`` at once (one run of the iteration, to the largest; GD's in
closed form, so that counts of thousands cost no more), as (len(counts), B, n, m) float64; a family without
iterations returns (1, B, n, m). ``counts`` is the family's own where it has them (GD over Fu et al.'s
thousands of steps), else the probe's 0..K. ``learner(k, value)`` is the same algorithm as an ordinary
:class:`~iclab.learners.Learner` (used for input sensitivities and reports).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from iclab.kernels import Kernel
from iclab.learners import (
    CentredGD,
    FunctionalGD,
    GradientDescent,
    Learner,
    LeastSquares,
    NewtonSchulz,
    PreconditionedGD,
    Ridge,
)
from iclab.learners.algorithms import (
    gradient_descent_coefficients,
    gradient_descent_path,
    gradient_descent_spectrum,
    newton_schulz_path,
    ridge_predictions,
    sufficient_statistics,
)
from iclab.learners.kernel import functional_gd_path
from iclab.learners.specs import LearnerSpecError, parse_learner
from iclab.prompts import Prompts

if TYPE_CHECKING:
    from iclab.tasks import Sampler

GRID_POINTS = 31  # hyper-parameter values per family on the coarse grid (log-spaced)


Path = Callable[[float | None, Sequence[int]], Tensor]  # (value, iteration counts) → (len(counts) or 1, B, n, m)


@dataclass(frozen=True)
class Family:
    """A candidate algorithm: ``hyper`` names its hyper-parameter (or None), ``grid`` the values tried,
    ``counts`` the iteration counts tried where the family has its own (None: the probe's 0..K)."""

    name: str
    hyper: str | None
    grid: tuple[float, ...]
    iterative: bool
    path: Path
    learner: Callable[[int | None, float | None], Learner]
    counts: tuple[int, ...] | None = None


def _log_grid(centre: float, low: float, high: float) -> tuple[float, ...]:
    return tuple(float(v) for v in centre * np.geomspace(low, high, GRID_POINTS))


def _linear_path(weights: Tensor, xq: Tensor) -> Tensor:
    """weights: (C, B, n, d), xq: (B, m, d) → predictions (C, B, n, m)."""
    return torch.einsum("bmd,kbnd->kbnm", xq, weights)


def _at_counts(iterates: Callable[[float | None, int], Tensor]) -> Path:
    """The path at the given counts of an iteration whose ``iterates(value, K)`` are those of 0..K: (K + 1, …)."""
    return lambda value, counts: iterates(value, max(counts))[list(counts)]


def _solved_from_x(prompts: Prompts, alpha: float) -> Tensor:
    """Ridge (``alpha`` > 0) or minimum-norm least squares after every prefix, solved from X itself as the
    learners solve it (:func:`ridge_predictions`; never from XᵀX): (1, B, n, m) float64."""
    return ridge_predictions(prompts.xs.double(), prompts.ys.double(), prompts.xq.double(), alpha, True).unsqueeze(0)


def _kernel_path(kernel: Kernel, prompts: Prompts) -> Callable[[float | None, int], Tensor]:
    """Functional GD after every prefix: Gram blocks masked to each prefix, (B, n, n, n) and (B, n, m, n)."""
    n = prompts.n
    inside = torch.tril(torch.ones(n, n, dtype=torch.bool, device=prompts.xs.device))  # (prefix, point)
    mask = inside.to(prompts.xs.dtype)
    k_cc = kernel(prompts.xs, prompts.xs).unsqueeze(1) * (mask.unsqueeze(-1) * mask.unsqueeze(-2))
    k_qc = kernel(prompts.xq, prompts.xs).unsqueeze(1) * mask.view(1, n, 1, n)
    ys = prompts.ys.unsqueeze(1) * mask
    count = mask.sum(-1).expand(prompts.batch, n)
    return _at_counts(lambda lr, steps: functional_gd_path(k_cc, k_qc, ys, steps, lr, count))


def _gd_path(gram: Tensor, moment: Tensor, count: Tensor, xq: Tensor) -> Path:
    """GD's predictions at any counts in closed form (:func:`gradient_descent_coefficients`): one
    eigendecomposition per prompt and prefix, shared by every step size and count."""
    eigenvalues, vectors, projected = gradient_descent_spectrum(gram, moment, count)
    queries = torch.einsum("bmd,bnde->bnme", xq.double(), vectors)  # x_qᵀV per prefix: (B, n, m, d)

    def path(lr: float, counts: Sequence[int]) -> Tensor:
        coefficients = gradient_descent_coefficients(eigenvalues, projected, counts, lr)  # Vᵀw_t: (C, B, n, d)
        return torch.einsum("bnme,kbne->kbnm", queries, coefficients)

    return path


def candidate_families(
    prompts: Prompts,
    kernels: tuple[Kernel, ...] = (),
    preconditioner: Tensor | None = None,
    gd_counts: tuple[int, ...] | None = None,
) -> list[Family]:
    """GD, Newton–Schulz, ridge and least squares always; preconditioned GD with ``preconditioner`` (d, d);
    functional GD for each of ``kernels``. Grids are centred on the data's scale: s = E‖x‖²/d for the step
    sizes (stable GD needs lr < 2/λ_max(XᵀX/k)) and n·s for the ridge α. GD is tried at ``gd_counts`` steps
    where given (its iterates in closed form: thousands cost no more), else at the probe's counts."""
    gram, moment, count = sufficient_statistics(prompts.xs, prompts.ys, prefixes=True)
    scale = float((prompts.xs**2).sum(-1).mean()) / prompts.d
    xq = prompts.xq
    families = [
        Family("gd", "lr", _log_grid(1 / scale, 1e-2, 10.0), True, _gd_path(gram, moment, count, xq),
               lambda steps, lr: GradientDescent(steps, lr), gd_counts),
        Family("newton", None, (), True,
               _at_counts(lambda _, steps: _linear_path(newton_schulz_path(gram, moment, steps), xq)),
               lambda steps, _: NewtonSchulz(steps)),
        Family("ridge", "alpha", _log_grid(prompts.n * scale, 1e-4, 1e2), False,
               lambda alpha, _: _solved_from_x(prompts, alpha),
               lambda _, alpha: Ridge(alpha)),
        Family("ols", None, (), False,
               lambda *_: _solved_from_x(prompts, 0.0),
               lambda *_: LeastSquares()),
    ]  # fmt: skip
    if preconditioner is not None:
        pre = preconditioner.to(dtype=gram.dtype, device=gram.device)
        families.insert(1, Family(
            "pgd", "lr", _log_grid(1 / scale, 1e-2, 10.0), True,
            _at_counts(lambda lr, steps: _linear_path(gradient_descent_path(gram, moment, count, steps, lr, pre), xq)),
            lambda steps, lr: PreconditionedGD(steps, lr, pre)))  # fmt: skip
    for kernel in kernels:
        diagonal = float(kernel(prompts.xs, prompts.xs).diagonal(dim1=-2, dim2=-1).mean())
        families.append(Family(
            f"fgd-{kernel}", "lr", _log_grid(1 / diagonal, 1e-2, 10.0), True, _kernel_path(kernel, prompts),
            lambda steps, lr, kernel=kernel: FunctionalGD(kernel, steps, lr)))  # fmt: skip
    return families


def descriptor_families(prompts: Prompts, task: Sampler) -> list[Family]:
    """For prompts that carry a descriptor: ``centred_gd`` (ŷ = x_qᵀ (lr/k) Σ y_i (x_i − μ), lr on a log grid
    centred on 1/s, s = E‖x − μ‖²/d) and ``descriptor_optimum`` (the exact global minimiser B* of the one-layer
    LSA loss at task.n, ŷ = h_fᵀ B* f_q; left out where the theory does not cover the task). [] without a
    descriptor. Both are one-shot (not iterative)."""
    if prompts.descriptor is None or getattr(task.cfg, "descriptor", "none") == "none":
        return []
    means = getattr(task, "means", None) if task.cfg.descriptor == "onehot" else None  # (K, d): μ = Mᵀs
    centred = CentredGD(1.0, means)
    mu = centred.task_mean(prompts.xs, prompts.descriptor)  # (B, d)
    scale = float(((prompts.xs - mu.unsqueeze(1)) ** 2).sum(-1).mean()) / prompts.d
    unit = centred.predict_prefixes(prompts.xs, prompts.ys, prompts.xq, prompts.descriptor)  # (B, n, m), lr = 1
    families = [
        Family("centred_gd", "lr", _log_grid(1 / scale, 1e-2, 10.0), False,
               lambda lr, _: (lr * unit).unsqueeze(0),
               lambda _, lr: CentredGD(lr, means)),
    ]  # fmt: skip
    try:
        optimum = parse_learner("descriptor_optimum", task)
    except LearnerSpecError:
        return families
    fixed = optimum.predict_prefixes(prompts.xs, prompts.ys, prompts.xq, prompts.descriptor).unsqueeze(0)
    families.append(Family("descriptor_optimum", None, (), False, lambda *_: fixed, lambda *_: optimum))
    return families

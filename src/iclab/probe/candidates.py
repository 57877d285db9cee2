"""The algorithms a layer is compared with, each a family over an iteration count and one hyper-parameter.

A family's ``path(value, K)`` gives its prediction after every prefix 1..n of the context on the probe's
prompts, for every iteration count 0..K at once (one run of the iteration), as (K + 1, B, n, m) float64;
a family without iterations returns (1, B, n, m). ``learner(k, value)`` is the same algorithm as an ordinary
:class:`~iclab.learners.Learner` (used for input sensitivities and reports).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from iclab.kernels import Kernel
from iclab.learners import (
    FunctionalGD,
    GradientDescent,
    Learner,
    LeastSquares,
    NewtonSchulz,
    PreconditionedGD,
    Ridge,
)
from iclab.learners.algorithms import (
    gradient_descent_path,
    least_squares,
    newton_schulz_path,
    ridge,
    sufficient_statistics,
)
from iclab.learners.kernel import functional_gd_path
from iclab.prompts import Prompts

GRID_POINTS = 31  # hyper-parameter values per family on the coarse grid (log-spaced)


@dataclass(frozen=True)
class Family:
    """A candidate algorithm: ``hyper`` names its hyper-parameter (or None), ``grid`` the values tried."""

    name: str
    hyper: str | None
    grid: tuple[float, ...]
    iterative: bool
    path: Callable[[float | None, int], Tensor]
    learner: Callable[[int | None, float | None], Learner]


def _log_grid(centre: float, low: float, high: float) -> tuple[float, ...]:
    return tuple(float(v) for v in centre * np.geomspace(low, high, GRID_POINTS))


def _linear_path(weights: Tensor, xq: Tensor) -> Tensor:
    """weights: (K + 1, B, n, d), xq: (B, m, d) → predictions (K + 1, B, n, m)."""
    return torch.einsum("bmd,kbnd->kbnm", xq, weights)


def _kernel_path(kernel: Kernel, prompts: Prompts) -> Callable[[float | None, int], Tensor]:
    """Functional GD after every prefix: Gram blocks masked to each prefix, (B, n, n, n) and (B, n, m, n)."""
    n = prompts.n
    inside = torch.tril(torch.ones(n, n, dtype=torch.bool, device=prompts.xs.device))  # (prefix, point)
    mask = inside.to(prompts.xs.dtype)
    k_cc = kernel(prompts.xs, prompts.xs).unsqueeze(1) * (mask.unsqueeze(-1) * mask.unsqueeze(-2))
    k_qc = kernel(prompts.xq, prompts.xs).unsqueeze(1) * mask.view(1, n, 1, n)
    ys = prompts.ys.unsqueeze(1) * mask
    count = mask.sum(-1).expand(prompts.batch, n)
    return lambda lr, steps: functional_gd_path(k_cc, k_qc, ys, steps, lr, count)


def candidate_families(
    prompts: Prompts,
    kernels: tuple[Kernel, ...] = (),
    preconditioner: Tensor | None = None,
) -> list[Family]:
    """GD, Newton–Schulz, ridge and least squares always; preconditioned GD with ``preconditioner`` (d, d);
    functional GD for each of ``kernels``. Grids are centred on the data's scale: s = E‖x‖²/d for the step
    sizes (stable GD needs lr < 2/λ_max(XᵀX/k)) and n·s for the ridge α."""
    gram, moment, count = sufficient_statistics(prompts.xs, prompts.ys, prefixes=True)
    scale = float((prompts.xs**2).sum(-1).mean()) / prompts.d
    xq = prompts.xq
    families = [
        Family("gd", "lr", _log_grid(1 / scale, 1e-2, 10.0), True,
               lambda lr, steps: _linear_path(gradient_descent_path(gram, moment, count, steps, lr), xq),
               lambda steps, lr: GradientDescent(steps, lr)),
        Family("newton", None, (), True,
               lambda _, steps: _linear_path(newton_schulz_path(gram, moment, steps), xq),
               lambda steps, _: NewtonSchulz(steps)),
        Family("ridge", "alpha", _log_grid(prompts.n * scale, 1e-4, 1e2), False,
               lambda alpha, _: _linear_path(ridge(gram, moment, alpha).unsqueeze(0), xq),
               lambda _, alpha: Ridge(alpha)),
        Family("ols", None, (), False,
               lambda *_: _linear_path(least_squares(gram, moment).unsqueeze(0), xq),
               lambda *_: LeastSquares()),
    ]  # fmt: skip
    if preconditioner is not None:
        pre = preconditioner.to(dtype=gram.dtype, device=gram.device)
        families.insert(1, Family(
            "pgd", "lr", _log_grid(1 / scale, 1e-2, 10.0), True,
            lambda lr, steps: _linear_path(gradient_descent_path(gram, moment, count, steps, lr, pre), xq),
            lambda steps, lr: PreconditionedGD(steps, lr, pre)))  # fmt: skip
    for kernel in kernels:
        diagonal = float(kernel(prompts.xs, prompts.xs).diagonal(dim1=-2, dim2=-1).mean())
        families.append(Family(
            f"fgd-{kernel}", "lr", _log_grid(1 / diagonal, 1e-2, 10.0), True, _kernel_path(kernel, prompts),
            lambda steps, lr, kernel=kernel: FunctionalGD(kernel, steps, lr)))  # fmt: skip
    return families

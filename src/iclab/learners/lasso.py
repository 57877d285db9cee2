"""The Lasso as a batched solver: every prompt and every prefix at once (Garg et al.'s sparse-linear baseline).

For a prefix of k examples it minimises (1/(2k))‖y − Xw‖² + α‖w‖₁ (scikit-learn's ``Lasso`` objective,
without an intercept, as Garg et al. use it), i.e. ½‖y − Xw‖² + λ‖w‖₁ with λ = kα, on the sufficient
statistics G = XᵀX and b = Xᵀy, by following the exact solution path in λ (the homotopy / LARS-Lasso
algorithm, Osborne et al. 2000; Efron et al. 2004) for all prompts and prefixes at once: a few dozen batched
d × d solves instead of thousands of coordinate sweeps, and exact to rounding (coordinate descent, as in
scikit-learn, converges slowly when k ≈ d). A coordinate with G_jj = 0 (an unused input) stays 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

from iclab.learners.base import LinearLearner
from iclab.validate import check_number


def lasso(gram: Tensor, moment: Tensor, count: Tensor, alpha: float) -> Tensor:
    """gram: (..., d, d), moment: (..., d), count: (...) → w: (..., d), the Lasso solution of each system.

    The homotopy (LARS-Lasso) path in λ from max_j |b_j|, where w = 0, down to λ = kα: along it the active
    coordinates A keep |c_A| = λ for the correlations c = b − Gw, and w_A moves along G_AA⁻¹ s_A; a coordinate
    joins A when its |c_j| reaches λ and leaves when its weight crosses 0. The systems still on their path
    step together; at the end w_A = G_AA⁻¹(b_A − kα s_A) is solved afresh for all. Computed in float64
    whatever the inputs' dtype (the path's event order is sensitive to rounding)."""
    size = moment.shape[-1]
    flat_gram, flat_moment = gram.reshape(-1, size, size).double(), moment.reshape(-1, size).double()
    target = (alpha * count).reshape(-1).double()  # (N,): λ at the end, kα
    usable = flat_gram.diagonal(dim1=-2, dim2=-1) > 0  # (N, d): a zero column never enters
    correlation = flat_moment.clone()  # c = b − G w
    level = correlation.abs().amax(-1)  # λ along the path
    on_path = (level > target).unsqueeze(-1)  # else w = 0 is the solution
    active = torch.nn.functional.one_hot(correlation.abs().argmax(-1), size).bool() & usable & on_path
    signs = torch.sign(correlation) * active
    w = torch.zeros_like(flat_moment)
    run = on_path.squeeze(-1).nonzero().squeeze(-1)  # systems still on their path
    for _ in range(8 * size + 8):
        if run.numel() == 0:
            break
        g, c, lam, on, s, x = flat_gram[run], correlation[run], level[run], active[run], signs[run], w[run]
        direction = _solve_on(g, s, on)  # dw/d(−λ), 0 off A
        slope = (g @ direction.unsqueeze(-1)).squeeze(-1)  # dc/d(−λ) = −G·direction
        ahead = 1e-12 * lam.unsqueeze(-1)  # events closer than this are the one just taken
        gap = lam.unsqueeze(-1)
        join = _first_ahead((gap - c) / (1 - slope), (gap + c) / (1 + slope), ahead)
        join = torch.where(~on & usable[run], join, torch.inf)
        leave = torch.where(on, _first_ahead(-x / direction, torch.full_like(x, torch.inf), ahead), torch.inf)
        to_target = lam - target[run]
        step = torch.minimum(torch.minimum(join.amin(-1), leave.amin(-1)), to_target)
        x = x + step.unsqueeze(-1) * direction
        c = c - step.unsqueeze(-1) * slope
        going = step < to_target
        joins = going & (join.amin(-1) <= leave.amin(-1))
        new = torch.nn.functional.one_hot(join.argmin(-1), size).bool() & joins.unsqueeze(-1)
        gone = torch.nn.functional.one_hot(leave.argmin(-1), size).bool() & (going & ~joins).unsqueeze(-1)
        on = (on | new) & ~gone
        w[run] = torch.where(gone, torch.zeros_like(x), x)
        correlation[run], level[run], active[run] = c, lam - step, on
        signs[run] = torch.where(new, torch.sign(c), s) * on
        run = run[going]
    rhs = torch.where(active, flat_moment - target.unsqueeze(-1) * signs, torch.zeros_like(flat_moment))
    return _solve_on(flat_gram, rhs, active).reshape(moment.shape).to(moment.dtype)


def _solve_on(gram: Tensor, rhs: Tensor, active: Tensor) -> Tensor:
    """v with G_AA v_A = rhs_A on the active set A and v = 0 off it: (..., d)."""
    both = active.unsqueeze(-1) & active.unsqueeze(-2)
    system = torch.where(both, gram, torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device))
    solution = torch.linalg.solve(system, torch.where(active, rhs, torch.zeros_like(rhs)))
    return torch.where(active, solution, torch.zeros_like(solution))


def _first_ahead(a: Tensor, b: Tensor, floor: Tensor) -> Tensor:
    """Elementwise the smaller of a and b among those above ``floor`` (inf where neither is)."""
    a = torch.where(a > floor, a, torch.full_like(a, torch.inf))
    b = torch.where(b > floor, b, torch.full_like(b, torch.inf))
    return torch.minimum(a, b)


class Lasso(LinearLearner):
    """Lasso with penalty ``alpha`` (no intercept), every prefix from the cumulative statistics in one solve."""

    def __init__(self, alpha: float) -> None:
        self.alpha = check_number("Lasso.alpha", alpha, gt=0.0)
        self.name = f"lasso(alpha={self.alpha:g})"

    def weights(self, gram: Tensor, moment: Tensor, count: Tensor) -> Tensor:
        return lasso(gram, moment, count, self.alpha)

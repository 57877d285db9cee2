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

TIE_MARGIN = 1e-9  # d(|c_j| − λ)/d(−λ) above this: a tied coordinate's correlation would pass λ


def lasso(gram: Tensor, moment: Tensor, count: Tensor, alpha: float) -> Tensor:
    """gram: (..., d, d) = XᵀX (symmetric), moment: (..., d) = Xᵀy, count: (...) = k → w: (..., d), the Lasso
    solution of each system.

    The homotopy (LARS-Lasso) path in λ from max_j |b_j|, where w = 0, down to λ = kα: along it the active
    coordinates A keep |c_A| = λ for the correlations c = b − Gw, and w_A moves along G_AA⁻¹ s_A; a coordinate
    joins A when its |c_j| reaches λ and leaves when its weight crosses 0. The systems still on their path
    step together, each step exact to rounding (w is linear in λ between events), and a system leaves the
    batch with its w at λ = kα. Computed in float64 whatever the inputs' dtype (the path's event order is
    sensitive to rounding)."""
    size = moment.shape[-1]
    flat_gram, flat_moment = gram.reshape(-1, size, size).double(), moment.reshape(-1, size).double()
    target = (alpha * count).reshape(-1).double()  # (N,): λ at the end, kα
    usable = flat_gram.diagonal(dim1=-2, dim2=-1) > 0  # (N, d): a zero column never enters
    level = flat_moment.abs().amax(-1)  # λ where the path starts (w = 0, c = b)
    w = torch.zeros_like(flat_moment)  # w = 0 is the solution of the systems with kα ≥ that λ
    run = (level > target).nonzero().squeeze(-1)  # the systems still on their path, and their state:
    c, lam, x, tgt, use = flat_moment[run], level[run], w[run], target[run], usable[run]  # c = b − Gw, λ, w
    on = torch.nn.functional.one_hot(c.abs().argmax(-1), size).bool() & use  # the active set A
    s = torch.sign(c) * on  # and its signs
    for _ in range(8 * size + 8):
        if run.numel() == 0:
            break
        direction, slope = _path_direction(flat_gram, run, s, on)  # dw/d(−λ) (0 off A); dc/d(−λ) = −G·direction
        ahead = 1e-12 * lam.unsqueeze(-1)  # events closer than this are the one just taken
        gap = lam.unsqueeze(-1)
        join = _first_ahead((gap - c) / (1 - slope), (gap + c) / (1 + slope), ahead)
        # a coordinate tied with the active ones (|c_j| = λ, e.g. inputs in {−1, 1}) joins now if its |c_j| would
        # pass λ along this direction; one whose |c_j| stays at or below λ (an equal column) never has to
        tied = (((gap - c).abs() <= ahead) & (1 - slope > TIE_MARGIN)) | (
            ((gap + c).abs() <= ahead) & (1 + slope > TIE_MARGIN)
        )
        join = torch.where(~on & use, torch.where(tied, 0.0, join), torch.inf)
        leave = torch.where(on, _first_ahead(-x / direction, torch.full_like(x, torch.inf), ahead), torch.inf)
        (first_join, joiner), (first_leave, leaver) = join.min(-1), leave.min(-1)
        to_target = lam - tgt
        step = torch.minimum(torch.minimum(first_join, first_leave), to_target)
        x = x + step.unsqueeze(-1) * direction
        c = c - step.unsqueeze(-1) * slope
        going = step < to_target
        joins = going & (first_join <= first_leave)
        new = torch.nn.functional.one_hot(joiner, size).bool() & joins.unsqueeze(-1)
        gone = torch.nn.functional.one_hot(leaver, size).bool() & (going & ~joins).unsqueeze(-1)
        on = (on | new) & ~gone
        x = torch.where(gone, 0.0, x)
        s = torch.where(new, torch.sign(c), s) * on
        lam = lam - step
        if not bool(going.all()):  # systems at λ = kα leave the batch with their weights
            done = ~going
            w[run[done]] = x[done]
            run, c, lam, on, s, x, tgt, use = (v[going] for v in (run, c, lam, on, s, x, tgt, use))
    w[run] = x  # (none left unless the loop's bound was reached)
    return w.reshape(moment.shape).to(moment.dtype)


def _active_first(active: Tensor) -> tuple[Tensor, Tensor]:
    """(index (N, m), live (N, m)): each row's active coordinates first, in order (m = the largest active set,
    usually a few of the d), and which of the m are active (the rest pad)."""
    count = active.sum(-1, keepdim=True)
    m = max(int(count.max()), 1)
    position = torch.where(active, active.cumsum(-1) - 1, count + (~active).cumsum(-1) - 1)
    order = torch.arange(active.shape[-1], device=active.device).expand_as(position)
    index = torch.empty_like(position).scatter_(-1, position, order)[:, :m]
    return index, active.gather(-1, index)


def _solve_active(system: Tensor, rhs: Tensor, live: Tensor) -> Tensor:
    """v (N, m) with system v = rhs on the live coordinates, 0 on the padding: system (N, m, m), rhs (N, m); the
    padding's rows and columns are replaced by the identity, and G_AA, positive definite along the path, solved
    by Cholesky; a singular one (e.g. two equal input coordinates both active) gets the minimum-norm solution."""
    both = live.unsqueeze(-1) & live.unsqueeze(-2)
    system = torch.where(both, system, torch.eye(system.shape[-1], dtype=system.dtype, device=system.device))
    rhs = torch.where(live, rhs, 0.0)
    factor, info = torch.linalg.cholesky_ex(system)
    solution = torch.cholesky_solve(rhs.unsqueeze(-1), factor).squeeze(-1)
    singular = (info != 0).nonzero().squeeze(-1)
    if singular.numel():
        solution[singular] = (torch.linalg.pinv(system[singular], hermitian=True) @ rhs[singular].unsqueeze(-1))[..., 0]
    return torch.where(live, solution, 0.0)


def _path_direction(gram: Tensor, run: Tensor, signs: Tensor, active: Tensor) -> tuple[Tensor, Tensor]:
    """For the systems ``run`` (R,) of the symmetric gram (N, d, d) with active sets ``active`` (R, d) and their
    ``signs``: (direction, slope), both (R, d): the path's direction G_AA⁻¹ s_A on the active set (0 off it) and
    G·direction, from the active rows G_A· (R, m, d) alone (the active columns, transposed)."""
    index, live = _active_first(active)
    size = gram.shape[-1]
    picked = (run.unsqueeze(-1) * size + index).reshape(-1)
    rows = gram.reshape(-1, size).index_select(0, picked).view(len(run), -1, size)
    system = rows.gather(-1, index.unsqueeze(1).expand(-1, index.shape[-1], -1))  # G_AA: (R, m, m)
    part = _solve_active(system, signs.gather(-1, index), live)
    direction = torch.zeros_like(signs).scatter(-1, index, part)
    return direction, (part.unsqueeze(1) @ rows).squeeze(1)


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

"""The reference algorithms as pure batched functions of the data's sufficient statistics.

For a prompt (or prefix) with inputs X: (k, d) and labels y: (k,), the statistics are the Gram matrix
``gram = XᵀX: (..., d, d)``, the moment ``moment = Xᵀy: (..., d)`` and the count ``count = k: (...)``.
Every function returns weights ``w: (..., d)``; the prediction at a query x_q is x_qᵀw. Leading
dimensions are free, so one call serves a batch of prompts and every prefix length at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import torch
from torch import Tensor


def sufficient_statistics(xs: Tensor, ys: Tensor, prefixes: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """xs: (B, n, d), ys: (B, n) → gram (B, d, d), moment (B, d), count (B,).

    With ``prefixes=True`` the statistics of every prefix 1..n: gram (B, n, d, d), moment (B, n, d),
    count (B, n) (cumulative sums, one pass).
    """
    batch, n, _ = xs.shape
    if not prefixes:
        gram = xs.transpose(-1, -2) @ xs
        moment = torch.einsum("bkd,bk->bd", xs, ys)
        return gram, moment, xs.new_full((batch,), float(n))
    gram = torch.cumsum(xs.unsqueeze(-1) * xs.unsqueeze(-2), dim=1)  # (B, n, d, d)
    moment = torch.cumsum(xs * ys.unsqueeze(-1), dim=1)  # (B, n, d)
    count = torch.arange(1, n + 1, dtype=xs.dtype, device=xs.device).expand(batch, n)
    return gram, moment, count


def least_squares(gram: Tensor, moment: Tensor) -> Tensor:
    """Minimum-norm least squares w = (XᵀX)⁺Xᵀy = X⁺y."""
    return (torch.linalg.pinv(gram, hermitian=True) @ moment.unsqueeze(-1)).squeeze(-1)


def ridge(gram: Tensor, moment: Tensor, alpha: float) -> Tensor:
    """Ridge regression w = (XᵀX + αI)⁻¹Xᵀy (α is not scaled by k)."""
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + alpha * eye, moment.unsqueeze(-1)).squeeze(-1)


def gradient_descent(
    gram: Tensor, moment: Tensor, count: Tensor, steps: int, lr: float, preconditioner: Tensor | None = None
) -> Tensor:
    """``steps`` steps of (preconditioned) GD on (1/2k)‖y − Xw‖² from w₀ = 0:
    w ← w + (lr/k)·P·Xᵀ(y − Xw), P = I or ``preconditioner: (d, d)``."""
    return last(_gradient_descent_iterates(gram, moment, count, steps, lr, preconditioner))


def gradient_descent_path(
    gram: Tensor, moment: Tensor, count: Tensor, steps: int, lr: float, preconditioner: Tensor | None = None
) -> Tensor:
    """Every iterate w₀ = 0, w₁, …, w_steps of :func:`gradient_descent`: (steps + 1, ..., d)."""
    return torch.stack(list(_gradient_descent_iterates(gram, moment, count, steps, lr, preconditioner)))


def _gradient_descent_iterates(
    gram: Tensor, moment: Tensor, count: Tensor, steps: int, lr: float, preconditioner: Tensor | None
) -> Iterator[Tensor]:
    w = torch.zeros_like(moment)
    yield w
    scale = (lr / count).unsqueeze(-1)
    for _ in range(steps):
        step = moment - (gram @ w.unsqueeze(-1)).squeeze(-1)
        if preconditioner is not None:
            step = step @ preconditioner.T
        w = w + scale * step
        yield w


def newton_schulz(gram: Tensor, moment: Tensor, steps: int) -> Tensor:
    """Newton–Schulz iterations for S⁻¹, S = XᵀX (Fu et al. 2024): M₀ = αS with α = 1/‖SSᵀ‖_F (the authors'
    code; it makes every eigenvalue of αS² at most 1, so M_k → S⁺ for every X), M_{k+1} = 2M_k − M_k S M_k;
    returns w = M_steps Xᵀy. A prompt whose X is zero gets w = 0."""
    return (last(_newton_schulz_inverses(gram, steps)) @ moment.unsqueeze(-1)).squeeze(-1)


def newton_schulz_path(gram: Tensor, moment: Tensor, steps: int) -> Tensor:
    """Every iterate w_k = M_k Xᵀy, k = 0..steps, of :func:`newton_schulz`: (steps + 1, ..., d)."""
    return torch.stack([(m @ moment.unsqueeze(-1)).squeeze(-1) for m in _newton_schulz_inverses(gram, steps)])


def _newton_schulz_inverses(gram: Tensor, steps: int) -> Iterator[Tensor]:
    """M₀, …, M_steps: (..., d, d) each."""
    norm = torch.linalg.matrix_norm(gram @ gram.transpose(-1, -2))  # (...)
    alpha = torch.where(norm > 0, 1 / norm.clamp_min(torch.finfo(gram.dtype).tiny), torch.zeros_like(norm))
    inverse = alpha[..., None, None] * gram
    yield inverse
    for _ in range(steps):
        inverse = 2 * inverse - inverse @ gram @ inverse
        yield inverse


def last(iterates: Iterator[Tensor]) -> Tensor:
    """The final element of an iterator of iterates, keeping none of the others."""
    return deque(iterates, maxlen=1)[0]


def averaging(moment: Tensor, count: Tensor) -> Tensor:
    """ŵ = (1/k) Σ y_i x_i (one GD step with lr = 1)."""
    return moment / count.unsqueeze(-1)


def k_nearest(xs: Tensor, ys: Tensor, xq: Tensor, k: int, prefixes: bool = False) -> Tensor:
    """Mean label of the k context points nearest (Euclidean) to each query.

    xs: (B, n, d), ys: (B, n), xq: (B, m, d) → (B, m); with ``prefixes=True`` → (B, n, m), where prefix
    p uses min(k, p) neighbours among its first p points.
    """
    dist = torch.cdist(xq, xs)  # (B, m, n)
    n = xs.shape[1]
    if not prefixes:
        kk = min(k, n)
        idx = dist.topk(kk, dim=-1, largest=False).indices  # (B, m, kk)
        return torch.gather(ys.unsqueeze(1).expand_as(dist), -1, idx).mean(-1)
    position = torch.arange(n, device=xs.device)
    outside = position.view(1, n) > position.view(n, 1)  # (prefix p-1, point i): i not in prefix
    masked = dist.unsqueeze(1).masked_fill(outside.view(1, n, 1, n), float("inf"))  # (B, n, m, n)
    kk = min(k, n)
    nearest = masked.topk(kk, dim=-1, largest=False)
    labels = torch.gather(ys.view(-1, 1, 1, n).expand_as(masked), -1, nearest.indices)  # (B, n, m, kk)
    valid = torch.isfinite(nearest.values).to(ys.dtype)
    return (labels * valid).sum(-1) / valid.sum(-1)

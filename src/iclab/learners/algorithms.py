"""The reference algorithms as pure batched functions of the data's sufficient statistics.

For a prompt (or prefix) with inputs X: (k, d) and labels y: (k,), the statistics are the Gram matrix
``gram = XᵀX: (..., d, d)``, the moment ``moment = Xᵀy: (..., d)`` and the count ``count = k: (...)``.
Every function returns weights ``w: (..., d)``; the prediction at a query x_q is x_qᵀw. Leading
dimensions are free, so one call serves a batch of prompts and every prefix length at once.
"""

from __future__ import annotations

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
    w = torch.zeros_like(moment)
    scale = (lr / count).unsqueeze(-1)
    for _ in range(steps):
        step = moment - (gram @ w.unsqueeze(-1)).squeeze(-1)
        if preconditioner is not None:
            step = step @ preconditioner.T
        w = w + scale * step
    return w


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

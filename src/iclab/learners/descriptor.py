"""Descriptor-aware learners for mean-shifted regression (Huang & Ge 2025; the theory is
:mod:`iclab.theory.descriptors`).

Each prompt draws a task mean μ; x_i, x_q ~ N(μ, Λ), y = wᵀx + ε, and the prompt carries a descriptor
s: (B, k): μ itself (``task.descriptor=mean``, k = d) or the one-hot index of μ among K fixed means
M: (K, d) (``onehot``, k = K, μ = Mᵀs). Both learners read it; prompts without one are refused.

- :class:`CentredGD`: one GD step from w = 0 on the centred inputs x_i − μ, predicted at the raw query,
  ŷ = x_qᵀ (lr/k) Σ_i y_i (x_i − μ) (k the number of context examples). With lr = 1 and Λ = I this is the
  n → ∞ optimum of a one-layer LSA with the descriptor (the standardising predictor, loss σ²). Centring the
  query too would predict wᵀ(x_q − μ) and lose wᵀμ.
- :class:`Bilinear`: the one-layer LSA's prediction ŷ = h_fᵀ B f_q with features f = (x, s),
  h_f = (1/k) Σ_i y_i f_i, for a fixed B: (d + k, d + k); the spec ``descriptor_optimum`` takes the exact
  finite-n global minimiser B* of :func:`iclab.theory.descriptors.task_problem`.

The math is in the pure functions :func:`centred_gd_predictions` and :func:`bilinear_predictions`; like the
model (which divides by the number of context tokens), a prefix of k examples uses the same B or lr with 1/k.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from iclab.errors import UserError
from iclab.learners.base import Learner
from iclab.validate import check_number


def _moments(features: Tensor, ys: Tensor, prefixes: bool) -> Tensor:
    """(1/k) Σ_{i ≤ k} y_i f_i for f: (B, n, F): (B, F) for k = n, or (B, n, F) for every prefix k = 1..n."""
    weighted = features * ys.unsqueeze(-1)
    if not prefixes:
        return weighted.mean(1)
    count = torch.arange(1, features.shape[1] + 1, dtype=features.dtype, device=features.device)
    return torch.cumsum(weighted, dim=1) / count.view(1, -1, 1)


def centred_gd_predictions(xs: Tensor, ys: Tensor, xq: Tensor, mu: Tensor, lr: float, prefixes: bool = False) -> Tensor:
    """ŷ = x_qᵀ (lr/k) Σ_i y_i (x_i − μ): xs (B, n, d), ys (B, n), xq (B, m, d), mu (B, d) → (B, m), or
    (B, n, m) with ``prefixes=True`` (every prefix k = 1..n)."""
    step = lr * _moments(xs - mu.unsqueeze(1), ys, prefixes)  # (B, d) or (B, n, d)
    if not prefixes:
        return torch.einsum("bmd,bd->bm", xq, step)
    return torch.einsum("bmd,bkd->bkm", xq, step)


def bilinear_predictions(
    xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor, b: Tensor, prefixes: bool = False
) -> Tensor:
    """ŷ = h_fᵀ B f_q with f = (x, s), h_f = (1/k) Σ_i y_i f_i: xs (B, n, d), ys (B, n), xq (B, m, d),
    descriptor s (B, k), b (d + k, d + k) → (B, m), or (B, n, m) with ``prefixes=True``."""
    n, m = xs.shape[1], xq.shape[1]
    side = descriptor.unsqueeze(1)
    context = torch.cat([xs, side.expand(-1, n, -1)], dim=-1)  # (B, n, F)
    queries = torch.cat([xq, side.expand(-1, m, -1)], dim=-1)  # (B, m, F)
    keyed = queries @ b.T  # (B, m, F): rows B f_q
    h = _moments(context, ys, prefixes)  # (B, F) or (B, n, F)
    if not prefixes:
        return torch.einsum("bf,bmf->bm", h, keyed)
    return torch.einsum("bkf,bmf->bkm", h, keyed)


def _need_descriptor(name: str, descriptor: Tensor | None, batch: int, length: int) -> Tensor:
    if descriptor is None:
        raise UserError(
            f"{name} needs prompts with a descriptor (task.descriptor=mean or onehot); these prompts have none"
        )
    if descriptor.shape != (batch, length):
        raise UserError(f"{name} needs a descriptor of shape ({batch}, {length}), got {tuple(descriptor.shape)}")
    return descriptor


class CentredGD(Learner):
    """One GD step on the centred inputs: ŷ = x_qᵀ (lr/k) Σ_i y_i (x_i − μ), with μ the descriptor (``means``
    None) or Mᵀs for a one-hot descriptor s and ``means`` M: (K, d)."""

    def __init__(self, lr: float, means: Tensor | np.ndarray | None = None) -> None:
        self.lr = check_number("CentredGD.lr", lr, gt=0.0)
        self.means = None if means is None else torch.as_tensor(means, dtype=torch.float64)
        if self.means is not None and self.means.ndim != 2:
            raise ValueError(f"CentredGD.means must be a (K, d) matrix, got shape {tuple(self.means.shape)}")
        self.name = f"centred_gd(lr={self.lr:.4g})"

    def task_mean(self, xs: Tensor, descriptor: Tensor | None) -> Tensor:
        """μ: (B, d) from the descriptor (B, d) or the one-hot (B, K)."""
        batch, _, d = xs.shape
        if self.means is None:
            return _need_descriptor("centred_gd", descriptor, batch, d)
        if self.means.shape[1] != d:
            raise UserError(f"centred_gd: the task's means are {self.means.shape[1]}-dimensional, the prompts d={d}")
        onehot = _need_descriptor("centred_gd", descriptor, batch, self.means.shape[0])
        return onehot @ self.means.to(dtype=xs.dtype, device=xs.device)

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        return centred_gd_predictions(xs, ys, xq, self.task_mean(xs, descriptor), self.lr)

    def predict_prefixes(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        return centred_gd_predictions(xs, ys, xq, self.task_mean(xs, descriptor), self.lr, prefixes=True)


class Bilinear(Learner):
    """A one-layer LSA's prediction ŷ = h_fᵀ B f_q over the features f = (x, descriptor), for a fixed
    B: (d + k, d + k) (:mod:`iclab.theory.quadratic`'s convention); ``loss`` may carry its exact loss."""

    def __init__(self, b: Tensor | np.ndarray, name: str = "bilinear", loss: float | None = None) -> None:
        self.b = torch.as_tensor(np.asarray(b, dtype=np.float64))
        if self.b.ndim != 2 or self.b.shape[0] != self.b.shape[1]:
            raise ValueError(f"Bilinear.b must be a square (F, F) matrix, got shape {tuple(self.b.shape)}")
        self.name, self.loss = name, loss

    def _side(self, xs: Tensor, descriptor: Tensor | None) -> Tensor:
        length = self.b.shape[0] - xs.shape[2]
        if length <= 0:
            raise UserError(
                f"{self.name}: B is {self.b.shape[0]} × {self.b.shape[0]}, the prompts have d={xs.shape[2]}"
            )
        return _need_descriptor(self.name, descriptor, xs.shape[0], length)

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        side = self._side(xs, descriptor)
        return bilinear_predictions(xs, ys, xq, side, self.b.to(dtype=xs.dtype, device=xs.device))

    def predict_prefixes(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        side = self._side(xs, descriptor)
        return bilinear_predictions(xs, ys, xq, side, self.b.to(dtype=xs.dtype, device=xs.device), prefixes=True)

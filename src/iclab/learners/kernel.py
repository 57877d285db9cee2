"""Kernel learners (Cheng, Chen, Sra 2024): functional gradient descent, kernel ridge, the GP posterior.

Each holds a :class:`iclab.kernels.Kernel` (or takes its name: ``FunctionalGD("relu", 3, 0.5)``) and works
on Gram blocks K_cc = K(xs, xs): (B, n, n) and K_qc = K(xq, xs): (B, m, n).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from iclab.kernels import Kernel, as_kernel
from iclab.learners.algorithms import last, without_non_finite
from iclab.learners.base import Learner
from iclab.validate import check_number


def functional_gd(k_cc: Tensor, k_qc: Tensor, ys: Tensor, steps: int, lr: float) -> Tensor:
    """f₀ = 0, f_{ℓ+1} = f_ℓ + (lr/n) Σ_s K(·, x_s)(y_s − f_ℓ(x_s)); returns f_L at the queries (B, m)."""
    return last(_functional_gd_iterates(k_cc, k_qc, ys, steps, lr, None))


def functional_gd_path(
    k_cc: Tensor, k_qc: Tensor, ys: Tensor, steps: int, lr: float, count: Tensor | None = None
) -> Tensor:
    """f₀, …, f_steps of functional GD at the queries: (steps + 1, ..., m), for k_cc: (..., n, n),
    k_qc: (..., m, n), ys: (..., n). ``count: (...)`` replaces n (Gram blocks that are zero outside a
    prefix then give that prefix's path)."""
    return torch.stack(list(_functional_gd_iterates(k_cc, k_qc, ys, steps, lr, count)))


def _functional_gd_iterates(
    k_cc: Tensor, k_qc: Tensor, ys: Tensor, steps: int, lr: float, count: Tensor | None
) -> Iterator[Tensor]:
    """The context residuals r_ℓ = y − f_ℓ(X) follow r_{ℓ+1} = r_ℓ − (lr/n) K_cc r_ℓ, and
    f_L(x_q) = (lr/n) Σ_{ℓ<L} K_qc r_ℓ; yields f_ℓ at the queries (..., m)."""
    count = ys.new_full(ys.shape[:-1], float(ys.shape[-1])) if count is None else count
    scale = (lr / count)[..., None, None]
    residual = ys.unsqueeze(-1)  # (..., n, 1)
    prediction = torch.zeros_like(k_qc[..., :1])  # (..., m, 1)
    yield prediction.squeeze(-1)
    for _ in range(steps):
        prediction = prediction + scale * (k_qc @ residual)
        residual = residual - scale * (k_cc @ residual)
        yield prediction.squeeze(-1)


def kernel_ridge(k_cc: Tensor, k_qc: Tensor, ys: Tensor, alpha: float) -> Tensor:
    """k_qᵀ (K + αI)⁺ y: (B, m) for k_cc: (B, n, n), k_qc: (B, m, n), ys: (B, n). The pseudo-inverse (of the
    symmetric K + αI, eigenvalues below n·eps of the largest count as zero) never raises: with a singular K
    and a tiny α it gives the minimum-norm interpolant instead of a linear-algebra error, and a prompt with a
    non-finite entry gives NaN."""
    eye = torch.eye(k_cc.shape[-1], dtype=k_cc.dtype, device=k_cc.device)

    def solve(k_cc: Tensor, k_qc: Tensor, ys: Tensor) -> Tensor:
        return (k_qc @ torch.linalg.pinv(k_cc + alpha * eye, hermitian=True) @ ys.unsqueeze(-1)).squeeze(-1)

    return without_non_finite(solve, k_cc, k_qc, ys)


class FunctionalGD(Learner):
    """``steps`` steps of functional gradient descent with step ``lr`` in the RKHS of ``kernel``."""

    def __init__(self, kernel: Kernel | str, steps: int, lr: float) -> None:
        self.kernel = as_kernel(kernel)
        self.steps = check_number("FunctionalGD.steps", steps, ge=0, integer=True)
        self.lr = check_number("FunctionalGD.lr", lr, gt=0.0)
        self.name = f"functional_gd({kernel}, steps={self.steps}, lr={self.lr:.4g})"

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        return functional_gd(self.kernel(xs, xs), self.kernel(xq, xs), ys, self.steps, self.lr)


class KernelRidge(Learner):
    """Kernel ridge regression k_qᵀ (K + αI)⁻¹ y (a pseudo-inverse where K + αI is singular, see
    :func:`kernel_ridge`)."""

    def __init__(self, kernel: Kernel | str, alpha: float) -> None:
        self.kernel, self.alpha = as_kernel(kernel), check_number("KernelRidge.alpha", alpha, gt=0.0)
        self.name = f"kernel_ridge({kernel}, alpha={self.alpha:g})"

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        return kernel_ridge(self.kernel(xs, xs), self.kernel(xq, xs), ys, self.alpha)


def psd_projection(gram: Tensor) -> Tensor:
    """The nearest positive semi-definite matrix (negative eigenvalues set to 0): (..., N, N)."""
    eigenvalues, vectors = torch.linalg.eigh(gram)
    return (vectors * eigenvalues.clamp_min(0).unsqueeze(-2)) @ vectors.transpose(-1, -2)


class GPPosterior(Learner):
    """The posterior mean of a GP with ``kernel`` and noise σ given the context labels: the Bayes-optimal
    predictor (squared loss) for iclab's GP tasks. Like the sampler, it projects the joint Gram matrix of all
    the prompt's points (context and queries) onto the PSD cone, P (this only matters for the ReLU kernel), and
    conditions on it: Σ_qc (Σ_cc + σ²I)⁺ y; with σ = 0 the pseudo-inverse gives the minimum-norm interpolant.

    ``predict_prefixes`` conditions on the first k labels under that same P (the sub-blocks P[:k, :k] and
    P[q, :k], every prefix in one batched pseudo-inverse): the Bayes predictor at prefix k of the prompts the
    sampler drew, whose covariance depends on all their points. For PSD kernels (linear, exp) P is the Gram
    matrix, so prefix k equals ``predict`` on the first k points; for the ReLU kernel projecting each prefix's
    own Gram matrix instead would condition on a covariance the labels were not drawn from (at σ = 0 its
    error at short prefixes is hundreds of times the prior variance)."""

    def __init__(self, kernel: Kernel | str, noise_std: float = 0.0) -> None:
        self.kernel = as_kernel(kernel)
        self.noise_std = check_number("GPPosterior.noise_std", noise_std, ge=0.0)
        self.name = f"gp_posterior({kernel}, noise={self.noise_std:g})"

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        return without_non_finite(lambda *args: self._posterior(*args, prefixes=False), xs, ys, xq).to(ys.dtype)

    def predict_prefixes(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        """(B, n, m): prefix k conditions on y_1..y_k with the blocks of the whole prompt's P (see the class)."""
        return without_non_finite(lambda *args: self._posterior(*args, prefixes=True), xs, ys, xq).to(ys.dtype)

    def _posterior(self, xs: Tensor, ys: Tensor, xq: Tensor, prefixes: bool) -> Tensor:
        """float64 posterior means (B, m), or (B, n, m) after every prefix."""
        n = xs.shape[1]
        points = torch.cat([xs, xq], dim=1).double()
        joint = psd_projection(self.kernel(points, points))  # (B, n+m, n+m)
        eye = torch.eye(n, dtype=joint.dtype, device=joint.device)
        context, cross = joint[:, :n, :n] + self.noise_std**2 * eye, joint[:, n:, :n]  # (B, n, n), (B, m, n)
        labels = ys.double().unsqueeze(-1)  # (B, n, 1)
        if not prefixes:
            return (cross @ torch.linalg.pinv(context, hermitian=True) @ labels).squeeze(-1)
        inside = torch.tril(torch.ones(n, n, dtype=joint.dtype, device=joint.device))  # (prefix, point)
        blocks = context.unsqueeze(1) * (inside.unsqueeze(-1) * inside.unsqueeze(-2))  # (B, n, n, n), 0 outside
        inverse = torch.linalg.pinv(blocks, hermitian=True)  # the pseudo-inverse of each prefix's block, 0 outside
        return (cross.unsqueeze(1) @ inverse @ labels.unsqueeze(1)).squeeze(-1)  # (B, n, m)

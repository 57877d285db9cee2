"""Gaussian-process function prompts (Cheng, Chen, Sra 2024): the labels of the n context points and the
m queries are drawn jointly, y ~ N(0, K + σ²I) with K_ij = h(x_iᵀx_j / s) (see :mod:`iclab.kernels`).

x ~ N(0, I_d) or uniform on the unit sphere S^{d-1}. The ReLU "kernel" relu(xᵀx') is not positive
semi-definite for every point set, so each Gram matrix is projected onto the PSD cone (negative eigenvalues
set to 0) before sampling; for the linear and exponential kernels this changes nothing but rounding.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from iclab.config import TaskConfig
from iclab.kernels import Kernel
from iclab.learners import GPPosterior, Learner
from iclab.prompts import Prompts
from iclab.registry import TASKS
from iclab.tasks.base import Sampler


class GPTaskConfig(TaskConfig):
    """Gaussian-process functions (``task.name=gp``)."""

    name: Literal["gp"] = Field("gp", description="task family")
    kernel: Literal["linear", "relu", "exp"] = Field("linear", description="covariance kernel h(xᵀx'/s)")
    kernel_scale: float = Field(1.0, gt=0.0, description="the kernel's scale s")
    x_dist: Literal["gaussian", "sphere"] = Field("gaussian", description="x ~ N(0, I) or uniform on S^{d-1}")


class GPTask(Sampler):
    """Sampler of GP-function prompts; nothing is fixed across prompts, so ``seed`` is unused."""

    cfg: GPTaskConfig

    def __init__(self, cfg: GPTaskConfig, seed: int = 0) -> None:
        super().__init__(cfg, seed)
        self.kernel = Kernel(cfg.kernel, cfg.kernel_scale)

    @property
    def x_on_sphere(self) -> bool:
        return self.cfg.x_dist == "sphere"

    def reference_learner(self) -> Learner:
        """The GP posterior mean with the task's kernel and noise: the Bayes predictor."""
        return GPPosterior(self.kernel, self.cfg.noise_std)

    def sample(
        self,
        batch: int,
        generator: torch.Generator,
        *,
        n: int | None = None,
        d_active: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Prompts:
        """Draw ``batch`` prompts: xs (B, n, d), ys (B, n), xq (B, m, d), yq (B, m); w is None."""
        cfg = self.cfg
        n = cfg.n if n is None else n
        total = n + cfg.n_queries
        x = torch.randn(batch, total, cfg.d, generator=generator, dtype=dtype)
        if d_active is not None and d_active < cfg.d:
            x[..., d_active:] = 0.0
        if cfg.x_dist == "sphere":
            x = x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        gram = self.kernel(x.double(), x.double())  # (B, N, N), float64 for the eigendecomposition
        eigenvalues, vectors = torch.linalg.eigh(gram)  # the PSD projection keeps λ ≥ 0 (GPPosterior does too)
        g = torch.randn(batch, total, generator=generator, dtype=torch.float64)
        f = (vectors @ (eigenvalues.clamp_min(0).sqrt() * g).unsqueeze(-1)).squeeze(-1)  # (B, N)
        y = f.to(dtype) + cfg.noise_std * torch.randn(batch, total, generator=generator, dtype=dtype)
        return Prompts(xs=x[:, :n], ys=y[:, :n], xq=x[:, n:], yq=y[:, n:], descriptor=None, w=None)


TASKS.register("gp", GPTaskConfig, GPTask, "Gaussian-process functions, labels y ~ N(0, K + σ²I)")

"""Sparse linear regression (Garg et al. 2022): y = wᵀx + ε with w ~ N(0, I) kept on k random coordinates
(drawn per prompt among the active ones) and zero elsewhere; x ~ N(0, I_d)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from iclab.config import TaskConfig
from iclab.learners import Lasso, Learner
from iclab.prompts import Prompts
from iclab.registry import TASKS
from iclab.tasks.base import Sampler, gaussian_inputs, noisy_prompts


class SparseLinearConfig(TaskConfig):
    """Sparse linear regression (``task.name=sparse_linear``)."""

    name: Literal["sparse_linear"] = Field("sparse_linear", description="task family")
    sparsity: int = Field(3, ge=1, description="k, the non-zero coordinates of w")

    @model_validator(mode="after")
    def _fits(self) -> SparseLinearConfig:
        if self.sparsity > self.d:
            raise ValueError(f"task.sparsity must be <= task.d={self.d}, got {self.sparsity}")
        return self


class SparseLinearTask(Sampler):
    """Sampler of sparse linear prompts; ``w`` comes with them."""

    cfg: SparseLinearConfig

    def sample(self, batch, generator, *, n=None, d_active=None, dtype=torch.float32) -> Prompts:
        cfg = self.cfg
        n = cfg.n if n is None else n
        active = cfg.d if d_active is None else min(d_active, cfg.d)
        w = torch.randn(batch, cfg.d, generator=generator, dtype=dtype)
        order = torch.rand(batch, active, generator=generator).argsort(-1)  # a random ranking of the active dims
        keep = torch.zeros(batch, cfg.d, dtype=torch.bool)
        keep[:, :active] = order < min(cfg.sparsity, active)
        w = w * keep
        x = gaussian_inputs(batch, n + cfg.n_queries, cfg.d, generator, dtype, d_active)
        y = (x @ w.unsqueeze(-1)).squeeze(-1)
        return noisy_prompts(x, y, n, cfg.noise_std, generator, w=w)

    def reference_learner(self) -> Learner:
        """The Lasso with α = 0.01 (Garg et al.'s best α on this task)."""
        return Lasso(0.01)

    def zero_error(self) -> float:
        return self.cfg.sparsity + self.cfg.noise_std**2


TASKS.register("sparse_linear", SparseLinearConfig, SparseLinearTask, "y = wᵀx + ε, w with k non-zero entries")

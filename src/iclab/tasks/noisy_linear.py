"""Noisy linear regression as Garg et al. train it: y = wᵀx + ε with x, w ~ N(0, I_d) and label noise
ε ~ N(0, σ²), σ = 1 unless set (the linear family's defaults are noise-free)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from iclab.config import TaskConfig
from iclab.learners import Learner, Ridge
from iclab.prompts import Prompts
from iclab.registry import TASKS
from iclab.tasks.base import Sampler, gaussian_inputs, noisy_prompts


class NoisyLinearConfig(TaskConfig):
    """Noisy linear regression (``task.name=noisy_linear``)."""

    name: Literal["noisy_linear"] = Field("noisy_linear", description="task family")
    noise_std: float = Field(1.0, ge=0.0, description="label noise std σ (context and query labels)")


class NoisyLinearTask(Sampler):
    """Sampler of noisy linear prompts; ``w`` comes with them."""

    cfg: NoisyLinearConfig

    def sample(self, batch, generator, *, n=None, d_active=None, dtype=torch.float32) -> Prompts:
        cfg = self.cfg
        n = cfg.n if n is None else n
        w = torch.randn(batch, cfg.d, generator=generator, dtype=dtype)
        x = gaussian_inputs(batch, n + cfg.n_queries, cfg.d, generator, dtype, d_active)
        y = (x @ w.unsqueeze(-1)).squeeze(-1)
        return noisy_prompts(x, y, n, cfg.noise_std, generator, w=w)

    def reference_learner(self) -> Learner:
        """Ridge with α = σ²: the posterior mean of w ~ N(0, I), the Bayes predictor."""
        return Ridge(self.cfg.noise_std**2 or 1e-3)

    def zero_error(self) -> float:
        return self.cfg.d + self.cfg.noise_std**2


TASKS.register("noisy_linear", NoisyLinearConfig, NoisyLinearTask, "y = wᵀx + ε with σ = 1 by default")

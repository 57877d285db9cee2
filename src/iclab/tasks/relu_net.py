"""Two-layer ReLU networks (Garg et al. 2022): f(x) = Σ_{i≤h} a_i relu(u_iᵀx) with u_i ~ N(0, I_d) and
a_i ~ N(0, 2/h) drawn per prompt (h = 100), x ~ N(0, I_d); y = f(x) + ε. E f(x)² = d."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from iclab.config import TaskConfig
from iclab.learners import FittedNet, Learner
from iclab.prompts import Prompts
from iclab.registry import TASKS
from iclab.tasks.base import Sampler, gaussian_inputs, noisy_prompts


class ReluNetConfig(TaskConfig):
    """Random two-layer ReLU networks (``task.name=relu_net``)."""

    name: Literal["relu_net"] = Field("relu_net", description="task family")
    hidden: int = Field(100, ge=1, le=100_000, description="h, the network's hidden units")


class ReluNetTask(Sampler):
    """Sampler of two-layer ReLU network prompts."""

    cfg: ReluNetConfig

    def sample(self, batch, generator, *, n=None, d_active=None, dtype=torch.float32) -> Prompts:
        cfg = self.cfg
        n = cfg.n if n is None else n
        first = torch.randn(batch, cfg.d, cfg.hidden, generator=generator, dtype=dtype)  # u_i as columns
        second = torch.randn(batch, cfg.hidden, generator=generator, dtype=dtype) * (2 / cfg.hidden) ** 0.5
        x = gaussian_inputs(batch, n + cfg.n_queries, cfg.d, generator, dtype, d_active)
        y = (torch.relu(x @ first) * second.unsqueeze(1)).sum(-1)
        return noisy_prompts(x, y, n, cfg.noise_std, generator)

    def reference_learner(self) -> Learner:
        """A width-h ReLU network fitted to the context by Adam (Garg et al.'s baseline)."""
        return FittedNet(hidden=self.cfg.hidden)

    def zero_error(self) -> float:
        return self.cfg.d + self.cfg.noise_std**2


TASKS.register("relu_net", ReluNetConfig, ReluNetTask, "y = Σ a_i relu(u_iᵀx) + ε, a random two-layer network")

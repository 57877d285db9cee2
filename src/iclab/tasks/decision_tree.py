"""Decision trees (Garg et al. 2022): a full binary tree of the given depth per prompt; each internal node
tests one coordinate of x (drawn uniformly among the active ones) against 0 (x_j > 0: right child), each leaf
holds a value ~ N(0, 1); x ~ N(0, I_d), y = the leaf x reaches + ε."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from iclab.config import TaskConfig
from iclab.learners import Learner, greedy_tree
from iclab.prompts import Prompts
from iclab.registry import TASKS
from iclab.tasks.base import Sampler, gaussian_inputs, noisy_prompts


class DecisionTreeConfig(TaskConfig):
    """Random decision trees (``task.name=decision_tree``)."""

    name: Literal["decision_tree"] = Field("decision_tree", description="task family")
    depth: int = Field(4, ge=1, le=20, description="the tree's depth (2^depth leaves)")


def tree_values(x: torch.Tensor, features: torch.Tensor, values: torch.Tensor, depth: int) -> torch.Tensor:
    """x: (B, N, d), features: (B, 2^depth − 1) the coordinate each internal node tests (heap order: node i
    has children 2i + 1, 2i + 2), values: (B, 2^depth) the leaves → the leaf each point reaches: (B, N)."""
    node = torch.zeros(x.shape[:2], dtype=torch.long)
    for _ in range(depth):
        tested = torch.gather(x, -1, torch.gather(features, 1, node).unsqueeze(-1)).squeeze(-1)  # (B, N)
        node = 2 * node + 1 + (tested > 0).long()
    return torch.gather(values, 1, node - (2**depth - 1))


class DecisionTreeTask(Sampler):
    """Sampler of decision-tree prompts."""

    cfg: DecisionTreeConfig

    def sample(self, batch, generator, *, n=None, d_active=None, dtype=torch.float32) -> Prompts:
        cfg = self.cfg
        n = cfg.n if n is None else n
        active = cfg.d if d_active is None else min(d_active, cfg.d)
        features = torch.randint(active, (batch, 2**cfg.depth - 1), generator=generator)
        values = torch.randn(batch, 2**cfg.depth, generator=generator, dtype=dtype)
        x = gaussian_inputs(batch, n + cfg.n_queries, cfg.d, generator, dtype, d_active)
        y = tree_values(x, features, values, cfg.depth)
        return noisy_prompts(x, y, n, cfg.noise_std, generator)

    def reference_learner(self) -> Learner:
        """A greedy CART tree fitted to the context (Garg et al.'s baseline; needs scikit-learn)."""
        return greedy_tree()

    def zero_error(self) -> float:
        return 1.0 + self.cfg.noise_std**2


TASKS.register("decision_tree", DecisionTreeConfig, DecisionTreeTask, "y = a random depth-4 decision tree of x")

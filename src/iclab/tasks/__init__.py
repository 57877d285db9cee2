"""Prompt samplers. ``make_task(cfg.task, seed)`` builds the sampler a config names."""

from __future__ import annotations

from iclab.config import TaskConfig
from iclab.tasks.gp import GPTask
from iclab.tasks.linear import LinearTask

Task = LinearTask | GPTask  # every family has d, n, descriptor_dim and sample(batch, generator, …)

TASKS = {"linear": LinearTask, "gp": GPTask}


def make_task(cfg: TaskConfig, seed: int = 0) -> Task:
    """The sampler for ``cfg.name``; fixed random parts (rotation, means) are drawn from ``seed``."""
    return TASKS[cfg.name](cfg, seed)


__all__ = ["GPTask", "LinearTask", "Task", "make_task"]

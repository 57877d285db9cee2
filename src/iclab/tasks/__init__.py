"""Prompt samplers. ``make_task(cfg.task, seed)`` builds the sampler a config names."""

from __future__ import annotations

from iclab.config import TaskConfig
from iclab.tasks.linear import LinearTask

Task = LinearTask  # the only family so far; later families share ``sample(batch, generator, …)``

TASKS = {"linear": LinearTask}


def make_task(cfg: TaskConfig, seed: int = 0) -> Task:
    """The sampler for ``cfg.name``; fixed random parts (rotation, means) are drawn from ``seed``."""
    return TASKS[cfg.name](cfg, seed)


__all__ = ["LinearTask", "Task", "make_task"]

"""Task families (one file each, registered in :data:`iclab.registry.TASKS`): ``make_task(cfg.task, seed)``
builds the sampler a config names.

A new family is one file holding its config class (a :class:`iclab.config.TaskConfig` subclass with
``name: Literal["<name>"]``), its :class:`Sampler` subclass, and ``TASKS.register(name, config, sampler)``;
plus one line in the registry's built-ins (or a call to ``register`` from anywhere, e.g. a plug-in).
"""

from __future__ import annotations

from iclab.config import TaskConfig
from iclab.registry import TASKS
from iclab.tasks.base import Sampler

Task = Sampler  # every family's sampler


def make_task(cfg: TaskConfig, seed: int = 0) -> Sampler:
    """The sampler of the family ``cfg.name``; fixed random parts (rotation, means) are drawn from ``seed``."""
    return TASKS.get(cfg.name).build(cfg, seed)


__all__ = ["Sampler", "Task", "make_task"]

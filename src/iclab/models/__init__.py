"""Models trained on prompts; ``build_model(cfg.model, task, generator)`` makes the one a config names."""

from __future__ import annotations

import torch

from iclab.config import ModelConfig
from iclab.models.hooks import HookPoint, hook_names, run_with_cache
from iclab.models.lsa import LSA, LSAShape
from iclab.tasks import Task


def build_model(cfg: ModelConfig, task: Task, generator: torch.Generator) -> torch.nn.Module:
    """The model for ``cfg`` sized for ``task`` (d, descriptor), initialised from ``generator``."""
    shape = LSAShape(d=task.d, descriptor_dim=task.descriptor_dim, layers=cfg.layers, heads=cfg.heads, param=cfg.param)
    model = LSA(shape)
    model.initialise(cfg.init, cfg.init_scale, generator)
    return model


__all__ = ["LSA", "HookPoint", "LSAShape", "build_model", "hook_names", "run_with_cache"]

"""Models trained on prompts; ``build_model(cfg.model, task, generator)`` makes the one a config names."""

from __future__ import annotations

import torch

from iclab.config import ModelConfig
from iclab.models.hooks import HookPoint, hook_names, run_with_cache
from iclab.models.lsa import LSA, LSAShape
from iclab.models.mlp_lsa import MLPLSA
from iclab.tasks import Task


def build_model(cfg: ModelConfig, task: Task, generator: torch.Generator) -> torch.nn.Module:
    """The model for ``cfg`` sized for ``task`` (d, descriptor), initialised from ``generator``."""
    activation = cfg.activation if cfg.name == "kernel_attention" else "linear"
    width = cfg.feature_dim if cfg.name == "mlp_lsa" else task.d
    shape = LSAShape(width, task.descriptor_dim, cfg.layers, cfg.heads, cfg.param, activation)
    model = MLPLSA(task.d, cfg.mlp_hidden, cfg.feature_dim, shape) if cfg.name == "mlp_lsa" else LSA(shape)
    model.initialise(cfg.init, cfg.init_scale, generator)
    return model


__all__ = ["LSA", "MLPLSA", "HookPoint", "LSAShape", "build_model", "hook_names", "run_with_cache"]

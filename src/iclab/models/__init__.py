"""Model families (one file each, registered in :data:`iclab.registry.MODELS`); every model implements
:class:`~iclab.models.base.InContextModel`. ``build_model(cfg.model, task, generator)`` makes the one a config
names."""

from __future__ import annotations

import torch

from iclab.config import ModelConfig
from iclab.models.base import InContextModel
from iclab.models.hooks import HookPoint, hook_names, run_with_cache
from iclab.registry import MODELS


def build_model(cfg: ModelConfig, task, generator: torch.Generator) -> InContextModel:
    """The model of the family ``cfg.name``, sized for ``task`` (its ``d`` and ``descriptor_dim``), its weights
    drawn from ``generator``."""
    return MODELS.get(cfg.name).build(cfg, task, generator)


__all__ = ["HookPoint", "InContextModel", "build_model", "hook_names", "run_with_cache"]

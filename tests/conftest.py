"""Shared helpers: task configs by name and seeded generators."""

from __future__ import annotations

import pytest
import torch

from iclab.config import parse_config

# Every task variant the foundation supports, as key=value overrides.
TASK_VARIANTS = {
    "isotropic": [],
    "noisy": ["task.noise_std=0.5"],
    "diag_x": ["task.d=3", "task.x_cov_diag=2,1,0.25"],
    "condition_fixed_rotation": ["task.condition_number=10", "task.rotation=fixed"],
    "condition_per_prompt": ["task.condition_number=10", "task.rotation=per_prompt"],
    "w_inverse_x": ["task.condition_number=4", "task.w_cov=inverse_x"],
    "w_diag": ["task.d=3", "task.w_cov=diag", "task.w_cov_diag=1,2,3"],
    "mean_shift": ["task.x_mean_std=1.5", "task.descriptor=mean"],
    "fixed_means_onehot": ["task.x_mean_std=2", "task.n_means=4", "task.descriptor=onehot"],
    "fixed_means_no_descriptor": ["task.x_mean_std=2", "task.n_means=4"],
    "many_queries": ["task.n_queries=3", "task.n=7"],
    "relu_response": ["task.response=relu", "task.random_sign=true"],
    "gp_relu_sphere": ["task.name=gp", "task.kernel=relu", "task.x_dist=sphere"],
    "gp_exp_noisy": ["task.name=gp", "task.kernel=exp", "task.kernel_scale=2", "task.noise_std=0.1"],
}


def task_config(variant: str, *extra: str):
    """The TaskConfig of a named variant (plus extra overrides)."""
    return parse_config({}, [*TASK_VARIANTS[variant], *extra]).task


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)

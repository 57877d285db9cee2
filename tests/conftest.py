"""Shared helpers: task configs by name and seeded generators; Hypothesis runs derandomised, with no example
database (the same examples every run, in every clone: a test cannot pass once and fail the next time)."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from hypothesis import settings

from iclab.cli import main
from iclab.config import parse_config

settings.register_profile("iclab", derandomize=True, database=None)
settings.register_profile("explore", database=None)  # HYPOTHESIS_PROFILE=explore: fresh random examples
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "iclab"))

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
    """The TaskConfig of a named variant, ``extra`` key=value items replacing its own."""
    merged = dict(item.split("=", 1) for item in [*TASK_VARIANTS[variant], *extra])
    return parse_config({}, [f"{key}={value}" for key, value in merged.items()]).task


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


CLI = [sys.executable, "-m", "iclab"]  # the command line in a fresh process


def cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``iclab argv`` run in this process (argparse's exits included)."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    """The single line of ``err`` (asserted single, without a traceback)."""
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err.strip()

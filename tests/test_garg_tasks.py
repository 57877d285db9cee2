"""Garg et al.'s function classes: each sampler's structure and its E y² (the zero predictor's error, the unit
of normalised errors) against a Monte Carlo estimate within its standard error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iclab.config import ConfigError, parse_config
from iclab.evaluate import error_curve, query_loss
from iclab.learners import Zero
from iclab.learners.specs import parse_learner
from iclab.tasks import make_task
from iclab.tasks.decision_tree import tree_values

F64 = torch.float64


def task_of(*overrides: str):
    return make_task(parse_config({}, list(overrides)).task, seed=0)


@pytest.mark.parametrize(
    "overrides",
    [
        ["task.name=sparse_linear", "task.d=8"],
        ["task.name=sparse_linear", "task.d=6", "task.sparsity=6", "task.noise_std=0.5"],
        ["task.name=relu_net", "task.d=4"],
        ["task.name=relu_net", "task.d=3", "task.hidden=7"],
        ["task.name=decision_tree", "task.d=5"],
        ["task.name=decision_tree", "task.d=2", "task.depth=2", "task.noise_std=0.3"],
        ["task.name=noisy_linear", "task.d=4"],
        ["task", "linear"],
    ],
)
def test_zero_error_is_the_mean_square_label(overrides):
    overrides = ["task.d=5", "task.w_cov=inverse_x", "task.condition_number=3"] if overrides[0] == "task" else overrides
    task = task_of(*overrides, "task.n=3", "task.n_queries=4")
    prompts = task.sample_in_chunks(60_000, torch.Generator().manual_seed(1), F64)
    mean, sem = query_loss(Zero(), prompts)
    assert abs(mean - task.zero_error()) < 4 * sem, (mean, sem, task.zero_error())


def test_sparse_w_has_k_nonzero_active_coordinates():
    task = task_of("task.name=sparse_linear", "task.d=10", "task.sparsity=3")
    w = task.sample(500, torch.Generator().manual_seed(0), dtype=F64).w
    assert ((w != 0).sum(-1) == 3).all()
    chosen = (w != 0).double().mean(0)  # each coordinate equally likely: 3/10
    assert ((chosen - 0.3).abs() < 0.08).all()
    curriculum = task.sample(500, torch.Generator().manual_seed(0), d_active=4, dtype=F64)
    assert (curriculum.w[:, 4:] == 0).all() and (curriculum.xs[..., 4:] == 0).all()
    assert ((curriculum.w != 0).sum(-1) == 3).all()
    with pytest.raises(ConfigError, match="task.sparsity must be <= task.d=2"):
        parse_config({}, ["task.name=sparse_linear", "task.d=2"])


def test_tree_values_follow_the_tests_to_the_leaves():
    """Depth 2, root tests x_0, its children x_1 (left) and x_2 (right); leaves 10, 20, 30, 40 left to right."""
    features = torch.tensor([[0, 1, 2]])
    values = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    x = torch.tensor([[[-1.0, -1.0, 5.0], [-1.0, 2.0, -5.0], [3.0, 9.0, -1.0], [3.0, -9.0, 0.5]]])
    assert tree_values(x, features, values, 2).tolist() == [[10.0, 20.0, 30.0, 40.0]]


def test_relu_net_labels_match_the_network_in_numpy():
    """Replaying the generator's draws (u, a, x in the sampler's order), the labels equal
    Σ_i a_i·max(0, u_iᵀx) computed in numpy with a_i scaled by √(2/h)."""
    task = task_of("task.name=relu_net", "task.d=3", "task.hidden=5", "task.n=4", "task.n_queries=2")
    prompts = task.sample(7, torch.Generator().manual_seed(3), dtype=F64)
    replay = torch.Generator().manual_seed(3)
    u = torch.randn(7, 3, 5, generator=replay, dtype=F64).numpy()
    a = torch.randn(7, 5, generator=replay, dtype=F64).numpy() * np.sqrt(2 / 5)
    x = torch.randn(7, 6, 3, generator=replay, dtype=F64).numpy()
    expected = np.einsum("bh,bnh->bn", a, np.maximum(0.0, np.einsum("bnd,bdh->bnh", x, u)))
    np.testing.assert_allclose(torch.cat([prompts.ys, prompts.yq], 1).numpy(), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(torch.cat([prompts.xs, prompts.xq], 1).numpy(), x)


def test_baseline_curves_match_their_closed_forms():
    """Noiseless linear regression, x, w ~ N(0, I_d), normalised by d: least squares (d − k)/d before k = d
    and 0 after; averaging (d + 1)/k (E‖(S − I)w‖² with S = XᵀX/k); the zero predictor 1. Monte Carlo within
    4 standard errors."""
    d, n = 4, 8
    task = task_of(f"task.d={d}", f"task.n={n}", "task.n_queries=2")
    prompts = task.sample_in_chunks(20_000, torch.Generator().manual_seed(4), F64)
    k = torch.arange(1, n + 1, dtype=F64)
    expected = {
        "least_squares": (d - k).clamp(min=0) / d,
        "averaging": (d + 1) / k,
        "zero": torch.ones(n, dtype=F64),
    }
    for name, closed_form in expected.items():
        curve = error_curve(parse_learner(name, task), prompts)
        normalised, sem = curve.mse / task.zero_error(), curve.sem / task.zero_error()
        assert ((normalised - closed_form).abs() <= 4 * sem + 1e-12).all(), (name, normalised, closed_form)

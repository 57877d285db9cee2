"""Gradient flow on the exact loss over sparse LSA weights: reaches the global minimum, keeps the balance
invariant, and small-step SGD on sampled prompts follows it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from iclab.config import parse_config
from iclab.theory import descriptor_problem, gradient_flow, initial_weights, sgd_run, task_problem


@pytest.mark.parametrize("descriptor", ["none", "mean"])
@pytest.mark.parametrize("n", [10, 40, math.inf])
def test_flow_from_balanced_init_reaches_the_global_minimum(n, descriptor):
    problem = descriptor_problem(n, 5, descriptor=descriptor, tau=1.0)
    a0, v0 = initial_weights(problem.features, "balanced", 0.1, seed=0)
    flow = gradient_flow(problem, a0, v0, t_max=1e3, points=50)
    assert flow.loss[0] - flow.optimal_loss > 1.0
    assert abs(flow.final_gap) < 1e-6
    b_star = problem.optimum()[0]
    assert problem.relative_error(-flow.v[-1] * flow.a[-1], b_star) < 1e-5
    balance = np.linalg.norm(flow.a, axis=(1, 2)) ** 2 - flow.v**2  # conserved by the flow
    np.testing.assert_allclose(balance, 0.0, atol=1e-6)


def test_zero_centred_flow_reaches_gamma_star():
    problem = descriptor_problem(20, 5, descriptor="none", means=np.zeros((1, 5)))
    flow = gradient_flow(problem, *initial_weights(5, "balanced", 0.1, seed=1), t_max=1e3, points=20)
    np.testing.assert_allclose((-flow.v[-1] * flow.a[-1]).T, 20 / 26 * np.eye(5), atol=1e-6)


@pytest.mark.parametrize("init", ["gaussian", "wrong_sign"])
def test_other_inits_also_converge(init):
    problem = descriptor_problem(10, 3, descriptor="mean", tau=1.0)
    for seed in (0, 1):
        a0, v0 = initial_weights(problem.features, init, 0.1, seed=seed)
        flow = gradient_flow(problem, a0, v0, t_max=1e3, points=20)
        assert abs(flow.final_gap) < 1e-6
        gap0 = np.linalg.norm(a0) ** 2 - v0**2
        assert np.linalg.norm(flow.a[-1]) ** 2 - flow.v[-1] ** 2 == pytest.approx(gap0, abs=1e-6)


def test_zero_init_is_a_stationary_point():
    problem = descriptor_problem(10, 3, descriptor="none", tau=1.0)
    flow = gradient_flow(problem, *initial_weights(problem.features, "zero"), t_max=100.0, points=5)
    assert np.all(flow.a == 0) and np.all(flow.v == 0)
    assert flow.final_gap == pytest.approx(problem.c - problem.optimum()[1])


def test_small_step_sgd_tracks_the_flow():
    cfg = parse_config({}, ["task.d=2", "task.n=10"]).task
    problem = task_problem(cfg)
    a0, v0 = initial_weights(problem.features, "balanced", 0.3, seed=0)
    flow = gradient_flow(problem, a0, v0, t_max=2.0, points=200)
    sgd = sgd_run(cfg, problem, a0, v0, lr=0.02, steps=50, batch=500, seed=0, record_every=10)
    along = np.interp(sgd.t, flow.t, flow.loss)
    initial_gap = flow.loss[0] - flow.optimal_loss
    assert sgd.t[-1] == pytest.approx(1.0)
    assert flow.loss[0] - along[-1] > 0.5 * initial_gap  # the flow moved a lot by t = 1 …
    assert np.abs(sgd.loss - along).max() < 0.06 * initial_gap  # … and SGD with it


def test_validation():
    problem = descriptor_problem(10, 2, descriptor="none", tau=1.0)
    with pytest.raises(ValueError, match="init must be one of balanced, gaussian, wrong_sign, zero"):
        initial_weights(2, "ones")
    with pytest.raises(ValueError, match=r"a0 must have shape \(2, 2\)"):
        gradient_flow(problem, np.zeros((3, 3)), 0.0)
    with pytest.raises(ValueError, match="t_max must be a finite number > 0"):
        gradient_flow(problem, np.zeros((2, 2)), 0.0, t_max=-1.0)

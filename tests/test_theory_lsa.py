"""Exact one-layer LSA theory: lsa_loss / lsa_optimum against closed forms, Monte Carlo and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from iclab.config import parse_config
from iclab.learners import PreconditionedGD
from iclab.tasks import make_task
from iclab.theory import isotropic_gd_optimum, lsa_loss, lsa_moment, lsa_optimum, mc_loss
from iclab.theory.descriptors import descriptor_problem


def random_spd(d: int, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed).normal(size=(d, d))
    return g @ g.T / d + 0.3 * np.eye(d)


@pytest.mark.parametrize(("d", "n", "noise"), [(5, 20, 0.0), (3, 7, 0.5), (1, 1, 2.0)])
def test_isotropic_closed_form(d, n, noise):
    opt = lsa_optimum(n, np.eye(d), noise_std=noise)
    eta = n / (n + d + 1 + noise**2)
    np.testing.assert_allclose(opt.gamma, eta * np.eye(d), rtol=0, atol=1e-12)
    assert opt.step_size == pytest.approx(eta, rel=1e-12)
    assert opt.loss == pytest.approx(d * (d + 1 + noise**2) / (n + d + 1 + noise**2) + noise**2, rel=1e-12)
    assert opt.loss == pytest.approx(isotropic_gd_optimum(d, n, noise).loss, rel=1e-12)


# Non-diagonal Λ (fixed random rotation) and Σ_w ≠ Λ⁻¹, so a transposed Γ or M would show.
MC_CASES = {
    "rotated_x_diag_w": ["task.d=3", "task.n=6", "task.condition_number=5", "task.rotation=fixed",
                         "task.w_cov=diag", "task.w_cov_diag=0.5,1,3", "task.noise_std=0.5"],
    "diag_x_inverse_w": ["task.d=3", "task.n=4", "task.x_cov_diag=2,1,0.25", "task.w_cov=inverse_x"],
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MC_CASES))
def test_loss_matches_monte_carlo(case):
    cfg = parse_config({}, MC_CASES[case]).task
    task = make_task(cfg, seed=0)
    lam, sigma_w = task.x_cov.numpy(), task.w_cov.numpy()
    gamma = np.random.default_rng(0).normal(size=(3, 3))  # not symmetric
    optimum = lsa_optimum(cfg.n, lam, sigma_w, cfg.noise_std)
    for g in (gamma, optimum.gamma):
        est = mc_loss(PreconditionedGD(1, 1.0, torch.from_numpy(g)), task, samples=100_000, seed=1)
        exact = lsa_loss(g, cfg.n, lam, sigma_w, cfg.noise_std)
        assert abs(est.z_score(exact)) < 4, (est, exact)
        if case == "rotated_x_diag_w" and g is gamma:  # the test has the power to see a transposition
            assert abs(est.z_score(lsa_loss(g.T, cfg.n, lam, sigma_w, cfg.noise_std))) > 5


def test_optimum_matches_numerical_minimisation():
    d, n, noise = 3, 9, 0.7
    lam, sigma_w = random_spd(d, 1), random_spd(d, 2)
    res = minimize(
        lambda v: lsa_loss(v.reshape(d, d), n, lam, sigma_w, noise), np.zeros(d * d), method="BFGS", tol=1e-12
    )
    opt = lsa_optimum(n, lam, sigma_w, noise)
    np.testing.assert_allclose(res.x.reshape(d, d), opt.gamma, rtol=0, atol=1e-6)
    assert res.fun == pytest.approx(opt.loss, abs=1e-10)
    assert lsa_loss(opt.gamma, n, lam, sigma_w, noise) == pytest.approx(opt.loss, abs=1e-12)


def test_loss_equals_the_moment_route_of_the_descriptor_engine():
    """Two derivations: the trace formula here, the conditional-moment quadratic form with μ = 0 there."""
    d, n, noise = 4, 5, 0.3
    lam, sigma_w = random_spd(d, 3), random_spd(d, 4)
    problem = descriptor_problem(
        n, d, descriptor="none", means=np.zeros((1, d)), x_cov=lam, w_cov=sigma_w, noise_std=noise
    )
    gamma = np.random.default_rng(5).normal(size=(d, d))
    assert lsa_loss(gamma, n, lam, sigma_w, noise) == pytest.approx(problem.loss(gamma.T), rel=1e-12)
    b_star, loss_star = problem.optimum()
    opt = lsa_optimum(n, lam, sigma_w, noise)
    np.testing.assert_allclose(b_star.T, opt.gamma, rtol=0, atol=1e-10)
    assert loss_star == pytest.approx(opt.loss, rel=1e-10)


def test_moment_matches_monte_carlo():
    d, n = 2, 3
    lam, sigma_w = random_spd(d, 6), random_spd(d, 7)
    rng = np.random.default_rng(0)
    batch = 400_000
    w = rng.multivariate_normal(np.zeros(d), sigma_w, size=batch)
    x = rng.multivariate_normal(np.zeros(d), lam, size=(batch, n))
    y = np.einsum("bnd,bd->bn", x, w) + 0.5 * rng.normal(size=(batch, n))
    h = np.einsum("bnd,bn->bd", x, y) / n
    outer = h[:, :, None] * h[:, None, :]
    z = (outer.mean(0) - lsa_moment(n, lam, sigma_w, 0.5)) / (outer.std(0) / math.sqrt(batch))
    assert np.abs(z).max() < 4


@pytest.mark.parametrize("seed", [0, 1])
def test_optimum_is_a_local_minimum(seed):
    d, n, noise = 4, 6, 0.4
    lam, sigma_w = random_spd(d, 10 + seed), random_spd(d, 20 + seed)
    opt = lsa_optimum(n, lam, sigma_w, noise)
    rng = np.random.default_rng(seed)
    for scale in (1e-3, 1e-1, 1.0):
        for _ in range(20):
            bumped = lsa_loss(opt.gamma + scale * rng.normal(size=(d, d)), n, lam, sigma_w, noise)
            assert bumped > opt.loss


def test_infinite_context_gives_the_inverse_covariance():
    lam = random_spd(3, 8)
    opt = lsa_optimum(math.inf, lam, random_spd(3, 9), noise_std=0.5)
    np.testing.assert_allclose(opt.gamma, np.linalg.inv(lam), rtol=1e-10)
    assert opt.loss == pytest.approx(0.25, rel=1e-10)
    assert opt.step_size is None
    assert lsa_optimum(10**7, lam, noise_std=0.5).loss == pytest.approx(0.25, rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"n": 0}, "n must be an integer >= 1 or math.inf"),
        ({"n": 2.5}, "n must be an integer >= 1 or math.inf"),
        ({"x_cov": [[1.0, 0.5], [0.0, 1.0]]}, "x_cov must be symmetric"),
        ({"x_cov": [[1.0, 2.0], [2.0, 1.0]]}, "x_cov must be positive definite"),
        ({"x_cov": [1.0, 1.0]}, "x_cov must be a 2-D matrix"),
        ({"w_cov": np.eye(3)}, "w_cov must be (2, 2)"),
        ({"noise_std": -1.0}, "noise_std must be a finite number >= 0"),
        ({"gamma": np.eye(3)}, "gamma must be shape (2, 2)"),
    ],
)
def test_validation_errors(kwargs, fragment):
    args = {"gamma": np.eye(2), "n": 5, "x_cov": np.eye(2), "w_cov": None, "noise_std": 0.0, **kwargs}
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        lsa_loss(**args)

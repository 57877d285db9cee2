"""Non-linear responses: closed forms vs quadrature, exact loss vs Monte Carlo, and the optimum is η I
(checked by a least-squares fit of Γ on sampled prompts, which assumes nothing about its form)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iclab.config import parse_config
from iclab.learners import PreconditionedGD
from iclab.tasks import make_task
from iclab.theory import lsa_optimum, mc_loss, nonlinear_loss, nonlinear_moments, nonlinear_optimum


def nonlinear_task(d: int, n: int, response: str, noise: float, random_sign: bool = False, n_queries: int = 1):
    """iclab's linear task with y = ±f(wᵀx) + ε, x, w ~ N(0, I)."""
    overrides = [f"task.d={d}", f"task.n={n}", f"task.response={response}", f"task.noise_std={noise}",
                 f"task.random_sign={random_sign}", f"task.n_queries={n_queries}"]  # fmt: skip
    return make_task(parse_config({}, overrides).task)


@pytest.mark.parametrize("response", ["identity", "relu", "cubic"])
@pytest.mark.parametrize("d", [1, 3, 6])
def test_closed_forms_equal_quadrature(response, d):
    closed = nonlinear_moments(response, 12, d, 0.3, method="closed")
    quad = nonlinear_moments(response, 12, d, 0.3, method="quadrature")
    for field in ("alpha", "kappa", "c"):
        assert getattr(quad, field) == pytest.approx(getattr(closed, field), rel=1e-9)


def test_tanh_quadrature_has_converged():
    coarse = nonlinear_moments("tanh", 10, 4, nodes=160)
    fine = nonlinear_moments("tanh", 10, 4)
    assert fine.alpha == pytest.approx(coarse.alpha, rel=1e-8) and fine.kappa == pytest.approx(coarse.kappa, rel=1e-8)


@pytest.mark.parametrize(("d", "n", "noise"), [(5, 20, 0.0), (3, 7, 0.5)])
def test_step_sizes(d, n, noise):
    linear = nonlinear_optimum("identity", n, d, noise)
    iso = lsa_optimum(n, np.eye(d), noise_std=noise)
    assert linear.step_size == pytest.approx(iso.step_size, rel=1e-12) and linear.loss == pytest.approx(iso.loss)
    assert nonlinear_optimum("relu", n, d, noise).step_size == pytest.approx(n / (n + 2 * d + 3 + 4 * noise**2))


@pytest.mark.parametrize("response", ["identity", "relu", "tanh", "cubic"])
@pytest.mark.parametrize("random_sign", [False, True])
def test_exact_loss_matches_monte_carlo(response, random_sign):
    d, n, noise = 3, 10, 0.5
    task = nonlinear_task(d, n, response, noise, random_sign=random_sign, n_queries=2)
    gamma = nonlinear_optimum(response, n, d, noise).gamma + 0.2 * np.random.default_rng(0).normal(size=(d, d))
    est = mc_loss(PreconditionedGD(1, 1.0, torch.from_numpy(gamma)), task, samples=50_000, seed=4)
    assert abs(est.z_score(nonlinear_loss(gamma, response, n, d, noise))) < 4


@pytest.mark.parametrize("response", ["relu", "tanh"])
def test_fitted_optimum_is_a_multiple_of_identity(response):
    """Least squares of y_q on the d² features x_q hᵀ estimates Γ* freely; compare entrywise with η I."""
    d, n, batch = 3, 8, 200_000
    p = nonlinear_task(d, n, response, 0.3).sample(batch, torch.Generator().manual_seed(5), dtype=torch.float64)
    h = torch.einsum("bnd,bn->bd", p.xs, p.ys) / n
    features = (p.xq[:, 0, :, None] * h[:, None, :]).reshape(batch, -1).numpy()  # ŷ = Σ_ij Γ_ij x_qi h_j
    target = p.yq[:, 0].numpy()
    fit, *_ = np.linalg.lstsq(features, target, rcond=None)
    residual = target - features @ fit
    bread = np.linalg.inv(features.T @ features)
    cov = bread @ (features.T * residual**2) @ features @ bread  # heteroscedasticity-robust (HC0)
    expected = nonlinear_optimum(response, n, d, 0.3).gamma.ravel()
    z = (fit - expected) / np.sqrt(np.diag(cov))
    assert np.abs(z).max() < 4.5, z  # 9 entries, each within its standard error


def test_optimum_is_a_local_minimum():
    opt = nonlinear_optimum("tanh", 10, 3, 0.2)
    rng = np.random.default_rng(0)
    bumped = [nonlinear_loss(opt.gamma + 0.01 * rng.normal(size=(3, 3)), "tanh", 10, 3, 0.2) for _ in range(8)]
    assert min(bumped) > opt.loss


def test_validation():
    with pytest.raises(ValueError, match="response must be one of identity, relu, tanh, cubic"):
        nonlinear_moments("sigmoid", 5, 2)
    with pytest.raises(ValueError, match="no closed form"):
        nonlinear_moments("tanh", 5, 2, method="closed")

"""Task descriptors: the exact moment engine against Monte Carlo through iclab's own LSA and sampler,
against tensor-product Gauss–Hermite, and the n → ∞ standardisation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from numpy.polynomial.hermite_e import hermegauss

from iclab.config import parse_config
from iclab.tasks import make_task
from iclab.theory import (
    descriptor_gap,
    descriptor_problem,
    lsa_from_bilinear,
    mc_loss,
    standardising_predictor,
    task_problem,
)

MC_CASES = {
    "gaussian_mean_descriptor": ["task.x_mean_std=1", "task.descriptor=mean", "task.noise_std=0.5"],
    "gaussian_mean_no_descriptor": ["task.x_mean_std=1"],
    "fixed_means_onehot_rotated": ["task.x_mean_std=1.5", "task.n_means=3", "task.descriptor=onehot",
                                   "task.condition_number=3", "task.rotation=fixed", "task.w_cov=diag",
                                   "task.w_cov_diag=1,2,0.5"],
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MC_CASES))
def test_exact_loss_matches_monte_carlo_of_the_lsa(case):
    cfg = parse_config({}, ["task.d=3", "task.n=8", "task.n_queries=2", *MC_CASES[case]]).task
    problem = task_problem(cfg, seed=0)
    b_star, loss_star = problem.optimum()
    bump = 0.1 * np.random.default_rng(0).normal(size=b_star.shape)
    for b in (b_star, b_star + bump):
        est = mc_loss(lsa_from_bilinear(b, cfg.d), make_task(cfg, seed=0), samples=60_000, seed=2)
        assert abs(est.z_score(problem.loss(b))) < 4, (est, problem.loss(b))
    assert problem.loss(b_star) == pytest.approx(loss_star, rel=1e-10)


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("descriptor", ["none", "mean"])
def test_rotation_average_equals_tensor_gauss_hermite(d, descriptor):
    """The Gaussian-mean moments (radial × rotation average) vs a product rule exact to degree 9 per axis."""
    tau, nodes, weights = 1.3, *hermegauss(5)
    grid = np.array(list(itertools.product(nodes, repeat=d))) * tau
    grid_weights = np.array([np.prod(c) for c in itertools.product(weights / weights.sum(), repeat=d)])
    fast = descriptor_problem(7, d, descriptor=descriptor, tau=tau, noise_std=0.4)
    product = descriptor_problem(7, d, descriptor=descriptor, means=grid, mean_weights=grid_weights, noise_std=0.4)
    np.testing.assert_allclose(fast.q, product.q, rtol=0, atol=1e-10 * np.abs(product.q).max())
    np.testing.assert_allclose(fast.r, product.r, rtol=0, atol=1e-12 * np.abs(product.r).max())
    assert fast.c == pytest.approx(product.c, rel=1e-12)


@pytest.mark.parametrize("descriptor", ["mean", "onehot"])
def test_standardisation_is_the_infinite_n_optimum(descriptor):
    d, noise = 3, 0.5
    if descriptor == "mean":
        kwargs, means = {"tau": 1.5}, None
    else:
        means = 2.0 * np.random.default_rng(0).normal(size=(4, d))
        kwargs = {"means": means, "x_cov": np.diag([2.0, 1.0, 0.5])}
    problem = descriptor_problem(math.inf, d, descriptor=descriptor, noise_std=noise, **kwargs)
    b = standardising_predictor(d, descriptor, means=means, x_cov=kwargs.get("x_cov"))
    assert problem.loss(b) == pytest.approx(noise**2, abs=1e-10)  # → wᵀx_q: only the noise is left
    assert problem.optimum()[1] == pytest.approx(noise**2, abs=1e-10)
    without = descriptor_problem(math.inf, d, descriptor="none", noise_std=noise, **kwargs).optimum()[1]
    assert without > noise**2 + 0.5  # no fixed Γ undoes (I + μμᵀ) for every μ


def test_finite_n_optimum_uses_the_query_side_blocks():
    d = 4
    previous_with = math.inf
    for n in (5, 20, 80, math.inf):
        problem = descriptor_problem(n, d, descriptor="mean", tau=1.0)
        b, loss = problem.optimum()
        blocks = {"xx": b[:d, :d], "xs": b[:d, d:], "sx": b[d:, :d], "ss": b[d:, d:]}
        for block in blocks.values():  # rotation symmetry: each block is a multiple of I
            np.testing.assert_allclose(block, np.trace(block) / d * np.eye(d), rtol=0, atol=1e-9)
        query_side = abs(np.trace(blocks["xs"])) + abs(np.trace(blocks["ss"]))
        assert (query_side > 0.1) if n != math.inf else (query_side < 1e-9)
        assert loss < previous_with
        previous_with = loss
        if n != math.inf:
            assert np.abs(problem.grad(b)).max() < 1e-9


@pytest.mark.parametrize("descriptor", ["none", "mean"])
def test_optimum_is_a_local_minimum(descriptor):
    problem = descriptor_problem(10, 3, descriptor=descriptor, tau=1.0, noise_std=0.3)
    b, loss = problem.optimum()
    rng = np.random.default_rng(3)
    for scale in (1e-3, 1e-1):
        bumps = [problem.loss(b + scale * rng.normal(size=b.shape)) - loss for _ in range(20)]
        assert min(bumps) > 0


def test_gap_grows_with_n_and_d():
    gaps = {(n, d): np.subtract(*descriptor_gap(n, d, 1.0)) for n in (5, 20, 80) for d in (2, 5)}
    assert all(g > 0 for g in gaps.values())
    assert gaps[(5, 2)] < gaps[(20, 2)] < gaps[(80, 2)] and gaps[(5, 5)] < gaps[(20, 5)] < gaps[(80, 5)]
    assert all(gaps[(n, 2)] < gaps[(n, 5)] for n in (5, 20, 80))
    assert np.subtract(*descriptor_gap(20, 3, 0.0)) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"descriptor": "onehot"}, "needs fixed means"),
        ({"descriptor": "text"}, "descriptor must be one of none, mean, onehot"),
        ({"x_cov": np.diag([1.0, 2.0])}, "x_cov must be a multiple of the identity"),
        ({"means": np.zeros((2, 3))}, r"means must have shape \(K, 2\)"),
        ({"means": np.zeros((2, 2)), "mean_weights": [0.7, 0.7]}, "mean_weights must be 2 non-negative"),
        ({"tau": -1.0}, "tau must be a finite number >= 0"),
    ],
)
def test_validation(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        descriptor_problem(5, 2, **{"tau": 1.0, **kwargs})
    with pytest.raises(ValueError, match="per_prompt is not covered"):
        task_problem(parse_config({}, ["task.condition_number=3", "task.rotation=per_prompt"]).task)

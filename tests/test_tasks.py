"""Samplers against their definitions: means and covariances within Monte Carlo error."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import TASK_VARIANTS, task_config
from iclab.tasks import make_task
from iclab.tasks.linear import random_rotation

F64 = torch.float64


def assert_second_moment(samples: torch.Tensor, expected: torch.Tensor, z: float = 5.0) -> None:
    """samples: (N, d) with known mean 0; E[x xᵀ] = expected within z standard errors entrywise."""
    count = samples.shape[0]
    empirical = samples.T @ samples / count
    diag = torch.diagonal(expected)
    se = ((diag.outer(diag) + expected**2) / count).sqrt()
    assert ((empirical - expected).abs() <= z * se).all(), (empirical, expected)


def assert_zero_mean(samples: torch.Tensor, cov: torch.Tensor, z: float = 5.0) -> None:
    se = (torch.diagonal(cov) / samples.shape[0]).sqrt()
    assert (samples.mean(0).abs() <= z * se).all()


@pytest.mark.parametrize("variant", ["isotropic", "diag_x", "condition_fixed_rotation", "w_inverse_x"])
def test_x_covariance(variant, generator):
    task = make_task(task_config(variant, "task.n=50"), seed=3)
    prompts = task.sample(4000, generator, dtype=F64)
    xs = prompts.xs.reshape(-1, task.d)
    assert_zero_mean(xs, task.x_cov)
    assert_second_moment(xs, task.x_cov)


def test_condition_number_spectrum_and_rotation():
    task = make_task(task_config("condition_fixed_rotation", "task.d=4"), seed=0)
    eig = torch.linalg.eigvalsh(task.x_cov)
    expected = torch.tensor([10 ** (-i / 3) for i in range(4)], dtype=F64).sort().values
    torch.testing.assert_close(eig, expected, atol=1e-12, rtol=0)
    assert not torch.allclose(task.x_cov, torch.diag(torch.diagonal(task.x_cov)))  # really rotated


@pytest.mark.parametrize("variant", ["isotropic", "w_diag", "w_inverse_x"])
def test_w_covariance(variant, generator):
    task = make_task(task_config(variant), seed=0)
    w = task.sample(40000, generator, dtype=F64).w
    assert_zero_mean(w, task.w_cov)
    assert_second_moment(w, task.w_cov)


def test_labels_are_linear_plus_noise(generator):
    sigma = 0.5
    task = make_task(task_config("noisy", "task.n_queries=2"), seed=0)
    p = task.sample(5000, generator, dtype=F64)
    residual = torch.cat(
        [p.ys - torch.einsum("bnd,bd->bn", p.xs, p.w), p.yq - torch.einsum("bmd,bd->bm", p.xq, p.w)], dim=1
    ).reshape(-1)
    count = residual.numel()
    assert abs(residual.mean()) <= 5 * sigma / math.sqrt(count)
    assert abs(residual.pow(2).mean() - sigma**2) <= 5 * sigma**2 * math.sqrt(2 / count)


def test_per_prompt_rotation_keeps_the_spectrum(generator):
    task = make_task(task_config("condition_per_prompt", "task.d=3", "task.n=20000"), seed=0)
    p = task.sample(2, generator, dtype=F64)
    expected = torch.tensor([0.1, 10**-0.5, 1.0], dtype=F64)
    covs = p.xs.transpose(1, 2) @ p.xs / p.n  # (2, d, d), one per prompt
    for cov in covs:
        torch.testing.assert_close(torch.linalg.eigvalsh(cov), expected, rtol=0.05, atol=0)
    assert not torch.allclose(covs[0], covs[1], atol=0.05)  # different eigenbases
    with pytest.raises(ValueError, match="per_prompt"):
        _ = task.x_cov


def test_haar_rotations_are_orthogonal_and_centred():
    q = random_rotation(20000, 3, torch.Generator().manual_seed(0), F64)
    torch.testing.assert_close(q @ q.transpose(1, 2), torch.eye(3, dtype=F64).expand(20000, 3, 3))
    # E[Q] = 0 for Haar measure; each entry has variance 1/d.
    assert (q.mean(0).abs() <= 5 * math.sqrt(1 / 3 / 20000)).all()


def test_mean_shift_and_mean_descriptor(generator):
    tau = 1.5
    task = make_task(task_config("mean_shift", "task.n=10"), seed=0)
    p = task.sample(20000, generator, dtype=F64)
    eye = torch.eye(task.d, dtype=F64)
    mu = p.descriptor
    assert mu.shape == (20000, task.d)
    assert_second_moment(mu, tau**2 * eye)
    centred = (p.xs - mu.unsqueeze(1))[:, 0]  # one point per prompt: independent samples
    assert_second_moment(centred, eye)
    assert_zero_mean(centred, eye)


def test_fixed_means_and_onehot_descriptor(generator):
    task = make_task(task_config("fixed_means_onehot", "task.n=10"), seed=5)
    p = task.sample(20000, generator, dtype=F64)
    assert p.descriptor.shape == (20000, 4)
    assert torch.equal(p.descriptor.sum(1), torch.ones(20000, dtype=F64))
    index = p.descriptor.argmax(1)
    counts = torch.bincount(index, minlength=4).to(F64)
    assert ((counts - 5000).abs() <= 5 * math.sqrt(20000 * 0.25 * 0.75)).all()
    centred = p.xs[:, 0] - task.means[index]
    assert_zero_mean(centred, torch.eye(task.d, dtype=F64))
    assert_second_moment(centred, torch.eye(task.d, dtype=F64))
    # the K means are fixed by the task seed, not by the sampling generator
    assert torch.equal(task.means, make_task(task.cfg, seed=5).means)
    assert not torch.equal(task.means, make_task(task.cfg, seed=6).means)


def test_curriculum_arguments(generator):
    task = make_task(task_config("isotropic", "task.d=6"), seed=0)
    p = task.sample(8, generator, n=4, d_active=2, dtype=F64)
    assert p.xs.shape == (8, 4, 6)
    assert torch.all(p.xs[..., 2:] == 0) and torch.all(p.xq[..., 2:] == 0)
    torch.testing.assert_close(p.ys, torch.einsum("bnd,bd->bn", p.xs, p.w))


@pytest.mark.parametrize("variant", sorted(TASK_VARIANTS))
def test_samplers_are_seeded(variant):
    task = make_task(task_config(variant), seed=0)
    a = task.sample(4, torch.Generator().manual_seed(9))
    b = task.sample(4, torch.Generator().manual_seed(9))
    c = task.sample(4, torch.Generator().manual_seed(10))
    for name in ("xs", "ys", "xq", "yq", "w", "descriptor"):
        first, second = getattr(a, name), getattr(b, name)
        assert (first is None and second is None) or torch.equal(first, second)
    assert not torch.equal(a.xs, c.xs)


@pytest.mark.parametrize("variant", ["isotropic", "noisy", "mean_shift"])
def test_linear_prompts_are_the_documented_draws_in_order(variant):
    """The linear sampler's stream, rebuilt with plain torch from the same generator: w, then μ (mean-shifted x),
    then the context x, the query x and the noise (drawn even for σ = 0), so a config and seed give the same
    prompts whichever factors (Λ = I, μ = 0, σ = 0) the sampler skips as exact no-ops."""
    cfg = task_config(variant, "task.d=4", "task.n=6")
    prompts = make_task(cfg, seed=3).sample(5, torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(11)
    w = torch.randn(5, 4, generator=g)
    mean = cfg.x_mean_std * torch.randn(5, 4, generator=g) if cfg.x_mean_std > 0 else torch.zeros(5, 4)
    xs = mean.unsqueeze(1) + torch.randn(5, 6, 4, generator=g)
    xq = mean.unsqueeze(1) + torch.randn(5, 1, 4, generator=g)
    labels = torch.cat([xs, xq], dim=1) @ w.unsqueeze(-1)
    labels = labels.squeeze(-1) + cfg.noise_std * torch.randn(5, 7, generator=g)
    for got, expected in [(prompts.w, w), (prompts.xs, xs), (prompts.xq, xq), (prompts.ys, labels[:, :6]),
                          (prompts.yq, labels[:, 6:])]:  # fmt: skip
        assert torch.equal(got, expected)
    if cfg.descriptor == "mean":
        assert torch.equal(prompts.descriptor, mean)

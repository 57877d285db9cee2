"""Kernels, GP tasks, kernel learners and the functional-GD construction (Cheng, Chen, Sra 2024)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import task_config
from iclab.constructions import functional_gd_model, gd_model
from iclab.evaluate import query_loss
from iclab.kernels import Kernel
from iclab.learners import FunctionalGD, GPPosterior, GradientDescent, KernelRidge, Ridge
from iclab.models import run_with_cache
from iclab.models.lsa import LSA, LSAShape
from iclab.tasks import make_task

F64 = torch.float64


def data(n: int = 9, d: int = 4, m: int = 3, batch: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(batch, n, d, generator=g, dtype=F64) / math.sqrt(d)
    xq = torch.randn(batch, m, d, generator=g, dtype=F64) / math.sqrt(d)
    return xs, torch.randn(batch, n, generator=g, dtype=F64), xq


def numpy_kernel(name: str, scale: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    inner = a @ b.T / scale
    return {"linear": inner, "relu": np.maximum(inner, 0), "exp": np.exp(inner)}[name]


def numpy_functional_gd(name, scale, x, y, xq, steps, lr):
    """The recursion on function values: f_{l+1}(u) = f_l(u) + (lr/n) Σ_s K(u, x_s)(y_s − f_l(x_s))."""
    points = np.concatenate([x, xq])
    values = np.zeros(len(points))  # f_l at the context points then the queries
    gram = numpy_kernel(name, scale, points, x)  # (n+m, n)
    for _ in range(steps):
        values = values + lr / len(y) * gram @ (y - values[: len(y)])
    return values[len(y) :]


@pytest.mark.parametrize("kernel", ["linear", "relu", "exp"])
@pytest.mark.parametrize(("steps", "lr"), [(1, 0.5), (3, 0.9), (6, 2.0)])
def test_functional_gd_is_the_recursion_and_the_construction_runs_it(kernel, steps, lr):
    xs, ys, xq = data()
    k = Kernel(kernel, 2.0 if kernel == "exp" else 1.0)
    got = FunctionalGD(k, steps, lr).predict(xs, ys, xq)
    for b in range(xs.shape[0]):
        expected = numpy_functional_gd(kernel, k.scale, xs[b].numpy(), ys[b].numpy(), xq[b].numpy(), steps, lr)
        np.testing.assert_allclose(got[b].numpy(), expected, rtol=1e-8, atol=1e-8)
    model = functional_gd_model(4, steps, k, lr)
    torch.testing.assert_close(model.predict(xs, ys, xq), got, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("layers", [1, 4])
def test_gd_model_is_gradient_descent(layers):
    xs, ys, xq = data()
    torch.testing.assert_close(
        gd_model(4, layers, 0.7).predict(xs, ys, xq), GradientDescent(layers, 0.7).predict(xs, ys, xq)
    )


def test_linear_kernel_functional_gd_is_gradient_descent():
    xs, ys, xq = data()
    torch.testing.assert_close(
        FunctionalGD(Kernel("linear"), 4, 0.6).predict(xs, ys, xq), GradientDescent(4, 0.6).predict(xs, ys, xq)
    )


def test_kernel_ridge_and_gp_posterior_against_numpy_and_ridge():
    xs, ys, xq = data()
    for b in range(xs.shape[0]):
        x, y, q = xs[b].numpy(), ys[b].numpy(), xq[b].numpy()
        gram = numpy_kernel("exp", 2.0, x, x)
        expected = numpy_kernel("exp", 2.0, q, x) @ np.linalg.solve(gram + 0.3 * np.eye(len(y)), y)
        np.testing.assert_allclose(KernelRidge(Kernel("exp", 2.0), 0.3).predict(xs, ys, xq)[b], expected, rtol=1e-9)
    # the linear-kernel GP posterior mean is ridge regression with α = σ²
    torch.testing.assert_close(
        GPPosterior(Kernel("linear"), 0.5).predict(xs, ys, xq), Ridge(0.25).predict(xs, ys, xq), rtol=1e-9, atol=1e-9
    )


def test_many_small_functional_gd_steps_reach_kernel_regression():
    xs, ys, xq = data(n=6)
    k = Kernel("exp", 1.0)
    long_run = FunctionalGD(k, 20000, 0.3).predict(xs, ys, xq)  # stable here: (lr/n)·λ_max(K) < 1.5
    torch.testing.assert_close(long_run, KernelRidge(k, 1e-12).predict(xs, ys, xq), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["gp_exp_noisy", "gp_linear"])
def test_gp_labels_have_the_kernel_covariance(variant):
    """E[y yᵀ | x] = K + σ²I: the normalised label products average to the kernel within Monte Carlo error."""
    extra = ["task.n=3", "task.n_queries=1", "task.d=2"]
    cfg = task_config("gp_exp_noisy", *extra) if variant == "gp_exp_noisy" else task_config("isotropic", *extra)
    if variant == "gp_linear":
        cfg = task_config("gp_relu_sphere", *extra, "task.kernel=linear")
    task = make_task(cfg, seed=0)
    p = task.sample(40000, torch.Generator().manual_seed(5), dtype=F64)
    points = torch.cat([p.xs, p.xq], dim=1)
    cov = task.kernel(points, points) + cfg.noise_std**2 * torch.eye(4, dtype=F64)
    y = torch.cat([p.ys, p.yq], dim=1)
    excess = y.unsqueeze(-1) * y.unsqueeze(-2) - cov  # (B, 4, 4), mean 0
    se = excess.std(0) / math.sqrt(excess.shape[0])
    assert (excess.mean(0).abs() <= 5 * se).all()


def test_sphere_inputs_and_psd_projection_of_relu_gram():
    task = make_task(task_config("gp_relu_sphere", "task.d=3", "task.n=30"), seed=0)
    p = task.sample(50, torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(p.xs.norm(dim=-1), torch.ones(50, 30, dtype=F64))
    assert p.w is None and p.descriptor is None and torch.isfinite(p.ys).all()


@pytest.mark.parametrize(("response", "f"), [("relu", torch.relu), ("tanh", torch.tanh), ("cubic", lambda t: t**3)])
def test_nonlinear_responses(response, f):
    task = make_task(task_config("isotropic", f"task.response={response}"), seed=0)
    p = task.sample(6, torch.Generator().manual_seed(0), dtype=F64)
    torch.testing.assert_close(p.ys, f(torch.einsum("bnd,bd->bn", p.xs, p.w)))
    signed = make_task(task_config("isotropic", f"task.response={response}", "task.random_sign=true"), seed=0)
    q = signed.sample(400, torch.Generator().manual_seed(0), dtype=F64)
    clean = f(torch.einsum("bnd,bd->bn", q.xs, q.w))
    signs = torch.sign((q.ys * clean).sum(1, keepdim=True))
    torch.testing.assert_close(q.ys, signs * clean)  # one sign per prompt
    assert set(signs.flatten().tolist()) == {-1.0, 1.0}


def test_gp_posterior_is_best_on_its_own_kernel():
    task = make_task(task_config("gp_exp_noisy", "task.n=12"), seed=0)
    p = task.sample(6000, torch.Generator().manual_seed(1), dtype=F64)
    bayes = query_loss(GPPosterior(task.kernel, 0.1), p)[0]
    for other in [
        GPPosterior(Kernel("linear"), 0.1),
        FunctionalGD(task.kernel, 3, 1.0),
        KernelRidge(Kernel("relu"), 0.1),
    ]:
        assert query_loss(other, p)[0] > bayes


@pytest.mark.parametrize("activation", ["relu", "exp", "softmax"])
def test_kernel_attention_weights(activation):
    xs, ys, xq = data(n=5)
    model = LSA(LSAShape(d=4, activation=activation, heads=2)).double()
    model.initialise("gaussian", 0.5, torch.Generator().manual_seed(0))
    _, cache = run_with_cache(model, lambda: model.predict(xs, ys, xq))
    scores, weights = cache["blocks.0.attn.scores"], cache["blocks.0.attn.weights"]
    expected = {
        "relu": torch.relu(scores) / 5,
        "exp": torch.exp(scores) / 5,
        "softmax": torch.softmax(scores, dim=-1),
    }[activation]
    torch.testing.assert_close(weights, expected)
    if activation == "softmax":
        torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights[..., 0]))

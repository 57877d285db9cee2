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


def test_kernel_learners_take_the_kernel_names_the_config_takes():
    """FunctionalGD("linear", 3, 0.4) raised "'str' object is not callable"; with the linear kernel it is GD."""
    xs, ys, xq = data()
    torch.testing.assert_close(
        FunctionalGD("linear", 3, 0.4).predict(xs, ys, xq), GradientDescent(3, 0.4).predict(xs, ys, xq)
    )
    for b in range(xs.shape[0]):
        x, y, q = xs[b].numpy(), ys[b].numpy(), xq[b].numpy()
        expected = numpy_kernel("exp", 1.0, q, x) @ np.linalg.solve(numpy_kernel("exp", 1.0, x, x) + 0.3 * np.eye(9), y)
        np.testing.assert_allclose(KernelRidge("exp", 0.3).predict(xs, ys, xq)[b], expected, rtol=1e-9)
    torch.testing.assert_close(
        GPPosterior("linear", 0.5).predict(xs, ys, xq), Ridge(0.25).predict(xs, ys, xq), rtol=1e-9, atol=1e-9
    )
    with pytest.raises(ValueError, match="kernel must be one of linear, relu, exp"):
        FunctionalGD("cosine", 3, 0.4)


def numpy_gp_prefixes(kernel: Kernel, xs, ys, xq, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior means and variances (B, n, m) at every prefix k, from numpy: the joint Gram matrix of all the
    prompt's points projected onto the PSD cone (numpy's eigh), then the Gaussian conditional on y_1..y_k
    (numpy's pinv of each prefix block)."""
    x, q, y = xs.numpy(), xq.numpy(), ys.numpy()
    batch, n, m = x.shape[0], x.shape[1], q.shape[1]
    points = np.concatenate([x, q], axis=1)
    gram = np.stack([numpy_kernel(kernel.name, kernel.scale, p, p) for p in points])
    values, vectors = np.linalg.eigh(gram)
    joint = (vectors * np.maximum(values, 0)[:, None, :]) @ vectors.transpose(0, 2, 1)
    means, variances = np.zeros((batch, n, m)), np.zeros((batch, n, m))
    for k in range(1, n + 1):
        block = joint[:, :k, :k] + noise**2 * np.eye(k)
        inverse = np.linalg.pinv(block, rcond=n * np.finfo(float).eps, hermitian=True)
        cross = joint[:, n:, :k]  # (B, m, k)
        means[:, k - 1] = np.einsum("bmk,bkl,bl->bm", cross, inverse, y[:, :k])
        prior = np.diagonal(joint[:, n:, n:], axis1=1, axis2=2) + noise**2
        variances[:, k - 1] = prior - np.einsum("bmk,bkl,bml->bm", cross, inverse, cross)
    return means, variances


@pytest.mark.parametrize(
    ("kernel", "x_dist", "noise"),
    [("relu", "sphere", 0.0), ("relu", "gaussian", 0.0), ("relu", "gaussian", 0.1), ("exp", "sphere", 0.0)],
)
def test_gp_posterior_is_the_bayes_predictor_at_every_prefix(kernel, x_dist, noise):
    """relu kernel, d = 5, n = 8: the per-prefix error was 3.4, 758, 5380, 0.18 at prefixes 5–8 (each prefix's
    own Gram matrix projected). Now every prefix matches a direct numpy computation, and its error is the
    posterior variance it predicts (Monte Carlo, 4 s.e.), below the prior variance."""
    overrides = ["task.name=gp", f"task.kernel={kernel}", f"task.x_dist={x_dist}", "task.d=5", "task.n=8"]
    task = make_task(task_config("isotropic", *overrides, f"task.noise_std={noise}"), seed=0)
    p = task.sample(4000, torch.Generator().manual_seed(3), dtype=F64)
    got = GPPosterior(task.kernel, noise).predict_prefixes(p.xs, p.ys, p.xq)  # (B, n, m)
    means, variances = numpy_gp_prefixes(task.kernel, p.xs, p.ys, p.xq, noise)
    scale = float(p.yq.abs().max())  # σ = 0 conditions on near-singular blocks: rounding differs by ~cond·eps
    np.testing.assert_allclose(got.numpy(), means, rtol=0, atol=(1e-6 if noise == 0 else 1e-10) * scale)
    torch.testing.assert_close(got[:, -1], GPPosterior(task.kernel, noise).predict(p.xs, p.ys, p.xq))
    excess = ((got - p.yq.unsqueeze(1)) ** 2).numpy() - variances  # (B, n, m): mean 0 for the Bayes predictor
    z = excess.mean(0) / (excess.std(0) / np.sqrt(len(excess)))
    assert (np.abs(z) < 4).all(), z
    prior = float((p.yq**2).mean())
    assert (((got - p.yq.unsqueeze(1)) ** 2).mean((0, 2)) < prior).all()


@pytest.mark.parametrize("kernel", ["linear", "exp"])
def test_gp_prefixes_are_predict_on_each_prefix_for_psd_kernels(kernel):
    xs, ys, xq = data(n=10, d=3)
    learner = GPPosterior(kernel, 0.1)
    together = learner.predict_prefixes(xs, ys, xq)
    for k in range(1, 11):
        torch.testing.assert_close(together[:, k - 1], learner.predict(xs[:, :k], ys[:, :k], xq), rtol=1e-9, atol=1e-9)

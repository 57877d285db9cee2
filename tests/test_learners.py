"""Reference learners against numpy (float64, 1e-8) and their error curves against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import task_config
from iclab.evaluate import error_curve, query_loss
from iclab.learners import (
    Averaging,
    GradientDescent,
    KNearest,
    LeastSquares,
    NewtonSchulz,
    PreconditionedGD,
    Ridge,
    Zero,
)
from iclab.tasks import make_task
from iclab.theory import isotropic_gd_optimum, isotropic_reference

F64 = torch.float64


def prompts(n: int, d: int = 4, m: int = 3, batch: int = 6, seed: int = 0):
    task = make_task(task_config("noisy", f"task.d={d}", f"task.n={n}", f"task.n_queries={m}"), seed=0)
    return task.sample(batch, torch.Generator().manual_seed(seed), dtype=F64)


def numpy_gd(x: np.ndarray, y: np.ndarray, steps: int, lr: float, pre: np.ndarray | None = None) -> np.ndarray:
    w = np.zeros(x.shape[1])
    pre = np.eye(x.shape[1]) if pre is None else pre
    for _ in range(steps):
        w = w + lr / len(y) * pre @ (x.T @ (y - x @ w))
    return w


def numpy_reference(name: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = x.shape[1]
    if name == "ridge":
        return np.linalg.solve(x.T @ x + 0.3 * np.eye(d), x.T @ y)
    if name == "least_squares":
        return np.linalg.lstsq(x, y, rcond=None)[0]
    if name == "gd":
        return numpy_gd(x, y, steps=7, lr=0.4)
    if name == "pgd":
        return numpy_gd(x, y, steps=3, lr=0.3, pre=PRECONDITIONER.numpy())
    if name == "averaging":
        return x.T @ y / len(y)
    if name == "newton":
        return numpy_newton_schulz(x, y, steps=3)
    return np.zeros(d)


PRECONDITIONER = torch.tensor([[2.0, 0.3, 0, 0], [0.3, 1.0, 0, 0], [0, 0, 0.5, 0.1], [0, 0, 0.1, 1.5]], dtype=F64)
LEARNERS = {
    "ridge": Ridge(0.3),
    "least_squares": LeastSquares(),
    "gd": GradientDescent(7, 0.4),
    "pgd": PreconditionedGD(3, 0.3, PRECONDITIONER),
    "averaging": Averaging(),
    "newton": NewtonSchulz(3),
    "zero": Zero(),
}


@pytest.mark.parametrize("name", sorted(LEARNERS))
@pytest.mark.parametrize("n", [2, 4, 9])  # fewer, as many as, more examples than d = 4
def test_linear_learners_match_numpy(name, n):
    p = prompts(n)
    got = LEARNERS[name].predict(p.xs, p.ys, p.xq)
    assert got.dtype == F64 and got.shape == (p.batch, 3)
    for b in range(p.batch):
        w = numpy_reference(name, p.xs[b].numpy(), p.ys[b].numpy())
        np.testing.assert_allclose(got[b].numpy(), p.xq[b].numpy() @ w, rtol=1e-8, atol=1e-8)


def test_knearest_matches_numpy():
    p = prompts(12)
    got = KNearest(3).predict(p.xs, p.ys, p.xq)
    for b in range(p.batch):
        for j in range(3):
            dist = np.linalg.norm(p.xs[b].numpy() - p.xq[b, j].numpy(), axis=1)
            expected = p.ys[b].numpy()[np.argsort(dist)[:3]].mean()
            assert abs(got[b, j].item() - expected) < 1e-12


@pytest.mark.parametrize("learner", [*LEARNERS.values(), KNearest(3)], ids=repr)
def test_all_prefixes_in_one_pass_equal_one_prefix_at_a_time(learner):
    p = prompts(9)
    together = learner.predict_prefixes(p.xs, p.ys, p.xq)
    for k in range(1, 10):
        alone = learner.predict(p.xs[:, :k], p.ys[:, :k], p.xq)
        torch.testing.assert_close(together[:, k - 1], alone, rtol=1e-9, atol=1e-9)


def test_bad_hyper_parameters_are_named():
    with pytest.raises(ValueError, match="Ridge.alpha"):
        Ridge(-1.0)
    with pytest.raises(ValueError, match="GradientDescent.lr"):
        GradientDescent(1, 0.0)
    with pytest.raises(ValueError, match="KNearest.k"):
        KNearest(0)
    with pytest.raises(ValueError, match="preconditioner"):
        PreconditionedGD(1, 0.1, torch.ones(3))


# ----------------------------------------------------------------- closed-form error curves


def curve_prompts(noise: float, batch: int = 20000, d: int = 5, n: int = 20):
    task = make_task(task_config("isotropic", f"task.d={d}", f"task.n={n}", f"task.noise_std={noise}"), seed=0)
    return task.sample(batch, torch.Generator().manual_seed(77), dtype=F64)


def assert_curve(curve, expected: dict[int, float], z: float = 4.0) -> None:
    for k, value in expected.items():
        mse, sem = curve.mse[k - 1].item(), curve.sem[k - 1].item()
        assert abs(mse - value) <= z * sem + 1e-9, (k, mse, value, sem)


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_zero_and_averaging_curves(noise):
    p, d, s2 = curve_prompts(noise), 5, noise**2
    assert_curve(error_curve(Zero(), p), {k: d + s2 for k in range(1, 21)})
    assert_curve(error_curve(Averaging(), p), {k: d * (1 + d + s2) / k + s2 for k in range(1, 21)})


def test_least_squares_curve_noiseless():
    p, d = curve_prompts(0.0), 5
    curve = error_curve(LeastSquares(), p)
    assert_curve(curve, {k: d - k for k in range(1, d)})  # projection onto the span of k inputs
    assert curve.mse[d - 1 :].max() < 1e-12  # exact recovery from k >= d


def test_least_squares_curve_noisy():
    # E‖X⁺ε‖² = σ² k/(d−k−1) (k < d−1) or σ² d/(k−d−1) (k > d+1); the checked k keep the variance finite.
    p, d, s2 = curve_prompts(0.5, d=5, n=20), 5, 0.25
    expected = {1: (d - 1) + s2 * 1 / (d - 2) + s2}
    expected.update({k: s2 * d / (k - d - 1) + s2 for k in range(d + 4, 21)})
    assert_curve(error_curve(LeastSquares(), p), expected)


@pytest.mark.parametrize(("d", "n", "noise"), [(5, 20, 0.0), (3, 10, 0.5)])
def test_optimal_gd_step_matches_theory(d, n, noise):
    p = curve_prompts(noise, batch=40000, d=d, n=n)
    optimum = isotropic_gd_optimum(d, n, noise)
    mean, sem = query_loss(GradientDescent(1, optimum.lr), p)
    assert abs(mean - optimum.loss) <= 4 * sem
    # the optimal step beats its neighbours on the same prompts
    for lr in (0.8 * optimum.lr, 1.2 * optimum.lr):
        assert query_loss(GradientDescent(1, lr), p)[0] > mean


def test_isotropic_reference_only_where_the_closed_form_holds():
    assert isotropic_reference(task_config("noisy", "task.d=4", "task.n=10")) == {
        "optimal 1-layer LSA (theory)": pytest.approx(4 * 5.25 / 15.25 + 0.25)
    }
    for variant in ("diag_x", "condition_fixed_rotation", "w_diag", "mean_shift"):
        assert isotropic_reference(task_config(variant)) == {}


# ----------------------------------------------------------------- Newton–Schulz (Fu et al.)


def numpy_newton_schulz(x: np.ndarray, y: np.ndarray, steps: int) -> np.ndarray:
    s = x.T @ x
    m = s / np.linalg.norm(s @ s.T, "fro")
    for _ in range(steps):
        m = 2 * m - m @ s @ m
    return m @ x.T @ y


@pytest.mark.parametrize("steps", [0, 1, 2, 5, 12])
@pytest.mark.parametrize("n", [3, 9])
def test_newton_schulz_equals_the_recursion(steps, n):
    """x_qᵀ M_k Xᵀy with M₀ = XᵀX/‖SSᵀ‖_F, M_{k+1} = 2M_k − M_k S M_k, to 1e-10."""
    p = prompts(n)
    got = NewtonSchulz(steps).predict(p.xs, p.ys, p.xq)
    for b in range(p.batch):
        w = numpy_newton_schulz(p.xs[b].numpy(), p.ys[b].numpy(), steps)
        np.testing.assert_allclose(got[b].numpy(), p.xq[b].numpy() @ w, rtol=1e-10, atol=1e-10)


def test_newton_schulz_converges_to_least_squares_where_gd_crawls():
    """On κ = 100 data 30 iterations reach OLS to 1e-8; 30 GD steps at the largest stable rate do not."""
    task = make_task(task_config("isotropic", "task.d=4", "task.n=12", "task.condition_number=100"), seed=0)
    p = task.sample(50, torch.Generator().manual_seed(3), dtype=F64)
    ols = LeastSquares().predict(p.xs, p.ys, p.xq)
    newton = NewtonSchulz(30).predict(p.xs, p.ys, p.xq)
    assert (newton - ols).abs().max() < 1e-8
    lam_max = torch.linalg.eigvalsh(p.xs.transpose(1, 2) @ p.xs / 12).max()
    gd = GradientDescent(30, 1.0 / lam_max.item()).predict(p.xs, p.ys, p.xq)
    assert (gd - ols).abs().max() > 1e-2
    with pytest.raises(ValueError, match="NewtonSchulz.steps"):
        NewtonSchulz(-1)

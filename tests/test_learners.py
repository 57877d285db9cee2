"""Reference learners against numpy (float64, 1e-8) and their error curves against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import task_config
from iclab.evaluate import error_curve, query_loss
from iclab.learners import (
    Averaging,
    GPPosterior,
    GradientDescent,
    KernelRidge,
    KNearest,
    LeastSquares,
    NewtonSchulz,
    PreconditionedGD,
    Ridge,
    Zero,
)
from iclab.learners.algorithms import (
    gradient_descent_at,
    gradient_descent_path,
    gradient_descent_spectrum,
    sufficient_statistics,
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


# ----------------------------------------------------------------- GD's iterates in closed form (issue 22: 4)


def gd_cases() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Prompts (xs (B, n, d), ys (B, n)) whose prefixes are well-conditioned, rank-deficient (prefixes of fewer
    than d points; two equal columns), or ill-conditioned (κ(XᵀX) ≈ 1e8 from one column scaled by 1e-4)."""
    generator = torch.Generator().manual_seed(11)
    xs = torch.randn(5, 9, 4, generator=generator, dtype=F64)
    ys = torch.randn(5, 9, generator=generator, dtype=F64)
    equal = xs.clone()
    equal[..., 3] = equal[..., 2]
    scaled = xs * torch.tensor([1.0, 1.0, 1.0, 1e-4], dtype=F64)
    return {"random": (xs, ys), "equal columns": (equal, ys), "ill-conditioned": (scaled, ys)}


@pytest.mark.parametrize("case", ["random", "equal columns", "ill-conditioned"])
@pytest.mark.parametrize("lr", [0.05, 0.25])
def test_closed_form_gd_equals_the_iterations_on_every_prefix(case, lr):
    """w_t = V diag((1 − (1 − lr·λ)^t)/λ) Vᵀ Xᵀy/k against t GD steps (torch's iterations and numpy's loop), at
    1e-10 of the iterates' size, on every prefix (k < d included: S rank-deficient) and counts out of order."""
    xs, ys = gd_cases()[case]
    gram, moment, count = sufficient_statistics(xs, ys, prefixes=True)
    lam_max = float(torch.linalg.eigvalsh(gram / count[..., None, None]).max())
    rate = lr / lam_max  # stable on every prompt and prefix
    counts = [300, 0, 1, 2, 17, 299]
    closed = gradient_descent_at(gradient_descent_spectrum(gram, moment, count), counts, rate)
    iterated = gradient_descent_path(gram, moment, count, 300, rate)[counts]
    scale = float(iterated.abs().max())
    torch.testing.assert_close(closed, iterated, rtol=0, atol=1e-10 * scale)
    for b, k in ((0, 2), (3, 9)):
        expected = numpy_gd(xs[b, :k].numpy(), ys[b, :k].numpy(), 17, rate)
        np.testing.assert_allclose(closed[4, b, k - 1].numpy(), expected, rtol=0, atol=1e-10 * scale)


def test_closed_form_gd_tends_to_minimum_norm_least_squares_where_iterating_would_take_millions_of_steps():
    """From w = 0 GD stays in X's row space, so its limit is X⁺y even where XᵀX is singular: 10¹² steps in closed
    form against numpy's lstsq (1e-10), on prefixes of fewer points than dimensions and with equal columns; and
    a step with lr·λ_max > 2 diverges (every count above the last grows)."""
    for xs, ys in list(gd_cases().values())[:2]:
        gram, moment, count = sufficient_statistics(xs, ys, prefixes=True)
        lam_max = float(torch.linalg.eigvalsh(gram / count[..., None, None]).max())
        w = gradient_descent_at(gradient_descent_spectrum(gram, moment, count), [10**12], 1 / lam_max)[0]
        for b in range(xs.shape[0]):
            for k in (2, 4, 9):
                expected = np.linalg.lstsq(xs[b, :k].numpy(), ys[b, :k].numpy(), rcond=None)[0]
                np.testing.assert_allclose(w[b, k - 1].numpy(), expected, rtol=0, atol=1e-10)
    xs, ys = gd_cases()["random"]
    spectrum = gradient_descent_spectrum(*sufficient_statistics(xs, ys))
    norms = gradient_descent_at(spectrum, [10, 20, 40], 3 / float(spectrum[0].max())).norm(dim=-1)  # (3, B)
    assert (norms[1:] > 10 * norms[:-1]).any(-1).all()


# ----------------------------------------------------------------- least squares and ridge from X (issue 15: 1, 2)

EPS = np.finfo(np.float64).eps


def numpy_ridge(x: np.ndarray, y: np.ndarray, q: np.ndarray, alpha: float) -> np.ndarray:
    """Predictions at q of ridge (α > 0, from numpy's SVD, singular values at most eps·max(k, d)·s_max counting as
    zero like np.linalg.lstsq) or of np.linalg.lstsq itself (α = 0)."""
    if alpha == 0:
        return q @ np.linalg.lstsq(x, y, rcond=None)[0]
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    kept = s > EPS * max(x.shape) * s[0]
    return q @ (vt.T @ (np.where(kept, s / (s * s + alpha), 0.0) * (u.T @ y)))


def solve_kind(kind: str, batch: int = 12, n: int = 24, d: int = 8, m: int = 2, seed: int = 0):
    """float64 prompts (xs, ys, xq) of one kind; n > d so the prefixes cross k < d, k = d and k > d."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(batch, n, d, generator=g, dtype=F64)
    ys = torch.randn(batch, n, generator=g, dtype=F64)
    xq = torch.randn(batch, m, d, generator=g, dtype=F64)
    if kind == "ill_conditioned":  # column scales 1 … 1e-6: cond(X) up to ~1e7
        scales = torch.logspace(0, -6, d, dtype=F64)
        xs, xq = xs * scales, xq * scales
    elif kind == "large_offset":  # x = 1e6 + N(0, I): the normal equations lose every digit
        xs, xq = xs + 1e6, xq + 1e6
    elif kind == "near_duplicate":  # x₁ = x₀ + 1e-4 z: every prefix ≥ 2 ill-conditioned, later ones less so
        xs[:, 1] = xs[:, 0] + 1e-4 * torch.randn(batch, d, generator=g, dtype=F64)
    elif kind == "duplicates":  # prefixes 2..d with a repeated point are rank-deficient
        xs[:, 2], xs[:, 5] = xs[:, 0], xs[:, 1]
    elif kind == "zero_columns":  # Garg's curriculum: the last dimensions unused
        xs[..., 5:], xq[..., 5:] = 0.0, 0.0
    elif kind == "discrete":  # x ∈ {−1, 1}³: repeated points everywhere
        xs = torch.randint(0, 2, (batch, n, 3), generator=g).to(F64) * 2 - 1
        xq = torch.randint(0, 2, (batch, m, 3), generator=g).to(F64) * 2 - 1
    elif kind == "fewer_examples_than_d":
        xs, ys = xs[:, : d // 2], ys[:, : d // 2]
    elif kind == "more_queries_than_d":
        xq = torch.randn(batch, d + 3, d, generator=g, dtype=F64)
    elif kind == "zero_query":
        xq[:, 0] = 0.0
    return xs, ys, xq


SOLVE_KINDS = [
    "gaussian",
    "ill_conditioned",
    "large_offset",
    "near_duplicate",
    "duplicates",
    "zero_columns",
    "discrete",
    "fewer_examples_than_d",
    "more_queries_than_d",
    "zero_query",
]


def assert_close_to_numpy(got: torch.Tensor, x: np.ndarray, y: np.ndarray, q: np.ndarray, alpha: float) -> None:
    """Equal to numpy to 1e-10 relative (the issue's bar), or, where X is ill-conditioned, within what a
    backward-stable solver can promise: 100·eps·cond(X)·‖x_q‖·‖w‖ (+ 100·eps·‖y‖ for x_q = 0)."""
    expected = numpy_ridge(x, y, q, alpha)
    s = np.linalg.svd(x, compute_uv=False)
    s = s[s > EPS * max(x.shape) * s[0]]
    w_norm = np.linalg.norm(np.linalg.lstsq(x, y, rcond=None)[0])
    relative = max(1e-10, 100 * EPS * s[0] / s[-1])
    tol = relative * np.linalg.norm(q, axis=1) * w_norm + 100 * EPS * np.linalg.norm(y)
    np.testing.assert_array_less(np.abs(got.numpy() - expected), tol)


@pytest.mark.parametrize("kind", SOLVE_KINDS)
def test_least_squares_equals_numpy_lstsq_at_every_prefix(kind):
    xs, ys, xq = solve_kind(kind)
    together = LeastSquares().predict_prefixes(xs, ys, xq)
    alone = LeastSquares().predict(xs, ys, xq)
    for b in range(xs.shape[0]):
        x, y, q = xs[b].numpy(), ys[b].numpy(), xq[b].numpy()
        for k in range(1, xs.shape[1] + 1):
            assert_close_to_numpy(together[b, k - 1], x[:k], y[:k], q, 0.0)
        assert_close_to_numpy(alone[b], x, y, q, 0.0)


def test_least_squares_issue_examples():
    """X = [[1+1e-8, −1], [−1, 1]], y = (1, −1) is solved by w = (0, −1) exactly (a w₁ − w₂ = 1, w₂ − w₁ = −1
    give (a − 1)w₁ = 0); through XᵀX the answer was (0.5, −0.5). cond(X) = 4e8, so ~1e-7 is all a solver owes."""
    xs = torch.tensor([[[1 + 1e-8, -1.0], [-1.0, 1.0]]], dtype=F64)
    ys, xq = torch.tensor([[1.0, -1.0]], dtype=F64), torch.eye(2, dtype=F64).unsqueeze(0)
    exact = torch.tensor([[0.0, -1.0]], dtype=F64)
    torch.testing.assert_close(LeastSquares().predict(xs, ys, xq), exact, rtol=0, atol=1e-7)
    prefixes = LeastSquares().predict_prefixes(xs, ys, xq)
    torch.testing.assert_close(prefixes[:, 1], exact, rtol=0, atol=1e-7)
    first = xs[0, 0] / xs[0, 0].dot(xs[0, 0])  # one example: w = x y/‖x‖²
    torch.testing.assert_close(prefixes[0, 0], first, rtol=1e-15, atol=0)


def test_least_squares_float32_at_k_equal_d():
    """Noiseless d = 20 task with k = d = 20 in float32: numpy's float32 lstsq reaches ~2e-8 (XᵀX gave 0.072);
    the result must be float64's answer on the same float32 data, rounded once."""
    task = make_task(task_config("isotropic", "task.d=20", "task.n=20"), seed=0)
    p = task.sample(4000, torch.Generator().manual_seed(0), dtype=torch.float32)
    got = LeastSquares().predict(p.xs, p.ys, p.xq)
    prefixes = LeastSquares().predict_prefixes(p.xs[:500], p.ys[:500], p.xq[:500])
    assert got.dtype == prefixes.dtype == torch.float32
    x, y, q = p.xs.double().numpy(), p.ys.double().numpy(), p.xq.double().numpy()
    exact = np.stack([q[b] @ np.linalg.lstsq(x[b], y[b], rcond=None)[0] for b in range(4000)])
    single = np.stack(
        [p.xq[b].numpy() @ np.linalg.lstsq(p.xs[b].numpy(), p.ys[b].numpy(), rcond=None)[0] for b in range(4000)]
    )
    ours_error = np.abs(got.numpy() - exact)
    assert (ours_error <= 2 * np.finfo(np.float32).eps * np.abs(exact) + 1e-30).all()  # float64, rounded
    assert ((got.numpy() - p.yq.numpy()) ** 2).mean() <= ((single - p.yq.numpy()) ** 2).mean() * 1.5
    np.testing.assert_allclose(prefixes[:, -1].numpy(), exact[:500], rtol=2 * np.finfo(np.float32).eps, atol=1e-30)


@pytest.mark.parametrize("alpha", [1e-300, 1e-16, 1e-14, 1e-11, 1e-6, 0.3])
@pytest.mark.parametrize(
    "kind", ["gaussian", "near_duplicate", "duplicates", "zero_columns", "discrete", "fewer_examples_than_d"]
)
def test_ridge_is_exact_for_every_alpha(kind, alpha):
    xs, ys, xq = solve_kind(kind)
    ridge = Ridge(alpha)
    together, alone = ridge.predict_prefixes(xs, ys, xq), ridge.predict(xs, ys, xq)
    for b in range(xs.shape[0]):
        x, y, q = xs[b].numpy(), ys[b].numpy(), xq[b].numpy()
        for k in range(1, xs.shape[1] + 1):
            assert_close_to_numpy(together[b, k - 1], x[:k], y[:k], q, alpha)
        assert_close_to_numpy(alone[b], x, y, q, alpha)


def test_ridge_issue_example_and_the_limit_alpha_to_zero():
    """Ridge(1e-16) on one example x = (1, 1.001), y = 1 raised LinAlgError; the answer is x/(‖x‖² + α)."""
    xs, ys = torch.tensor([[[1.0, 1.001]]], dtype=F64), torch.tensor([[1.0]], dtype=F64)
    xq = torch.eye(2, dtype=F64).unsqueeze(0)
    expected = xs[0, 0] / (xs[0, 0].dot(xs[0, 0]) + 1e-16)
    torch.testing.assert_close(Ridge(1e-16).predict(xs, ys, xq)[0], expected, rtol=1e-15, atol=0)
    torch.testing.assert_close(Ridge(1e-16).predict_prefixes(xs, ys, xq)[0, 0], expected, rtol=1e-15, atol=0)
    for kind in ("gaussian", "duplicates", "zero_columns", "discrete"):  # α → 0 is the minimum-norm solution
        xs, ys, xq = solve_kind(kind)
        torch.testing.assert_close(
            Ridge(1e-30).predict_prefixes(xs, ys, xq), LeastSquares().predict_prefixes(xs, ys, xq), rtol=1e-9, atol=1e-9
        )


DEGENERATE = {
    "zero_inputs": lambda xs: torch.zeros_like(xs),
    "one_point_repeated": lambda xs: xs[:, :1].expand_as(xs).clone(),
    "nan": lambda xs: xs.index_put(
        (torch.tensor([0]), torch.tensor([2]), torch.tensor([1])), torch.tensor(float("nan"), dtype=F64)
    ),
    "inf": lambda xs: xs.index_put(
        (torch.tensor([1]), torch.tensor([0]), torch.tensor([0])), torch.tensor(float("inf"), dtype=F64)
    ),
}


@pytest.mark.parametrize("case", sorted(DEGENERATE))
@pytest.mark.parametrize(
    "learner",
    [LeastSquares(), Ridge(1e-15), Ridge(1e-300), KNearest(3), KernelRidge("linear", 1e-300), GPPosterior("relu")],
    ids=repr,
)
def test_no_linear_algebra_error_escapes(learner, case):
    """Degenerate contexts give finite predictions (NaN only for prompts with a non-finite entry), never an error."""
    xs, ys, xq = solve_kind("gaussian", batch=3, n=10, d=4)
    xs = DEGENERATE[case](xs)
    bad = ~torch.isfinite(xs).all(-1).all(-1)
    for out in (learner.predict(xs, ys, xq), learner.predict_prefixes(xs, ys, xq)):
        assert torch.isfinite(out[~bad]).all()


# ----------------------------------------------------------------- k nearest neighbours (issue 15: 3)


def numpy_knn(x: np.ndarray, y: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """float64 squared distances from the differences, a stable sort (the earliest of equal points first)."""
    dist = ((x[None, :, :] - q[:, None, :]) ** 2).sum(-1)  # (m, n)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return y[order].mean(1)


def test_knn_issue_example_ties_go_to_the_earliest_point():
    xs = torch.tensor([-1.0, 1.0, 1.0, -1.0], dtype=F64).view(1, 4, 1)
    ys, xq = torch.tensor([[10.0, 20.0, 30.0, 40.0]], dtype=F64), torch.zeros(1, 1, 1, dtype=F64)
    prefixes = KNearest(1).predict_prefixes(xs, ys, xq)[0, :, 0]
    alone = [KNearest(1).predict(xs[:, :p], ys[:, :p], xq).item() for p in range(1, 5)]
    assert prefixes.tolist() == alone == [10.0, 10.0, 10.0, 10.0]


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_knn_prefixes_equal_predict_with_ties(k):
    """x ∈ {−1, 1}³: most distances tie; every prefix must pick what predict on that prefix picks, and numpy."""
    g = torch.Generator().manual_seed(k)
    xs = torch.randint(0, 2, (200, 12, 3), generator=g).to(F64) * 2 - 1
    xq = torch.randint(0, 2, (200, 2, 3), generator=g).to(F64) * 2 - 1
    ys = torch.randn(200, 12, generator=g, dtype=F64)
    together = KNearest(k).predict_prefixes(xs, ys, xq)
    for p in range(1, 13):
        assert torch.equal(together[:, p - 1], KNearest(k).predict(xs[:, :p], ys[:, :p], xq))
        expected = np.stack([numpy_knn(xs[b, :p].numpy(), ys[b, :p].numpy(), xq[b].numpy(), k) for b in range(200)])
        np.testing.assert_allclose(together[:, p - 1].numpy(), expected, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize(
    ("scale", "offset", "dtype"),
    [(1.0, 0.0, F64), (1e-6, 0.0, F64), (1e6, 0.0, F64), (1.0, 1e8, F64), (1e-3, 1e4, torch.float32),
     (1e-30, 0.0, torch.float32), (1e30, 0.0, torch.float32)],
)  # fmt: skip
def test_knn_neighbours_are_those_of_an_exact_float64_computation(scale, offset, dtype):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 15, 4, generator=g, dtype=F64)
    xs = (offset + scale * z).to(dtype)
    xq = (offset + scale * torch.randn(50, 3, 4, generator=g, dtype=F64)).to(dtype)
    ys = 2.0 ** torch.argsort(torch.rand(50, 15, generator=g), dim=1).to(dtype)  # the mean names the neighbours
    together = KNearest(3).predict_prefixes(xs, ys, xq)
    for p in (1, 2, 3, 8, 15):
        expected = np.stack(
            [
                numpy_knn(xs[b, :p].double().numpy(), ys[b, :p].double().numpy(), xq[b].double().numpy(), 3)
                for b in range(50)
            ]
        )
        np.testing.assert_allclose(together[:, p - 1].numpy(), expected.astype(together.numpy().dtype), rtol=1e-7)

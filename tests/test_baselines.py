"""Garg et al.'s baselines as learners: the batched Lasso against scikit-learn's, fitted per prompt and prefix."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from iclab.learners.lasso import Lasso, lasso

F64 = torch.float64


def sparse_prompts(batch: int, n: int, d: int, k: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n + 2, d, generator=generator, dtype=F64)
    w = torch.randn(batch, d, generator=generator, dtype=F64)
    keep = torch.rand(batch, d, generator=generator).argsort(-1) < k  # k random coordinates per prompt
    y = (x @ (w * keep).unsqueeze(-1)).squeeze(-1)
    return x[:, :n], y[:, :n], x[:, n:]


@pytest.mark.parametrize(("d", "n", "alpha"), [(8, 12, 0.1), (5, 9, 0.01), (10, 6, 0.3)])
def test_lasso_equals_scikit_learn_at_every_prefix(d, n, alpha):
    linear_model = pytest.importorskip("sklearn.linear_model", reason="the reference needs scikit-learn")
    xs, ys, xq = sparse_prompts(6, n, d, 3)
    ours = Lasso(alpha).predict_prefixes(xs, ys, xq)  # (B, n, m)
    for b in range(6):
        for k in range(1, n + 1):
            reference = linear_model.Lasso(alpha=alpha, fit_intercept=False, tol=1e-12, max_iter=10**7)
            reference.fit(xs[b, :k].numpy(), ys[b, :k].numpy())
            torch.testing.assert_close(ours[b, k - 1], torch.from_numpy(reference.predict(xq[b].numpy())),
                                       rtol=0, atol=1e-7)  # fmt: skip


def lasso_objective(x, y, w, alpha: float) -> float:
    """scikit-learn's Lasso objective (1/(2k))‖y − Xw‖² + α‖w‖₁, in float64 numpy."""
    return float(((y - x @ w) ** 2).sum() / (2 * len(y)) + alpha * abs(w).sum())


@pytest.mark.parametrize("kind", ["duplicated", "ties", "offset"])
def test_lasso_is_optimal_on_adversarial_inputs(kind):
    """Two equal input coordinates (G_AA singular if both enter), inputs in {−1, 1} (tied correlations, equal
    columns in short prefixes: w not unique) and a large common offset (an ill-conditioned XᵀX, where
    scikit-learn's coordinate descent stops short): at every prefix w meets the Lasso's optimality conditions
    (|X_jᵀ(y − Xw)|/k ≤ α, with equality and the sign of w_j where w_j ≠ 0) and its objective is no worse than
    scikit-learn's; where the prediction is unique and scikit-learn converges (equal coordinates equal in the
    query too) the predictions agree."""
    linear_model = pytest.importorskip("sklearn.linear_model", reason="the reference needs scikit-learn")
    xs, ys, xq = sparse_prompts(4, 10, 5, 2, seed=3)
    if kind == "duplicated":
        xs[..., 1], xq[..., 1] = xs[..., 0], xq[..., 0]
    elif kind == "ties":
        xs, xq = xs.sign(), xq.sign()
        ys = xs[..., :2].sum(-1)
    else:
        xs, xq = xs + 30.0, xq + 30.0
    gram = (xs.unsqueeze(-1) * xs.unsqueeze(-2)).cumsum(1)
    w = lasso(gram, (xs * ys.unsqueeze(-1)).cumsum(1), torch.arange(1.0, 11.0, dtype=F64).expand(4, 10), 0.05)
    for b in range(4):
        for k in range(1, 11):
            x, y, v = xs[b, :k].numpy(), ys[b, :k].numpy(), w[b, k - 1].numpy()
            correlation = x.T @ (y - x @ v) / k
            assert (abs(correlation) <= 0.05 * (1 + 1e-7)).all(), (b, k, correlation)
            on = v != 0
            assert (abs(correlation[on] - 0.05 * np.sign(v[on])) <= 1e-7).all(), (b, k, correlation, v)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # scikit-learn's "did not converge" on the offset inputs
                reference = linear_model.Lasso(alpha=0.05, fit_intercept=False, tol=1e-14, max_iter=10**6)
                reference.fit(x, y)
            assert lasso_objective(x, y, v, 0.05) <= lasso_objective(x, y, reference.coef_, 0.05) + 1e-9
            if kind == "duplicated":
                expected = torch.from_numpy(reference.predict(xq[b].numpy()))
                torch.testing.assert_close(xq[b] @ w[b, k - 1], expected, rtol=1e-6, atol=1e-6)


def test_lasso_edges():
    xs, ys, xq = sparse_prompts(4, 10, 6, 2, seed=1)
    xs[..., 4:] = 0.0  # unused coordinates (the curriculum): they stay out of w
    xq[..., 4:] = 5.0
    full = Lasso(0.05).predict(xs, ys, xq)
    torch.testing.assert_close(full, Lasso(0.05).predict(xs[..., :4], ys, xq[..., :4]), rtol=0, atol=1e-12)
    assert float(Lasso(1e6).predict(xs, ys, xq).abs().max()) == 0.0  # α above max|Xᵀy|/k: w = 0
    single = Lasso(0.05).predict(xs.float(), ys.float(), xq.float())
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), full, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="Lasso.alpha must be a finite number > 0"):
        Lasso(0.0)


def test_fitted_net_equals_a_network_trained_on_each_prompt_alone():
    """The batched fit against one torch network per prompt, same start and Adam: equal to rounding."""
    from iclab.learners import FittedNet

    xs, ys, xq = sparse_prompts(3, 7, 2, 2, seed=2)
    learner = FittedNet(hidden=6, steps=40, lr=0.01, seed=5)
    batched = learner.predict(xs, ys, xq)
    generator = torch.Generator().manual_seed(5)
    first0 = torch.randn(2, 6, generator=generator, dtype=F64) / 2**0.5
    second0 = torch.randn(6, generator=generator, dtype=F64) / 6**0.5
    for b in range(3):
        params = [first0.clone().requires_grad_(True), torch.zeros(6, dtype=F64, requires_grad=True),
                  second0.clone().requires_grad_(True), torch.zeros((), dtype=F64, requires_grad=True)]  # fmt: skip
        optimizer = torch.optim.Adam(params, lr=0.01)

        def net(x, params=params):
            return torch.relu(x @ params[0] + params[1]) @ params[2] + params[3]

        for _ in range(40):
            optimizer.zero_grad()
            ((net(xs[b]) - ys[b]) ** 2).mean().backward()
            optimizer.step()
        torch.testing.assert_close(batched[b], net(xq[b]).detach(), rtol=1e-10, atol=1e-10)
    prefixes = learner.predict_prefixes(xs, ys, xq)
    torch.testing.assert_close(prefixes[:, 3], learner.predict(xs[:, :4], ys[:, :4], xq), rtol=1e-10, atol=1e-10)


def test_fitted_net_learns_a_linear_function():
    from iclab.learners import FittedNet

    xs, ys, xq = sparse_prompts(8, 40, 3, 3, seed=4)
    fitted = FittedNet(hidden=50, steps=600, lr=0.01).predict(xs, ys, xq)
    zero_error = float((ys**2).mean())
    truth = torch.linalg.lstsq(xs, ys.unsqueeze(-1)).solution  # noiseless: least squares is w
    error = float(((fitted - (xq @ truth).squeeze(-1)) ** 2).mean())
    assert error < 0.02 * zero_error


def test_greedy_tree_interpolates_and_boosting_matches_scikit_learn():
    pytest.importorskip("sklearn", reason="tree learners need scikit-learn")
    from sklearn.ensemble import GradientBoostingRegressor

    from iclab.learners import boosted_trees, greedy_tree

    xs, ys, _ = sparse_prompts(4, 9, 3, 3, seed=6)
    at_context = greedy_tree().predict_prefixes(xs, ys, xs[:, 2:3])  # query = the third context point
    torch.testing.assert_close(at_context[:, 2:, 0], ys[:, 2:3].expand(4, 7), rtol=0, atol=1e-12)  # fitted exactly
    queries = torch.randn(4, 2, 3, dtype=F64, generator=torch.Generator().manual_seed(8))
    ours = boosted_trees(trees=10, depth=2).predict_prefixes(xs, ys, queries)
    reference = GradientBoostingRegressor(n_estimators=10, max_depth=2, learning_rate=0.3, random_state=0)
    expected = reference.fit(xs[1, :5].numpy(), ys[1, :5].numpy()).predict(queries[1].numpy())
    torch.testing.assert_close(ours[1, 4], torch.from_numpy(expected), rtol=0, atol=1e-12)

"""Learners that fit a model to each prompt's context (Garg et al.'s baselines): a two-layer ReLU network
trained by Adam (batched over prompts and prefixes in torch), and scikit-learn's greedy tree and
gradient-boosted trees (fitted in parallel over prompts; scikit-learn is the ``iclab[baselines]`` extra,
imported when such a learner is made)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from iclab.errors import UserError
from iclab.learners.base import Learner
from iclab.validate import check_number


class FittedNet(Learner):
    """f(x) = Σ_{i≤h} a_i relu(u_iᵀx + c_i) + e fitted to the context by ``steps`` full-batch Adam steps
    (learning rate ``lr``) on the mean squared error, every prompt and prefix at once. Every fit starts
    from the same weights, drawn from ``seed`` (u ~ N(0, I/d), a ~ N(0, 1/h), biases 0), so a prompt's
    prediction does not depend on the other prompts in the batch."""

    def __init__(self, hidden: int = 100, steps: int = 1000, lr: float = 5e-3, seed: int = 0) -> None:
        self.hidden = check_number("FittedNet.hidden", hidden, ge=1, integer=True)
        self.steps = check_number("FittedNet.steps", steps, ge=0, integer=True)
        self.lr = check_number("FittedNet.lr", lr, gt=0.0)
        self.seed = check_number("FittedNet.seed", seed, ge=0, integer=True)
        self.name = f"net(hidden={self.hidden}, steps={self.steps}, lr={self.lr:g})"

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        weights = torch.ones_like(ys)  # (B, n): every example counts
        return self._fit(xs, ys, weights, xq)

    def predict_prefixes(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        """One network per (prompt, prefix), trained together: the examples beyond the prefix weigh 0."""
        batch, n, _ = xs.shape
        inside = torch.ones(n, n, dtype=xs.dtype, device=xs.device).tril()  # (prefix, example)

        def per_prefix(t: Tensor) -> Tensor:  # (B, …) → (B·n, …): a copy for every prefix
            return t.unsqueeze(1).expand(batch, n, *t.shape[1:]).reshape(batch * n, *t.shape[1:])

        fits = self._fit(per_prefix(xs), per_prefix(ys), inside.expand(batch, n, n).reshape(-1, n), per_prefix(xq))
        return fits.view(batch, n, xq.shape[1])

    def _fit(self, xs: Tensor, ys: Tensor, weights: Tensor, xq: Tensor) -> Tensor:
        """xs (B, n, d), ys (B, n), weights (B, n) of each example in its prompt's loss, xq (B, m, d) → (B, m)."""
        batch, _, d = xs.shape
        generator = torch.Generator().manual_seed(self.seed)
        first = torch.randn(d, self.hidden, generator=generator, dtype=torch.float64) / d**0.5
        second = torch.randn(self.hidden, generator=generator, dtype=torch.float64) / self.hidden**0.5
        like = {"dtype": xs.dtype, "device": xs.device}
        params = [
            first.to(**like).expand(batch, d, self.hidden).clone().requires_grad_(True),
            torch.zeros(batch, 1, self.hidden, **like, requires_grad=True),
            second.to(**like).expand(batch, self.hidden).clone().requires_grad_(True),
            torch.zeros(batch, 1, **like, requires_grad=True),
        ]
        optimizer = torch.optim.Adam(params, lr=self.lr)
        share = weights / weights.sum(-1, keepdim=True)  # each prompt's loss is its weighted mean
        with torch.enable_grad():
            for _ in range(self.steps):
                optimizer.zero_grad(set_to_none=True)
                loss = ((self._net(params, xs) - ys) ** 2 * share).sum()  # prompts independent
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            return self._net(params, xq)

    @staticmethod
    def _net(params: list[Tensor], x: Tensor) -> Tensor:
        first, bias, second, out = params
        return (torch.relu(x @ first + bias) * second.unsqueeze(1)).sum(-1) + out


def _scikit_learn() -> Any:
    try:
        import sklearn.ensemble
        import sklearn.tree
    except ImportError:
        raise UserError(
            "tree learners need scikit-learn: pip install 'iclab[baselines]' (or pip install scikit-learn)"
        ) from None
    return sklearn


class SklearnRegressor(Learner):
    """A scikit-learn regressor made by ``make()`` and fitted to each prompt's context (each prefix, for
    ``predict_prefixes``), the fits spread over ``jobs`` threads (default: every core)."""

    def __init__(self, make: Callable[[], Any], name: str, jobs: int | None = None) -> None:
        self.make, self.name, self.jobs = make, name, jobs

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        n = xs.shape[1]
        return self._fit_all(xs, ys, xq, [n]).to(xs.dtype)[:, 0]

    def predict_prefixes(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        return self._fit_all(xs, ys, xq, list(range(1, xs.shape[1] + 1))).to(xs.dtype)

    def _fit_all(self, xs: Tensor, ys: Tensor, xq: Tensor, prefixes: list[int]) -> Tensor:
        """(B, len(prefixes), m) predictions, one fit per prompt and prefix."""
        from joblib import Parallel, delayed

        x, y, q = (t.detach().cpu().double().numpy() for t in (xs, ys, xq))
        jobs = [(b, k) for b in range(x.shape[0]) for k in prefixes]
        fits = Parallel(n_jobs=self.jobs or -1, prefer="threads")(
            delayed(_fit_predict)(self.make, x[b, :k], y[b, :k], q[b]) for b, k in jobs
        )
        out = torch.tensor(np.stack(fits), dtype=torch.float64, device=xs.device)
        return out.view(x.shape[0], len(prefixes), q.shape[1])


def _fit_predict(make: Callable[[], Any], x: np.ndarray, y: np.ndarray, query: np.ndarray) -> np.ndarray:
    return make().fit(x, y).predict(query)


def greedy_tree(max_depth: int | None = None) -> SklearnRegressor:
    """A CART regression tree grown greedily on the context (Garg et al.'s "greedy tree learning"); depth
    unlimited unless ``max_depth``."""
    sklearn = _scikit_learn()
    depth = None if max_depth is None else check_number("tree.max_depth", max_depth, ge=1, integer=True)
    return SklearnRegressor(lambda: sklearn.tree.DecisionTreeRegressor(max_depth=depth, random_state=0),
                            f"tree(max_depth={depth})")  # fmt: skip


def boosted_trees(trees: int = 100, depth: int = 6, lr: float = 0.3) -> SklearnRegressor:
    """Gradient-boosted regression trees on the context, with XGBoost's default sizes (100 trees of depth 6,
    learning rate 0.3), through scikit-learn's ``GradientBoostingRegressor``."""
    sklearn = _scikit_learn()
    trees = check_number("boosted_trees.trees", trees, ge=1, integer=True)
    depth = check_number("boosted_trees.depth", depth, ge=1, integer=True)
    lr = check_number("boosted_trees.lr", lr, gt=0.0)
    return SklearnRegressor(
        lambda: sklearn.ensemble.GradientBoostingRegressor(n_estimators=trees, max_depth=depth, learning_rate=lr,
                                                           random_state=0),
        f"boosted_trees(trees={trees}, depth={depth}, lr={lr:g})",
    )  # fmt: skip

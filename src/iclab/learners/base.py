"""The Learner protocol: everything that predicts in context, algorithms and trained models alike.

``predict(xs, ys, xq, descriptor=None) -> (B, m)`` on torch tensors, dtype preserved, batched;
``predict_prefixes`` gives the prediction after every prefix 1..n at once: (B, n, m).
"""

from __future__ import annotations

import torch
from torch import Tensor

from iclab.learners.algorithms import moment_statistics, sufficient_statistics


class Learner:
    """Base class. Subclasses implement ``predict``; ``predict_prefixes`` defaults to a loop over k."""

    name = "learner"

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        """xs: (B, n, d), ys: (B, n), xq: (B, m, d), descriptor: (B, k) or None → (B, m)."""
        raise NotImplementedError

    def predict_prefixes(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        """Predictions from the first k examples for k = 1..n: (B, n, m)."""
        n = xs.shape[1]
        return torch.stack([self.predict(xs[:, :k], ys[:, :k], xq, descriptor) for k in range(1, n + 1)], dim=1)

    def __repr__(self) -> str:
        return self.name


class LinearLearner(Learner):
    """A learner whose weights are a function of (XᵀX, Xᵀy, k); all prefixes come from cumulative sums.
    A subclass whose weights ignore XᵀX sets ``needs_gram = False`` and gets ``gram=None``, which spares the
    (B, n, d, d) tensor of the prefixes' Gram matrices."""

    needs_gram = True

    def weights(self, gram: Tensor | None, moment: Tensor, count: Tensor) -> Tensor:
        """gram: (..., d, d) (None when ``needs_gram`` is False), moment: (..., d), count: (...) → w: (..., d)."""
        raise NotImplementedError

    def _statistics(self, xs: Tensor, ys: Tensor, prefixes: bool) -> tuple[Tensor | None, Tensor, Tensor]:
        if self.needs_gram:
            return sufficient_statistics(xs, ys, prefixes)
        return None, *moment_statistics(xs, ys, prefixes)

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        w = self.weights(*self._statistics(xs, ys, prefixes=False))  # (B, d)
        return torch.einsum("bmd,bd->bm", xq, w)

    def predict_prefixes(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        w = self.weights(*self._statistics(xs, ys, prefixes=True))  # (B, n, d)
        return torch.einsum("bmd,bkd->bkm", xq, w)

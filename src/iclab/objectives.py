"""Training objectives (``train.objective``): the loss of a model on one batch of prompts, through the model
interface (:class:`iclab.models.base.InContextModel`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from iclab.models.base import InContextModel
from iclab.prompts import Prompts

Objective = Callable[[InContextModel, Prompts], Tensor]


def query_objective(model: InContextModel, batch: Prompts) -> Tensor:
    """Mean squared error at the queries (no ½): the loss of the LSA theory papers."""
    return ((model.predict(batch.xs, batch.ys, batch.xq, batch.descriptor) - batch.yq) ** 2).mean()


def all_prefixes_objective(model: InContextModel, batch: Prompts) -> Tensor:
    """Mean squared error at the queries averaged over every context prefix k = 1..n (``predict_prefixes``).
    For prompts of i.i.d. examples it has the expectation of Garg et al.'s loss, which averages the error of
    the prediction of each y_{k+1} from the k examples before it."""
    predictions = model.predict_prefixes(batch.xs, batch.ys, batch.xq, batch.descriptor)  # (B, n, m)
    return ((predictions - batch.yq.unsqueeze(1)) ** 2).mean()


def next_example_objective(model: InContextModel, batch: Prompts) -> Tensor:
    """Garg et al.'s loss: the mean squared error of each next example's label predicted from the examples
    before it, prefixes k = 1..n (x_{k+1}'s label for k < n, the first query's for k = n; ``predict_next``).
    Its expectation equals ``all_prefixes``'s for i.i.d. examples; a GPT-2 computes it in one causal pass over
    2n + 1 tokens instead of 2n + n·m."""
    targets = torch.cat([batch.ys[:, 1:], batch.yq[:, :1]], dim=1)  # (B, n)
    return ((model.predict_next(batch.xs, batch.ys, batch.xq, batch.descriptor) - targets) ** 2).mean()


OBJECTIVES: dict[str, Objective] = {
    "query": query_objective,
    "all_prefixes": all_prefixes_objective,
    "next_example": next_example_objective,
}

"""Error of a learner on prompts: at the query, and as a curve over the number of context examples."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from iclab.learners.base import Learner
from iclab.prompts import Prompts


@dataclass
class ErrorCurve:
    """Mean squared error at the query after k = 1..n examples, with its Monte Carlo standard error."""

    name: str
    ks: Tensor  # (n,) number of examples
    mse: Tensor  # (n,) mean over prompts and queries
    sem: Tensor  # (n,) standard error of the mean over prompts

    def to_dict(self) -> dict:
        return {"name": self.name, "k": self.ks.tolist(), "mse": self.mse.tolist(), "sem": self.sem.tolist()}


def _mean_and_sem(per_prompt: Tensor) -> tuple[Tensor, Tensor]:
    """per_prompt: (B, …) float64 → mean and standard error over the batch dimension."""
    batch = per_prompt.shape[0]
    mean = per_prompt.mean(0)
    sem = per_prompt.std(0, correction=1) / batch**0.5 if batch > 1 else torch.full_like(mean, float("nan"))
    return mean, sem


def query_loss(learner: Learner, prompts: Prompts, chunk_size: int = 8192) -> tuple[float, float]:
    """Mean squared error at the queries over all prompts (no ½) and its standard error."""
    per_prompt = []
    for start in range(0, prompts.batch, chunk_size):
        part = prompts.slice(start, start + chunk_size)
        pred = learner.predict(part.xs, part.ys, part.xq, part.descriptor)  # (b, m)
        per_prompt.append(((pred - part.yq) ** 2).mean(-1).double().cpu())
    mean, sem = _mean_and_sem(torch.cat(per_prompt))
    return float(mean), float(sem)


def error_curve(learner: Learner, prompts: Prompts, chunk_size: int = 256) -> ErrorCurve:
    """The learner's query error after each prefix 1..n of the context, all prefixes in one batched pass
    per chunk of prompts (``learner.predict_prefixes``; chunks of 256 measured fastest, benchmarks/)."""
    per_prompt = []
    for start in range(0, prompts.batch, chunk_size):
        part = prompts.slice(start, start + chunk_size)
        pred = learner.predict_prefixes(part.xs, part.ys, part.xq, part.descriptor)  # (b, n, m)
        per_prompt.append(((pred - part.yq.unsqueeze(1)) ** 2).mean(-1).double().cpu())  # (b, n)
    mean, sem = _mean_and_sem(torch.cat(per_prompt))
    ks = torch.arange(1, prompts.n + 1)
    return ErrorCurve(name=learner.name, ks=ks, mse=mean, sem=sem)

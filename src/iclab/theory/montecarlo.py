"""Monte Carlo estimates of a learner's query loss, with their standard errors, on any prompt sampler."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from iclab.learners import Learner, from_model
from iclab.prompts import Prompts


class PromptSampler(Protocol):
    """Anything with ``sample(batch, generator, dtype=...) -> Prompts`` (every iclab task)."""

    def sample(self, batch: int, generator: torch.Generator, *, dtype: torch.dtype = ...) -> Prompts: ...


@dataclass(frozen=True)
class MCEstimate:
    """Mean of the per-prompt squared query error over ``samples`` prompts and its standard error."""

    mean: float
    sem: float
    samples: int

    def z_score(self, value: float) -> float:
        """(mean − value)/sem: how many standard errors ``value`` lies from the estimate."""
        return (self.mean - value) / self.sem


def mc_loss(
    learner: Learner | nn.Module,
    task: PromptSampler,
    samples: int = 100_000,
    seed: int = 0,
    chunk: int = 20_000,
) -> MCEstimate:
    """E(ŷ − y_q)² (no ½) of ``learner`` (a Learner or an iclab model) on ``samples`` fresh float64 prompts
    of ``task``, drawn in chunks from a generator seeded with ``seed``; the per-prompt loss averages the
    prompt's queries, and the standard error is over prompts."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ValueError(f"samples must be an integer >= 2, got {samples!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an integer >= 1, got {chunk!r}")
    if isinstance(learner, nn.Module):
        learner = from_model(learner)
    if not hasattr(learner, "predict"):
        raise ValueError(f"learner must be a Learner or an iclab model, got {type(learner).__name__}")
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for start in range(0, samples, chunk):
        p = task.sample(min(chunk, samples - start), generator, dtype=torch.float64)
        pred = learner.predict(p.xs, p.ys, p.xq, p.descriptor)  # (b, m)
        losses.append(((pred.double() - p.yq) ** 2).mean(-1))  # (b,) per-prompt loss
    per_prompt = torch.cat(losses)
    sem = float(per_prompt.std(correction=1)) / math.sqrt(samples)
    return MCEstimate(mean=float(per_prompt.mean()), sem=sem, samples=samples)

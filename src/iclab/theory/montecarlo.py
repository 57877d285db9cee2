"""Monte Carlo estimates of a learner's query loss, with their standard errors, on any prompt sampler."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from iclab.evaluate import query_loss
from iclab.learners import Learner, from_model
from iclab.prompts import Prompts
from iclab.validate import check_number


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
    prompt's queries, and the standard error is over prompts (:func:`iclab.evaluate.query_loss`)."""
    check_number("samples", samples, ge=2, integer=True)
    check_number("chunk", chunk, ge=1, integer=True)
    if isinstance(learner, nn.Module):
        learner = from_model(learner)
    if not hasattr(learner, "predict"):
        raise ValueError(f"learner must be a Learner or an iclab model, got {type(learner).__name__}")
    generator = torch.Generator().manual_seed(seed)
    prompts = Prompts.concat(
        [task.sample(min(chunk, samples - start), generator, dtype=torch.float64) for start in range(0, samples, chunk)]
    )
    mean, sem = query_loss(learner, prompts, chunk_size=chunk)
    return MCEstimate(mean=mean, sem=sem, samples=samples)

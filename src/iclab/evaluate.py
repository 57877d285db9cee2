"""Error of a learner on prompts: at the query, and as a curve over the number of context examples.

Losses are taken in float64 (predictions and labels are cast before the difference, so a float32 model's
large errors neither overflow nor round). Beside the mean and its standard error each result carries a
percentile bootstrap interval and the share of the loss carried by the worst 0.1 % of prompts: when a few
prompts dominate (a heavy tail), the standard error understates how much a fresh set of prompts can differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from iclab.learners.base import Learner
from iclab.prompts import Prompts

if TYPE_CHECKING:
    from iclab.tasks.base import Sampler

TAIL_FRACTION = 0.001  # the "top 0.1 %" of prompts whose share of the loss is reported
HEAVY_TAIL_FACTOR = 50.0  # heavy: those prompts carry more than 50 times their share (5 % of the loss)
RESAMPLES = 1000  # bootstrap resamples
CONFIDENCE = 0.95  # of the bootstrap interval


@dataclass(frozen=True)
class LossStats:
    """Mean over prompts of a per-prompt loss, its standard error, a bootstrap interval [low, high] at
    ``confidence`` and ``top_share``: the share of the summed loss from the worst ⌈0.1 % · prompts⌉ prompts."""

    mean: float
    sem: float
    low: float
    high: float
    top_share: float
    prompts: int
    confidence: float = CONFIDENCE

    @property
    def heavy_tail(self) -> bool:
        """Whether the worst 0.1 % of prompts carry more than 50 times their share of the loss."""
        return bool(is_heavy_tail(torch.tensor(self.top_share), self.prompts))

    def to_dict(self) -> dict:
        return {
            "mean": self.mean,
            "sem": self.sem,
            "low": self.low,
            "high": self.high,
            "confidence": self.confidence,
            "top_share": self.top_share,
            "heavy_tail": self.heavy_tail,
            "prompts": self.prompts,
        }


@dataclass
class ErrorCurve:
    """Mean squared error at the query after k = 1..n examples, with its standard error, bootstrap interval
    [low, high] and tail share (see :class:`LossStats`) at each k."""

    name: str
    ks: Tensor  # (n,) number of examples
    mse: Tensor  # (n,) mean over prompts and queries
    sem: Tensor  # (n,) standard error of the mean over prompts
    low: Tensor  # (n,) bootstrap interval
    high: Tensor  # (n,)
    top_share: Tensor  # (n,) share of the loss from the worst 0.1 % of prompts
    prompts: int
    confidence: float = CONFIDENCE

    @property
    def heavy_tail(self) -> Tensor:
        """(n,) bool: the example counts whose loss has a heavy tail (see :class:`LossStats`)."""
        return is_heavy_tail(self.top_share, self.prompts)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "k": self.ks.tolist(),
            "mse": self.mse.tolist(),
            "sem": self.sem.tolist(),
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "confidence": self.confidence,
            "top_share": self.top_share.tolist(),
            "heavy_tail": self.heavy_tail.tolist(),
            "prompts": self.prompts,
        }


def is_heavy_tail(top_share: Tensor, prompts: int) -> Tensor:
    """top_share: (...) from :func:`loss_statistics` over ``prompts`` prompts → (...) bool."""
    return top_share > HEAVY_TAIL_FACTOR * _tail_count(prompts) / prompts


def _tail_count(prompts: int) -> int:
    return max(1, math.ceil(TAIL_FRACTION * prompts))


def _mean_and_sem(losses: Tensor) -> tuple[Tensor, Tensor]:
    """losses: (B, …) float64 → mean and standard error over the batch dimension (NaN for one prompt)."""
    batch = losses.shape[0]
    mean = losses.mean(0)
    sem = losses.std(0, correction=1) / batch**0.5 if batch > 1 else torch.full_like(mean, math.nan)
    return mean, sem


def loss_statistics(
    per_prompt: Tensor, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-prompt losses (B, …) → mean, standard error, bootstrap low and high, top share, each (…).

    The interval is the percentile bootstrap of the mean: ``resamples`` resamples of the B prompts with
    replacement (one draw of prompts shared by every column, from a generator seeded with ``seed``, so the
    result is reproducible), their means' (1 ± confidence)/2 quantiles. The top share is 0 where the loss
    is 0. One prompt gives NaN for the standard error and the interval. Raises ValueError for no prompts or
    a confidence outside (0, 1).
    """
    batch = per_prompt.shape[0]
    if batch < 1:
        raise ValueError("loss statistics need at least one prompt, got none")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    losses = per_prompt.double().reshape(batch, -1)  # (B, c)
    mean, sem = _mean_and_sem(losses)
    low, high = _bootstrap(losses, confidence, resamples, seed) if batch > 1 else (sem.clone(), sem.clone())
    total, top = losses.sum(0), losses.topk(_tail_count(batch), dim=0).values.sum(0)
    top_share = torch.where(total == 0, torch.zeros_like(total), top / total)
    shape = per_prompt.shape[1:]
    return mean.view(shape), sem.view(shape), low.view(shape), high.view(shape), top_share.view(shape)


def _bootstrap(losses: Tensor, confidence: float, resamples: int, seed: int) -> tuple[Tensor, Tensor]:
    """losses: (B, c) → the percentile bootstrap interval of the column means, low (c,) and high (c,)."""
    batch = losses.shape[0]
    generator = torch.Generator(device=losses.device).manual_seed(seed)
    per_chunk = max(1, 2**22 // batch)  # resamples per (resamples × B) count matrix, about 32 MB
    means = []
    for start in range(0, resamples, per_chunk):
        rows = min(per_chunk, resamples - start)
        picks = torch.randint(batch, (rows, batch), generator=generator, device=losses.device)
        counts = torch.zeros(rows, batch, dtype=losses.dtype, device=losses.device)
        counts.scatter_add_(1, picks, torch.ones_like(counts))  # how often each prompt was drawn
        means.append(counts @ losses / batch)  # (rows, c)
    tail = (1 - confidence) / 2
    quantiles = torch.tensor([tail, 1 - tail], dtype=losses.dtype, device=losses.device)
    low, high = torch.quantile(torch.cat(means), quantiles, dim=0)
    return low, high


def per_prompt_loss(learner: Learner, prompts: Prompts, chunk_size: int = 8192, prefixes: bool = False) -> Tensor:
    """Squared error at the queries averaged over each prompt's queries, in float64 on the CPU: (B,), or
    (B, n) after every prefix 1..n with ``prefixes=True`` (``learner.predict_prefixes``), ``chunk_size``
    prompts at a time."""
    per_prompt = []
    for start in range(0, prompts.batch, chunk_size):
        part = prompts.slice(start, start + chunk_size)
        if prefixes:
            pred = learner.predict_prefixes(part.xs, part.ys, part.xq, part.descriptor)  # (b, n, m)
            target = part.yq.unsqueeze(1)
        else:
            pred, target = learner.predict(part.xs, part.ys, part.xq, part.descriptor), part.yq  # (b, m)
        per_prompt.append(((pred.double() - target.double()) ** 2).mean(-1).cpu())
    return torch.cat(per_prompt)


def query_loss(learner: Learner, prompts: Prompts, chunk_size: int = 8192) -> tuple[float, float]:
    """Mean squared error at the queries over all prompts (no ½) and its standard error (NaN for one prompt);
    :func:`query_loss_stats` adds the bootstrap interval and the tail share."""
    mean, sem = _mean_and_sem(per_prompt_loss(learner, prompts, chunk_size))
    return float(mean), float(sem)


def query_loss_stats(learner: Learner, prompts: Prompts, chunk_size: int = 8192, seed: int = 0) -> LossStats:
    """:func:`query_loss` with a bootstrap interval and the tail share (:func:`loss_statistics`)."""
    return _loss_stats(per_prompt_loss(learner, prompts, chunk_size), seed)


def _loss_stats(per_prompt: Tensor, seed: int) -> LossStats:
    """per_prompt: (B,) → :class:`LossStats` (:func:`loss_statistics`)."""
    mean, sem, low, high, top_share = (float(v) for v in loss_statistics(per_prompt, seed=seed))
    return LossStats(mean, sem, low, high, top_share, per_prompt.shape[0])


def sampled_loss_stats(
    learner: Learner,
    task: Sampler,
    count: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    chunk_size: int = 8192,
    seed: int = 0,
) -> LossStats:
    """:func:`query_loss_stats` on ``count`` fresh prompts of ``task`` drawn ``chunk_size`` at a time from
    ``generator`` (the prompts of ``task.sample_in_chunks``), each chunk dropped once its losses are taken: the
    memory is one chunk of prompts and 8 bytes per prompt, whatever ``count``."""
    per_prompt = paired_prompt_losses([learner], task, count, generator, dtype, device, chunk_size)
    return _loss_stats(per_prompt[:, 0], seed)


def paired_prompt_losses(
    learners: list[Learner],
    task: Sampler,
    count: int,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    chunk_size: int = 8192,
) -> Tensor:
    """Per-prompt query losses (count, K) float64 of K ``learners`` on the same ``count`` fresh prompts of
    ``task``, drawn ``chunk_size`` at a time from ``generator`` (common random numbers: the interval of a
    difference of two columns is far narrower than either's; :func:`loss_statistics` takes the columns)."""
    columns = []
    for start in range(0, count, chunk_size):
        prompts = task.sample(min(chunk_size, count - start), generator, dtype=dtype).to(device)
        columns.append(torch.stack([per_prompt_loss(learner, prompts, chunk_size) for learner in learners], dim=1))
    return torch.cat(columns)


def error_curve(learner: Learner, prompts: Prompts, chunk_size: int = 256, seed: int = 0) -> ErrorCurve:
    """The learner's query error after each prefix 1..n of the context, all prefixes in one batched pass
    per chunk of prompts (``learner.predict_prefixes``), with the statistics of :func:`loss_statistics`
    at every prefix."""
    per_prompt = per_prompt_loss(learner, prompts, chunk_size, prefixes=True)  # (B, n)
    mean, sem, low, high, top_share = loss_statistics(per_prompt, seed=seed)
    ks = torch.arange(1, prompts.n + 1)
    return ErrorCurve(learner.name, ks, mean, sem, low, high, top_share, prompts.batch)

"""What every task family provides: the sampler interface the trainer, the evaluators and the probe use."""

from __future__ import annotations

import torch
from torch import Tensor

from iclab.config import TaskConfig
from iclab.kernels import Kernel
from iclab.learners.base import Learner
from iclab.prompts import Prompts


class Sampler:
    """A task family's prompt sampler, built by ``Sampler(cfg, seed)`` from its config and the run seed (fixed
    random parts such as a rotation or a set of means are drawn from the seed).

    Subclasses implement :meth:`sample` and :meth:`reference_learner`; they override :meth:`x_covariance`
    when x has one fixed covariance, ``kernel`` when the labels come from a kernel. A descriptor's length is
    declared by the config (``TaskConfig.descriptor_dim``).
    """

    kernel: Kernel | None = None  # the kernel of the label function, where there is one

    def __init__(self, cfg: TaskConfig, seed: int = 0) -> None:
        self.cfg, self.seed = cfg, seed

    @property
    def d(self) -> int:
        return self.cfg.d

    @property
    def n(self) -> int:
        return self.cfg.n

    @property
    def x_on_sphere(self) -> bool:
        """Whether every x lies on the unit sphere (query sweeps then follow great circles)."""
        return False

    @property
    def descriptor_dim(self) -> int:
        """Length k of the descriptor vector given to the model (0: none; declared by the task's config)."""
        return self.cfg.descriptor_dim

    def sample(
        self,
        batch: int,
        generator: torch.Generator,
        *,
        n: int | None = None,
        d_active: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Prompts:
        """Draw ``batch`` prompts with ``n`` context examples (default task.n) and task.n_queries queries:
        xs (B, n, d), ys (B, n), xq (B, m, d), yq (B, m). ``d_active`` < d zeroes the trailing coordinates of
        x (curriculum). The result depends only on the generator's state and ``dtype``."""
        raise NotImplementedError

    def sample_in_chunks(
        self, count: int, generator: torch.Generator, dtype: torch.dtype = torch.float32, chunk: int = 8192
    ) -> Prompts:
        """``count`` prompts drawn ``chunk`` at a time (bounded memory while sampling)."""
        sizes = [min(chunk, count - start) for start in range(0, count, chunk)]
        return Prompts.concat([self.sample(size, generator, dtype=dtype) for size in sizes])

    def reference_learner(self) -> Learner:
        """The task's Bayes-optimal (or best known) predictor, which probes and reports compare against."""
        raise NotImplementedError

    def zero_error(self) -> float | None:
        """E[y_q²], the query error of predicting 0, in closed form (None where there is none): the unit of
        Garg et al.'s normalised errors."""
        return None

    def x_covariance(self) -> Tensor | None:
        """The fixed covariance Λ (d, d) float64 of x around its mean, or None when there is none."""
        return None

    def with_changes(self, **changes: object) -> Sampler:
        """The same task (same seed, so the same fixed random parts) with config fields changed, e.g.
        ``n_queries=10``; the new config is validated."""
        return type(self)(self.cfg.with_changes(**changes), self.seed)


def gaussian_inputs(
    batch: int, count: int, d: int, generator: torch.Generator, dtype: torch.dtype, d_active: int | None = None
) -> Tensor:
    """x ~ N(0, I_d): (batch, count, d), the coordinates from ``d_active`` on set to 0 (the curriculum)."""
    x = torch.randn(batch, count, d, generator=generator, dtype=dtype)
    if d_active is not None and d_active < d:
        x[..., d_active:] = 0.0
    return x


def noisy_prompts(
    x: Tensor, f: Tensor, n: int, noise_std: float, generator: torch.Generator, w: Tensor | None = None
) -> Prompts:
    """Prompts from inputs x (B, n + m, d) and noise-free labels f (B, n + m): y = f + N(0, noise_std²) drawn
    from ``generator`` (after everything else), the first n points the context and the rest the queries."""
    y = f + noise_std * torch.randn(f.shape, generator=generator, dtype=f.dtype)
    return Prompts(xs=x[:, :n], ys=y[:, :n], xq=x[:, n:], yq=y[:, n:], w=w)

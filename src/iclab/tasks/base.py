"""What every prompt sampler shares."""

from __future__ import annotations

from dataclasses import replace

from iclab.config import TaskConfig


class Sampler:
    """A task family's sampler: holds its TaskConfig and seed; subclasses add ``descriptor_dim`` and ``sample``."""

    cfg: TaskConfig
    seed: int

    def with_changes(self, **changes: object) -> Sampler:
        """The same task (same seed, so the same fixed rotation and means) with config fields changed,
        e.g. ``n_queries=10``."""
        return type(self)(replace(self.cfg, **changes), self.seed)

    @property
    def d(self) -> int:
        return self.cfg.d

    @property
    def n(self) -> int:
        return self.cfg.n

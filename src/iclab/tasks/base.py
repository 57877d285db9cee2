"""What every prompt sampler shares."""

from __future__ import annotations

from iclab.config import TaskConfig


class Sampler:
    """A task family's sampler: holds its TaskConfig; subclasses add ``descriptor_dim`` and ``sample``."""

    cfg: TaskConfig

    @property
    def d(self) -> int:
        return self.cfg.d

    @property
    def n(self) -> int:
        return self.cfg.n

"""Dot-product kernels K(x, x') = h(xᵀx'), shared by the GP tasks, the kernel learners and the
kernel-attention constructions (an attention activation h induces the kernel h(xᵀx')).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

KERNELS = ("linear", "relu", "exp")


@dataclass(frozen=True)
class Kernel:
    """K(x, x') = h(xᵀx'/scale) with h = identity (linear), max(·, 0) (relu) or exp (exp)."""

    name: str
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}; got {self.name!r}")
        if not self.scale > 0:
            raise ValueError(f"kernel scale must be > 0, got {self.scale!r}")

    def activation(self, scores: Tensor) -> Tensor:
        """h applied elementwise to already-scaled inner products."""
        if self.name == "linear":
            return scores
        if self.name == "relu":
            return torch.relu(scores)
        return torch.exp(scores)

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        """a: (B, p, d), b: (B, q, d) → Gram block (B, p, q)."""
        return self.activation(a @ b.transpose(-1, -2) / self.scale)

    def __str__(self) -> str:
        return self.name if self.name != "exp" or self.scale == 1.0 else f"exp(scale={self.scale:g})"


def as_kernel(kernel: Kernel | str) -> Kernel:
    """``kernel`` itself, or the kernel of that name with scale 1 (``"relu"`` → ``Kernel("relu")``)."""
    return kernel if isinstance(kernel, Kernel) else Kernel(kernel)

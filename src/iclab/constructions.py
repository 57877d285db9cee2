"""Hand-set weights that make attention models run known algorithms exactly.

- :func:`gd_model`: L layers of linear self-attention = L steps of gradient descent from w₀ = 0 with step
  lr (von Oswald et al. 2023): W_KQ = I on x, W_PV = −lr on the label.
- :func:`functional_gd_model`: L layers of kernel attention with activation h = L steps of functional GD in
  the RKHS of K(x, x') = h(xᵀx'/s) (Cheng, Chen, Sra 2024): W_KQ = I/s on x, W_PV = −lr on the label.

Both read out minus the query's label slot (see :mod:`iclab.models.lsa`), which then equals f_L(x_q).
"""

from __future__ import annotations

import torch

from iclab.kernels import Kernel, as_kernel
from iclab.models.lsa import LSA, LSAShape


def _construct(d: int, layers: int, lr: float, activation: str, key_scale: float) -> LSA:
    if d < 1 or layers < 1:
        raise ValueError(f"d and layers must be >= 1, got d={d}, layers={layers}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    model = LSA(LSAShape(d=d, layers=layers, param="sparse", activation=activation)).double()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.kq_block.copy_(torch.eye(d, dtype=torch.float64).unsqueeze(0) / key_scale)
            block.attn.value.fill_(-lr)
    return model


def gd_model(d: int, layers: int, lr: float) -> LSA:
    """A float64 LSA whose prediction equals ``GradientDescent(layers, lr)``."""
    return _construct(d, layers, lr, "linear", 1.0)


def functional_gd_model(d: int, layers: int, kernel: Kernel | str, lr: float) -> LSA:
    """A float64 kernel-attention model whose prediction equals ``FunctionalGD(kernel, layers, lr)``."""
    kernel = as_kernel(kernel)
    return _construct(d, layers, lr, kernel.name, kernel.scale)

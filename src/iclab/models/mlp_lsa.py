"""MLP + LSA (Kim & Suzuki 2024): a learned feature map φ(x) = W₂ relu(W₁x + b₁) + b₂ applied to every
input, then linear self-attention on the stacked tokens (φ(x_i), y_i[, s]). The LSA does linear regression
in context on the learned features, so it can fit labels that are non-linear in x (e.g. y = (wᵀx)²)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from iclab.models.hooks import HookPoint
from iclab.models.lsa import LSA, LSAShape


class MLPLSA(nn.Module):
    """Feature MLP (d → hidden → k) then an LSA on width k + 1 + descriptor; hooks ``features`` (B, n+m, k)
    and the LSA's hooks under ``lsa.``."""

    token_format = "stacked"

    def __init__(self, d: int, hidden: int, feature_dim: int, shape: LSAShape) -> None:
        super().__init__()
        if shape.d != feature_dim:
            raise ValueError(f"the LSA must read the {feature_dim} features, got LSAShape.d={shape.d}")
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, feature_dim))
        self.features = HookPoint()
        self.lsa = LSA(shape)

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        """xs: (B, n, d), ys: (B, n), xq: (B, m, d) → ŷ: (B, m)."""
        n = xs.shape[1]
        phi = self.features(self.mlp(torch.cat([xs, xq], dim=1)))  # (B, n+m, k)
        return self.lsa.predict(phi[:, :n], ys, phi[:, n:], descriptor)

    @torch.no_grad()
    def initialise(self, init: str, scale: float, generator: torch.Generator) -> None:
        """MLP: N(0, 1/fan_in) weights and zero biases; the LSA as :meth:`LSA.initialise`."""
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                std = layer.in_features**-0.5
                layer.weight.copy_(std * torch.randn(layer.weight.shape, generator=generator, dtype=torch.float64))
                layer.bias.zero_()
        self.lsa.initialise(init, scale, generator)

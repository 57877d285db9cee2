"""MLP + LSA (Kim & Suzuki 2024): a learned feature map φ(x) = W₂ relu(W₁x + b₁) + b₂ applied to every
input, then linear self-attention on the stacked tokens (φ(x_i), y_i[, s]). The LSA does linear regression
in context on the learned features, so it can fit labels that are non-linear in x (e.g. y = (wᵀx)²)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from iclab.models.base import InContextModel
from iclab.models.hooks import HookPoint
from iclab.models.lsa import LSA, LSAConfig, LSAShape
from iclab.registry import MODELS


class MLPLSAConfig(LSAConfig):
    """A feature MLP, then LSA (``model.name=mlp_lsa``, Kim & Suzuki)."""

    name: Literal["mlp_lsa"] = Field("mlp_lsa", description="model family")
    mlp_hidden: int = Field(64, ge=1, description="hidden width of the feature MLP")
    feature_dim: int = Field(16, ge=1, description="dimension of the learned features")


class MLPLSA(InContextModel):
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

    @property
    def num_layers(self) -> int:
        return self.lsa.num_layers

    def _features(self, xs: Tensor, xq: Tensor) -> tuple[Tensor, Tensor]:
        """φ of the context and query inputs: (B, n, k), (B, m, k)."""
        phi = self.features(self.mlp(torch.cat([xs, xq], dim=1)))  # (B, n+m, k)
        return phi[:, : xs.shape[1]], phi[:, xs.shape[1] :]

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        """xs: (B, n, d), ys: (B, n), xq: (B, m, d) → ŷ: (B, m)."""
        context, query = self._features(xs, xq)
        return self.lsa.predict(context, ys, query, descriptor)

    def layer_states(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> list[Tensor]:
        """The LSA's residual stream at the query tokens after each layer: L tensors (B, m, k + 1 + s)."""
        context, query = self._features(xs, xq)
        return self.lsa.layer_states(context, ys, query, descriptor)

    def readout(self, state: Tensor) -> Tensor:
        return self.lsa.readout(state)

    def attention_stack(self) -> LSA:
        return self.lsa

    @torch.no_grad()
    def initialise(self, init: str, scale: float, generator: torch.Generator) -> None:
        """MLP: N(0, 1/fan_in) weights and zero biases; the LSA as :meth:`LSA.initialise`."""
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                std = layer.in_features**-0.5
                layer.weight.copy_(std * torch.randn(layer.weight.shape, generator=generator, dtype=torch.float64))
                layer.bias.zero_()
        self.lsa.initialise(init, scale, generator)


def build_mlp_lsa(cfg: MLPLSAConfig, task, generator: torch.Generator) -> MLPLSA:
    """An MLP + LSA for ``task`` (d, descriptor), initialised from ``generator``."""
    cfg = cfg.resolved(task.cfg)  # param=auto, for a config not read through Config
    shape = LSAShape(cfg.feature_dim, task.descriptor_dim, cfg.layers, cfg.heads, cfg.param, "linear")
    model = MLPLSA(task.d, cfg.mlp_hidden, cfg.feature_dim, shape)
    model.initialise(cfg.init, cfg.init_scale, generator)
    return model


MODELS.register("mlp_lsa", MLPLSAConfig, build_mlp_lsa, "a feature MLP on x, then LSA (Kim & Suzuki)")

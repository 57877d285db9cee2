"""What a model predicts after each layer: its own read-out and a fitted linear probe on the residual stream.

For an attention stack (an LSA, kernel attention, or the LSA inside an MLP + LSA) the read-out after layer ℓ
is minus the query's label slot of ``blocks.{ℓ-1}.resid_post`` (the model's final prediction is the same
quantity after the last layer). The linear probe (Fu et al. 2024: freeze the model, re-train only the
read-out after each layer) is least squares from the whole residual stream at the query token to y_q.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from iclab.learners.base import Learner
from iclab.learners.trained import to_model
from iclab.models import LSA, MLPLSA, run_with_cache
from iclab.prompts import Prompts


def attention_stack(model: nn.Module) -> tuple[LSA, str]:
    """The model's stack of attention layers and the prefix of its hook names."""
    if isinstance(model, LSA):
        return model, ""
    if isinstance(model, MLPLSA):
        return model.lsa, "lsa."
    raise TypeError(f"probing needs an attention model (LSA, kernel attention, MLP + LSA); got {type(model).__name__}")


def layer_count(model: nn.Module) -> int:
    return len(attention_stack(model)[0].blocks)


def residual_streams(
    model: nn.Module, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None, detach: bool = True
) -> list[Tensor]:
    """The residual stream after each layer: L tensors (B, n + m, D), in the model's dtype and device."""
    stack, prefix = attention_stack(model)
    names = [f"{prefix}blocks.{i}.resid_post" for i in range(len(stack.blocks))]
    _, cache = run_with_cache(model, lambda: model.predict(xs, ys, xq, descriptor), names, detach=detach)
    return [cache[name] for name in names]


def layer_readouts(
    model: nn.Module, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None, detach: bool = True
) -> list[Tensor]:
    """The model's own read-out after each layer, minus the query's label slot: L tensors (B, m)."""
    stack, _ = attention_stack(model)
    n = xs.shape[1]
    return [-resid[:, n:, stack.shape.d] for resid in residual_streams(model, xs, ys, xq, descriptor, detach)]


class LayerReadout(Learner):
    """The model's read-out after ``layer`` (1-based) as a Learner (inputs moved to the model, no gradients)."""

    def __init__(self, model: nn.Module, layer: int) -> None:
        if not 1 <= layer <= layer_count(model):
            raise ValueError(f"layer must be in 1..{layer_count(model)}, got {layer}")
        self.model, self.layer = model, layer
        self.name = f"layer {layer} read-out"

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        with torch.no_grad():
            readout = layer_readouts(self.model, *to_model(self.model, xs, ys, xq, descriptor))[self.layer - 1]
        return readout.to(device=xs.device, dtype=xs.dtype)


def all_prefix_readouts(model: nn.Module, prompts: Prompts, first_prefix: int = 1) -> Tensor:
    """Every layer's read-out after every prefix ``first_prefix``..n of the context, one forward pass per
    prefix: (L, B, n − first_prefix + 1, m) float64 on the prompts' device."""
    per_prefix = []
    with torch.no_grad():
        for k in range(first_prefix, prompts.n + 1):
            part = prompts.prefix(k)
            readouts = layer_readouts(model, *to_model(model, part.xs, part.ys, part.xq, part.descriptor))
            per_prefix.append(torch.stack(readouts).to(device=prompts.xs.device, dtype=torch.float64))
    return torch.stack(per_prefix, dim=2)


@dataclass
class LinearProbe:
    """y_q ≈ coef · [resid_query, 1] for the residual stream after ``layer``; coef: (D + 1,)."""

    layer: int
    coef: Tensor


def _query_features(model: nn.Module, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None) -> list[Tensor]:
    """The residual stream at the query tokens with a constant 1 appended, per layer: (B·m, D + 1) float64
    on the inputs' device."""
    with torch.no_grad():
        streams = residual_streams(model, *to_model(model, xs, ys, xq, descriptor))
    features = []
    for resid in streams:
        query = resid[:, xs.shape[1] :].reshape(-1, resid.shape[-1]).double().to(xs.device)
        features.append(torch.cat([query, torch.ones_like(query[:, :1])], dim=1))
    return features


def fit_linear_probes(model: nn.Module, prompts: Prompts, alpha: float = 1e-8) -> list[LinearProbe]:
    """One least-squares probe per layer from the query's residual stream to y_q (ridge ``alpha`` relative
    to the features' mean square keeps a rank-deficient stream solvable)."""
    targets = prompts.yq.reshape(-1).double()
    probes = []
    streams = _query_features(model, prompts.xs, prompts.ys, prompts.xq, prompts.descriptor)
    for layer, features in enumerate(streams, start=1):
        gram = features.T @ features
        ridge = alpha * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        probes.append(LinearProbe(layer, torch.linalg.solve(gram + ridge, features.T @ targets)))
    return probes


class ProbeReadout(Learner):
    """A fitted linear probe's prediction as a Learner."""

    def __init__(self, model: nn.Module, probe: LinearProbe) -> None:
        self.model, self.probe = model, probe
        self.name = f"layer {probe.layer} linear probe"

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        features = _query_features(self.model, xs, ys, xq, descriptor)[self.probe.layer - 1]
        coef = self.probe.coef.to(features.device)
        return (features @ coef).view(xq.shape[:2]).to(xs.dtype)

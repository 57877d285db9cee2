"""What a model predicts after each layer: its own read-out and a fitted linear probe on the residual stream.

Both come from the model interface (:class:`iclab.models.base.InContextModel`): ``layer_readouts`` is the
model's read-out applied after layer ℓ (for an attention stack, minus the query's label slot; the final
prediction is the same quantity after the last layer), ``layer_states`` the residual stream at the query
tokens. The linear probe (Fu et al. 2024: freeze the model, re-train only the read-out after each layer) is
least squares from that stream to y_q.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from iclab.learners.base import Learner
from iclab.learners.trained import to_model
from iclab.models import InContextModel
from iclab.prompts import Prompts


class LayerReadout(Learner):
    """The model's read-out after ``layer`` (1-based) as a Learner (inputs moved to the model, no gradients)."""

    def __init__(self, model: InContextModel, layer: int) -> None:
        if not 1 <= layer <= model.num_layers:
            raise ValueError(f"layer must be in 1..{model.num_layers}, got {layer}")
        self.model, self.layer = model, layer
        self.name = f"layer {layer} read-out"

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        with torch.no_grad():
            readout = self.model.layer_readouts(*to_model(self.model, xs, ys, xq, descriptor))[self.layer - 1]
        return readout.to(device=xs.device, dtype=xs.dtype)


def all_prefix_readouts(model: InContextModel, prompts: Prompts, first_prefix: int = 1) -> Tensor:
    """Every layer's read-out after every prefix ``first_prefix``..n of the context, one forward pass per
    prefix: (L, B, n − first_prefix + 1, m) float64 on the prompts' device."""
    per_prefix = []
    with torch.no_grad():
        for k in range(first_prefix, prompts.n + 1):
            part = prompts.prefix(k)
            readouts = model.layer_readouts(*to_model(model, part.xs, part.ys, part.xq, part.descriptor))
            per_prefix.append(torch.stack(readouts).to(device=prompts.xs.device, dtype=torch.float64))
    return torch.stack(per_prefix, dim=2)


@dataclass
class LinearProbe:
    """y_q ≈ coef · [state_query, 1] for the residual stream after ``layer``; coef: (D + 1,)."""

    layer: int
    coef: Tensor

    def predict(self, state: Tensor) -> Tensor:
        """ŷ from the residual stream after ``layer``: state (..., D) → (...), in the state's dtype and device."""
        coef = self.coef.to(device=state.device, dtype=state.dtype)
        return state @ coef[:-1] + coef[-1]


def _query_states(model: InContextModel, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None) -> list[Tensor]:
    """The residual stream at the query tokens, per layer: (B, m, D) float64 on the inputs' device, no gradients."""
    with torch.no_grad():
        states = model.layer_states(*to_model(model, xs, ys, xq, descriptor))
    return [state.double().to(xs.device) for state in states]


def _query_features(
    model: InContextModel, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None
) -> list[Tensor]:
    """The residual stream at the query tokens with a constant 1 appended, per layer: (B·m, D + 1) float64
    on the inputs' device."""
    features = []
    for state in _query_states(model, xs, ys, xq, descriptor):
        query = state.reshape(-1, state.shape[-1])
        features.append(torch.cat([query, torch.ones_like(query[:, :1])], dim=1))
    return features


def fit_linear_probes(
    model: InContextModel, prompts: Prompts, alpha: float = 1e-8, first_prefix: int | None = None
) -> list[LinearProbe]:
    """One least-squares probe per layer from the query's residual stream to y_q (ridge ``alpha`` relative
    to the features' mean square keeps a rank-deficient stream solvable). ``first_prefix``: one probe per
    layer fitted on the queries after every context prefix first_prefix..n together (Fu et al.'s read-out,
    shared by the positions); None: after the full context only."""
    prefixes = [prompts] if first_prefix is None else [prompts.prefix(k) for k in range(first_prefix, prompts.n + 1)]
    per_prefix = [_query_features(model, p.xs, p.ys, p.xq, p.descriptor) for p in prefixes]
    targets = torch.cat([p.yq.reshape(-1).double() for p in prefixes])
    probes = []
    for layer, parts in enumerate(zip(*per_prefix, strict=True), start=1):
        features = torch.cat(parts)
        gram = features.T @ features
        ridge = alpha * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
        probes.append(LinearProbe(layer, torch.linalg.solve(gram + ridge, features.T @ targets)))
    return probes


class ProbeReadout(Learner):
    """A fitted linear probe's prediction as a Learner."""

    def __init__(self, model: InContextModel, probe: LinearProbe) -> None:
        self.model, self.probe = model, probe
        self.name = f"layer {probe.layer} linear probe"

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        state = _query_states(self.model, xs, ys, xq, descriptor)[self.probe.layer - 1]
        return self.probe.predict(state).to(xs.dtype)


def all_prefix_probe_readouts(
    model: InContextModel, probes: list[LinearProbe], prompts: Prompts, first_prefix: int = 1
) -> Tensor:
    """:func:`all_prefix_readouts` with each layer's fitted linear probe as its read-out (Fu et al.: freeze the
    model, re-train only the read-out after each layer): (L, B, n − first_prefix + 1, m) float64."""
    per_prefix = []
    for k in range(first_prefix, prompts.n + 1):
        part = prompts.prefix(k)
        states = _query_states(model, part.xs, part.ys, part.xq, part.descriptor)
        per_prefix.append(torch.stack([probe.predict(state) for state, probe in zip(states, probes, strict=True)]))
    return torch.stack(per_prefix, dim=2)

"""Any iclab model as a Learner."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from iclab.learners.base import Learner


class ModelLearner(Learner):
    """Wraps a model with ``predict(xs, ys, xq, descriptor)``; inputs are moved to the model's device and
    dtype, outputs come back in the inputs' dtype and device. No gradients."""

    def __init__(self, model: nn.Module, name: str = "model") -> None:
        self.model = model
        self.name = name

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        param = next(self.model.parameters())
        move = {"device": param.device, "dtype": param.dtype}
        side = None if descriptor is None else descriptor.to(**move)
        with torch.no_grad():
            out = self.model.predict(xs.to(**move), ys.to(**move), xq.to(**move), side)
        return out.to(device=xs.device, dtype=xs.dtype)


def from_model(model: nn.Module, name: str = "model") -> ModelLearner:
    """Make an iclab model a Learner."""
    if not hasattr(model, "predict"):
        raise TypeError(f"from_model needs an iclab model with a predict method, got {type(model).__name__}")
    return ModelLearner(model, name)

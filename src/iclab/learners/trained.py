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
        with torch.no_grad():
            out = self.model.predict(*to_model(self.model, xs, ys, xq, descriptor))
        return out.to(device=xs.device, dtype=xs.dtype)


def to_model(model: nn.Module, *tensors: Tensor | None) -> list[Tensor | None]:
    """``tensors`` moved to the device and dtype of ``model``'s parameters (None stays None)."""
    param = next(model.parameters())
    return [None if t is None else t.to(device=param.device, dtype=param.dtype) for t in tensors]


def from_model(model: nn.Module, name: str = "model") -> ModelLearner:
    """Make an iclab model a Learner."""
    if not hasattr(model, "predict"):
        raise TypeError(f"from_model needs an iclab model with a predict method, got {type(model).__name__}")
    return ModelLearner(model, name)

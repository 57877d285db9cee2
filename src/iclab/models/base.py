"""The model interface: what every model family provides, so that training, evaluation, the probe and the
recipes never ask which family a model is.

A family is one file: its config class (a :class:`iclab.config.ModelConfig` subclass with
``name: Literal["<name>"]``), an :class:`InContextModel` subclass, a builder
``build(cfg, task, generator) -> InContextModel`` (sized for ``task.d`` and ``task.descriptor_dim``, its weights
drawn from ``generator``) and ``MODELS.register(name, config, build)`` (:mod:`iclab.registry`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from iclab.kernels import Kernel
from iclab.prompts import TOKEN_FORMATS


class InContextModel(nn.Module):
    """A model that predicts query labels from a prompt in its forward pass.

    Subclasses implement :meth:`predict`, :meth:`layer_states`, :meth:`readout` and :attr:`num_layers`;
    they override :meth:`predict_prefixes` where the architecture gives every prefix in one pass (a causal
    model), and set :attr:`token_format` to the format of :data:`iclab.prompts.TOKEN_FORMATS` they read.
    Intermediates worth probing pass through named :class:`~iclab.models.hooks.HookPoint` modules.
    """

    token_format: ClassVar[str] = "stacked"
    kernel: Kernel | None = None  # the kernel K(x, x') = h(xᵀx') an attention activation h induces, if any

    @property
    def num_layers(self) -> int:
        """Number of layers L (each has a read-out, :meth:`layer_readouts`)."""
        raise NotImplementedError

    def tokens(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        """The prompt in this model's token format (see :data:`iclab.prompts.TOKEN_FORMATS`)."""
        return TOKEN_FORMATS[self.token_format](xs, ys, xq, descriptor)

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        """xs: (B, n, d), ys: (B, n), xq: (B, m, d), descriptor: (B, k) or None → ŷ: (B, m)."""
        raise NotImplementedError

    def predict_prefixes(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        """Predictions at the queries from the first k examples, k = 1..n: (B, n, m). Default: one forward
        pass per prefix."""
        n = xs.shape[1]
        return torch.stack([self.predict(xs[:, :k], ys[:, :k], xq, descriptor) for k in range(1, n + 1)], dim=1)

    def predict_next(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        """Each next example's label from the examples before it: (B, n), entry k − 1 the prediction at
        x_{k+1} from the first k examples (k = 1..n − 1) and, for k = n, at the first query xq[:, 0] from all
        n (Garg et al.'s sequence loss, prefixes 1..n). Default: the diagonal of :meth:`predict_prefixes`
        with those n points as queries."""
        following = torch.cat([xs[:, 1:], xq[:, :1]], dim=1)  # (B, n, d)
        return self.predict_prefixes(xs, ys, following, descriptor).diagonal(dim1=1, dim2=2)

    def layer_states(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> list[Tensor]:
        """The residual stream at the query tokens after each layer: L tensors (B, m, D)."""
        raise NotImplementedError

    def readout(self, state: Tensor) -> Tensor:
        """The model's read-out of a query state (B, m, D) → (B, m); applied to the last layer's state it is
        the prediction."""
        raise NotImplementedError

    def layer_readouts(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> list[Tensor]:
        """The model's read-out after each layer (the prediction it would make if it stopped there): L tensors
        (B, m). Gradients flow unless the caller disables them."""
        return [self.readout(state) for state in self.layer_states(xs, ys, xq, descriptor)]

    def attention_stack(self) -> nn.Module | None:
        """The stack of stacked-token attention layers whose W_KQ/W_PV (``blocks[l].attn.kq()``, ``.pv()``)
        can be compared with the GD construction, or None for other architectures."""
        return None

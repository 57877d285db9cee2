"""The Prompts container and the token formats models read.

Shapes: ``xs: (B, n, d)``, ``ys: (B, n)``, ``xq: (B, m, d)``, ``yq: (B, m)``, ``descriptor: (B, k)``,
``w: (B, d)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class Prompts:
    """A batch of in-context regression prompts (x_1, y_1, …, x_n, y_n, x_q) with their answers."""

    xs: Tensor  # (B, n, d) context inputs
    ys: Tensor  # (B, n) context labels
    xq: Tensor  # (B, m, d) query inputs
    yq: Tensor  # (B, m) query labels (the targets)
    descriptor: Tensor | None = None  # (B, k) side information given to the model, or None
    w: Tensor | None = None  # (B, d) ground-truth weights, or None

    @property
    def batch(self) -> int:
        return self.xs.shape[0]

    @property
    def n(self) -> int:
        return self.xs.shape[1]

    @property
    def d(self) -> int:
        return self.xs.shape[2]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Prompts:
        """A copy with every tensor moved to ``device`` and cast to ``dtype``."""
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            moved[f.name] = None if value is None else value.to(device=device, dtype=dtype)
        return Prompts(**moved)

    def prefix(self, k: int) -> Prompts:
        """The same prompts with only the first ``k`` context examples."""
        return replace(self, xs=self.xs[:, :k], ys=self.ys[:, :k])

    @staticmethod
    def concat(parts: list[Prompts]) -> Prompts:
        """The batches of ``parts`` joined along the batch dimension."""
        joined = {}
        for f in fields(Prompts):
            values = [getattr(p, f.name) for p in parts]
            joined[f.name] = None if values[0] is None else torch.cat(values)
        return Prompts(**joined)

    def slice(self, start: int, stop: int) -> Prompts:
        """Prompts ``start:stop`` of the batch."""
        return Prompts(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[start:stop]
                for f in fields(self)
            }
        )


def stacked_tokens(xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
    """The LSA papers' embedding, one token per column of Z, returned as rows: ``(B, n + m, d + 1 + k)``.

    Context token i is (x_i, y_i[, descriptor]); query token j is (x_qj, 0[, descriptor]). The label
    coordinate is index ``d``; the context tokens come first.
    """
    batch, n, _ = xs.shape
    m = xq.shape[1]
    context = torch.cat([xs, ys.unsqueeze(-1)], dim=-1)  # (B, n, d+1)
    query = torch.cat([xq, xq.new_zeros(batch, m, 1)], dim=-1)  # (B, m, d+1)
    tokens = torch.cat([context, query], dim=1)  # (B, n+m, d+1)
    if descriptor is not None:
        side = descriptor.unsqueeze(1).expand(batch, n + m, descriptor.shape[-1])
        tokens = torch.cat([tokens, side], dim=-1)
    return tokens


def interleaved_pairs(xs: Tensor, ys: Tensor) -> Tensor:
    """The context of Garg et al.'s sequence, x_1, y_1, …, x_n, y_n: ``(B, 2n, d)``, a label token being
    (y_i, 0, …, 0), zero-padded to d."""
    batch, n, d = xs.shape
    labels = torch.zeros_like(xs)
    labels[..., 0] = ys
    return torch.stack([xs, labels], dim=2).reshape(batch, 2 * n, d)


def interleaved_tokens(xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
    """Garg et al.'s sequence (x_1, y_1, …, x_n, y_n, x_qj), one per query: ``(B, m, 2n + 1, d)``.

    Predictions are read at the x positions: the output at position 2i is the prediction for y_{i+1} from
    the first i examples, and position 2n is query j's. Each query has its own sequence, so no query sees
    another. The format carries no descriptor (ValueError if one is given).
    """
    if descriptor is not None:
        raise ValueError("the interleaved token format carries no descriptor; use a task without one")
    batch, n, d = xs.shape
    m = xq.shape[1]
    pairs = interleaved_pairs(xs, ys).unsqueeze(1)  # (B, 1, 2n, d)
    return torch.cat([pairs.expand(batch, m, 2 * n, d), xq.unsqueeze(2)], dim=2)


TOKEN_FORMATS: dict[str, Callable[..., Tensor]] = {"stacked": stacked_tokens, "interleaved": interleaved_tokens}
"""Token formats by name: ``fn(xs, ys, xq, descriptor) -> tokens``; a model's ``token_format`` names one."""

"""GPT-2 on interleaved prompts (Garg et al. 2022), written out: the de-facto base model of ICL research.

The prompt is the sequence x_1, y_1, …, x_n, y_n, x_q of d-dimensional tokens, a label y_i entering as
(y_i, 0, …, 0) (:func:`iclab.prompts.interleaved_pairs`). A linear read-in maps tokens to the model width,
learned positions are added, L pre-LayerNorm blocks follow (causal multi-head attention through
``scaled_dot_product_attention``, then a GELU MLP of width 4·D, each added to the residual stream), a final
LayerNorm, and a linear read-out gives the prediction at an x position: the output at x_{k+1} is the
prediction of y_{k+1} from the k examples before it. Dropout is 0. The blocks are GPT-2's (HuggingFace
``GPT2Model`` with its default tanh-GELU): a test copies the weights into ``transformers`` and compares.

Queries. Every query token of a prompt sits at the position of the next x (2k for a context of k examples)
and attends to the first k pairs and to itself only, so no query sees another query, and one forward pass
gives the prediction at every query after every prefix k = 1..n (:meth:`GPT2.predict_prefixes`): the query
copies for prefix k see exactly what x_{k+1} sees in the plain sequence. With one query and the full
context this is the plain causal sequence of Garg et al.

Hooks: ``embed`` (B, T, D); per block l ``blocks.{l}.attn.pattern`` (B, H, T, T, materialised only while a
hook listens), ``blocks.{l}.attn.out``, ``blocks.{l}.resid_mid``, ``blocks.{l}.mlp_out`` and
``blocks.{l}.resid_post`` (B, T, D). T = 2n + (number of query tokens).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from iclab.config import ModelConfig, TaskConfig
from iclab.models.base import InContextModel
from iclab.models.hooks import HookPoint
from iclab.prompts import interleaved_pairs
from iclab.registry import MODELS

SIZES = {"tiny": (3, 2, 64), "small": (6, 4, 128), "standard": (12, 8, 256)}  # layers, heads, width (Garg et al.)


class GPT2Config(ModelConfig):
    """GPT-2 on interleaved tokens (``model.name=gpt2``)."""

    name: Literal["gpt2"] = Field("gpt2", description="model family")
    size: Literal["tiny", "small", "standard"] = Field(
        "tiny", description="Garg et al.'s sizes: 3 layers/2 heads/width 64, 6/4/128, 12/8/256"
    )
    layers: int | None = Field(None, ge=1, le=96, description="blocks (none: from model.size)")
    heads: int | None = Field(None, ge=1, le=64, description="attention heads (none: from model.size)")
    width: int | None = Field(None, ge=1, le=8192, description="residual width D (none: from model.size)")

    @model_validator(mode="after")
    def _heads_divide_width(self) -> GPT2Config:
        layers, heads, width = self.shape()
        if width % heads:
            raise ValueError(f"model.width must be a multiple of model.heads={heads}, got {width}")
        return self

    def check_task(self, task: TaskConfig) -> None:
        if task.descriptor_dim:
            raise ValueError(
                "model.name=gpt2 reads interleaved tokens, which carry no descriptor: set task.descriptor=none"
            )

    def shape(self) -> tuple[int, int, int]:
        """(layers, heads, width): the size's, each replaced where given explicitly."""
        layers, heads, width = SIZES[self.size]
        return self.layers or layers, self.heads or heads, self.width or width


class CausalSelfAttention(nn.Module):
    """Multi-head attention with a boolean mask (True: may attend); ``qkv`` and ``proj`` as GPT-2's c_attn
    and c_proj."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.pattern = HookPoint()
        self.out = HookPoint()

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x: (B, T, D), mask: (T, T) or None for plain causal → (B, T, D)."""
        batch, length, width = x.shape
        q, k, v = self.qkv(x).split(width, dim=-1)  # (B, T, D) each
        q, k, v = (t.view(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))  # (B, H, T, D/H)
        if self.pattern.listened:
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            allowed = causal if mask is None else mask
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, T, T)
            weights = self.pattern(torch.softmax(scores.masked_fill(~allowed, -math.inf), dim=-1))
            mixed = weights @ v
        else:
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        return self.out(self.proj(mixed.transpose(1, 2).reshape(batch, length, width)))


class Block(nn.Module):
    """Pre-LayerNorm GPT-2 block: x + attn(ln_1(x)), then + mlp(ln_2(x)) with a tanh-GELU MLP of width 4·D."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.fc_proj = nn.Linear(4 * width, width)
        self.resid_mid = HookPoint()
        self.mlp_out = HookPoint()
        self.resid_post = HookPoint()

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = self.resid_mid(x + self.attn(self.ln_1(x), mask))
        mlp = self.mlp_out(self.fc_proj(F.gelu(self.fc(self.ln_2(x)), approximate="tanh")))
        return self.resid_post(x + mlp)


class GPT2(InContextModel):
    """Read-in, learned positions, ``layers`` GPT-2 blocks, final LayerNorm, read-out (see the module doc).
    ``max_points`` is the longest context (n) the positions cover."""

    token_format = "interleaved"

    def __init__(self, d: int, max_points: int, layers: int, heads: int, width: int) -> None:
        super().__init__()
        self.d, self.max_points = d, max_points
        self.read_in = nn.Linear(d, width)
        self.positions = nn.Embedding(2 * max_points + 1, width)
        self.embed = HookPoint()
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.read_out = nn.Linear(width, 1)

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def _streams(self, xs: Tensor, ys: Tensor, xq: Tensor, prefixes: list[int]) -> tuple[list[Tensor], int]:
        """The residual stream after each block for the context pairs followed by one copy of every query per
        prefix length in ``prefixes`` (prefix-major); returns (L tensors (B, T, D), index of the first query)."""
        batch, n, d = xs.shape
        if d != self.d:
            raise ValueError(f"the model reads d={self.d} inputs, got prompts with d={d}")
        if n > self.max_points:
            raise ValueError(f"the model's positions cover contexts of up to {self.max_points} examples, got {n}")
        m = xq.shape[1]
        queries = xq.repeat(1, len(prefixes), 1)  # (B, len(prefixes)·m, d)
        tokens = torch.cat([interleaved_pairs(xs, ys), queries], dim=1)  # (B, T, d)
        device = xs.device
        query_prefix = torch.tensor(prefixes, device=device).repeat_interleave(m)  # (Q,)
        position = torch.cat([torch.arange(2 * n, device=device), 2 * query_prefix])
        x = self.embed(self.read_in(tokens) + self.positions(position))
        mask = None if prefixes == [n] and m == 1 else self._mask(n, query_prefix)
        streams = []
        for block in self.blocks:
            x = block(x, mask)
            streams.append(x)
        return streams, 2 * n

    @staticmethod
    def _mask(n: int, query_prefix: Tensor) -> Tensor:
        """(T, T) boolean: context tokens causal among themselves; a query copy of prefix k sees the first k
        pairs and itself."""
        count = query_prefix.numel()
        size = 2 * n + count
        mask = torch.zeros(size, size, dtype=torch.bool, device=query_prefix.device)
        mask[: 2 * n, : 2 * n] = torch.ones(2 * n, 2 * n, dtype=torch.bool, device=query_prefix.device).tril()
        columns = torch.arange(2 * n, device=query_prefix.device)
        mask[2 * n :, : 2 * n] = columns.unsqueeze(0) < 2 * query_prefix.unsqueeze(1)
        mask[2 * n :, 2 * n :] = torch.eye(count, dtype=torch.bool, device=query_prefix.device)
        return mask

    def readout(self, state: Tensor) -> Tensor:
        """(…, D) → (…): the read-out after the final LayerNorm."""
        return self.read_out(self.ln_f(state)).squeeze(-1)

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        """xs: (B, n, d), ys: (B, n), xq: (B, m, d) → ŷ: (B, m), each query after the whole context."""
        _no_descriptor(descriptor)
        streams, start = self._streams(xs, ys, xq, [xs.shape[1]])
        return self.readout(streams[-1][:, start:])

    def predict_prefixes(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        """Every query after every prefix k = 1..n, one forward pass: (B, n, m)."""
        _no_descriptor(descriptor)
        batch, n, _ = xs.shape
        streams, start = self._streams(xs, ys, xq, list(range(1, n + 1)))
        return self.readout(streams[-1][:, start:]).view(batch, n, xq.shape[1])

    def predict_next(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        """Garg et al.'s read-out at the x positions of one causal sequence x_1, y_1, …, x_n, y_n, x_q: the
        output at x_{k+1} (at x_q for k = n) is the prediction from the first k examples: (B, n)."""
        _no_descriptor(descriptor)
        streams, _ = self._streams(xs, ys, xq[:, :1], [xs.shape[1]])
        return self.readout(streams[-1][:, 2::2])

    def layer_states(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> list[Tensor]:
        """The residual stream at the query tokens after each block: L tensors (B, m, D)."""
        _no_descriptor(descriptor)
        streams, start = self._streams(xs, ys, xq, [xs.shape[1]])
        return [stream[:, start:] for stream in streams]

    @torch.no_grad()
    def initialise(self, generator: torch.Generator) -> None:
        """GPT-2's initialisation drawn from ``generator``: every weight of the blocks and the positions
        N(0, 0.02²), the residual projections N(0, 0.02²/(2L)), biases 0, LayerNorms 1 and 0; the read-in and
        read-out as ``nn.Linear`` (uniform ±1/√fan_in), as Garg et al.'s model has them."""

        def normal(param: Tensor, std: float) -> None:
            param.copy_(std * torch.randn(param.shape, generator=generator, dtype=torch.float64))

        for layer in (self.read_in, self.read_out):
            bound = layer.in_features**-0.5
            for param in (layer.weight, layer.bias):
                param.copy_(bound * (2 * torch.rand(param.shape, generator=generator, dtype=torch.float64) - 1))
        normal(self.positions.weight, 0.02)
        for block in self.blocks:
            for linear in (block.attn.qkv, block.attn.proj, block.fc, block.fc_proj):
                residual = linear in (block.attn.proj, block.fc_proj)
                normal(linear.weight, 0.02 / math.sqrt(2 * self.num_layers) if residual else 0.02)
                linear.bias.zero_()


def _no_descriptor(descriptor: Tensor | None) -> None:
    if descriptor is not None:
        raise ValueError("GPT-2 reads interleaved tokens, which carry no descriptor; use task.descriptor=none")


def build_gpt2(cfg: GPT2Config, task, generator: torch.Generator) -> GPT2:
    """A GPT-2 for ``task`` (its d; positions for contexts of up to task.n examples), initialised from
    ``generator``."""
    model = GPT2(task.d, task.n, *cfg.shape())
    model.initialise(generator)
    return model


MODELS.register("gpt2", GPT2Config, build_gpt2, "GPT-2 on interleaved tokens (Garg et al.)")

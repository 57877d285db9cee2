"""Linear (and kernel) self-attention on the stacked-column embedding of the LSA theory papers.

Tokens are the columns z_i of Z = [(x_1, y_1, s) … (x_n, y_n, s), (x_q, 0, s)] with s the optional
descriptor, stored as rows: ``tokens: (B, N, D)``, N = n + m, D = d + 1 + k, label coordinate at index d.
Each layer adds, for every token j (context and query alike),

    z_j ← z_j + Σ_h (1/n) Σ_{i ≤ n} W_PV^h z_i (z_iᵀ W_KQ^h z_j)

i.e. Z ← Z + (1/n) W_PV Z M (Zᵀ W_KQ Z) with the mask M keeping the queries out of keys and values.

**Kernel attention** (Cheng, Chen, Sra 2024; ``model.name=kernel_attention``): the same layer with an
activation h on the scores, z_iᵀ W_KQ z_j ↦ h(z_iᵀ W_KQ z_j) for h = relu or exp, still divided by n, or a
softmax over the n keys (normalised by its row sum instead). With W_KQ = B on x and W_PV = −r on the label,
a layer is one step of functional gradient descent in the RKHS of K(x, x') = h(xᵀBx').
With ``param="full"`` the label enters the scores too, and for h = exp that has no finite mean on Gaussian labels
(E exp(c·y_i·y_j) = ∞ once c ≥ 1/E y²): on the default task a 2-layer exp model overflows in its first forward
pass, and training says so at step 1 naming the hook and the fix, ``model.param=sparse`` (scores from the
inputs only, Cheng et al.'s form), with which it trains.

**Sign of the read-out**: the prediction is minus the query's label slot, ŷ = −Z[d, query]. The slot starts
at 0 and tracks the residual 0 − f(x_q), so L layers of the von Oswald et al. construction (W_KQ = I on x,
W_PV = −η on the label) give exactly L steps of gradient descent; a one-layer LSA with value scalar v and
key-query block A predicts ŷ = x_qᵀ Γ (1/n) Σ y_i x_i with Γ = −v Aᵀ.

``param="full"``: W_KQ and W_PV are free (D, D) matrices per layer and head. ``param="sparse"``: the block
form of the theory papers: W_KQ acts on the features (x and descriptor) only, W_PV = v e_d e_dᵀ (the value
reads the label and writes the label). ``param="block"``: as sparse, plus a features → features block of
W_PV, so a layer may also transform the inputs, x_j ← x_j + (1/n) Σ_i B x_i (x_iᵀ A x_j) (von Oswald et al.'s
GD++, a data-dependent preconditioner); the label never enters the scores, so the prediction stays linear in
the context labels (as for GD, Newton's method, ridge and least squares) and deep models train stably where
the full form's label-label products make the forward pass a polynomial of degree 3^L in y.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from iclab.config import ModelConfig, TaskConfig
from iclab.kernels import KERNELS, Kernel
from iclab.models.base import InContextModel
from iclab.models.hooks import HookPoint
from iclab.registry import MODELS


class LSAConfig(ModelConfig):
    """Linear self-attention (``model.name=lsa``)."""

    name: Literal["lsa"] = Field("lsa", description="model family")
    layers: int = Field(1, ge=1, description="number of attention layers")
    heads: int = Field(1, ge=1, description="attention heads per layer")
    param: Literal["auto", "full", "sparse", "block"] = Field(
        "auto",
        description="free W_KQ, W_PV; the theory's sparse form; sparse + a features block (GD++); auto: sparse "
        "when x is mean-shifted (task.x_mean_std > 0), else full",
    )
    init: Literal["gaussian", "zero_block", "balanced"] = Field(
        "gaussian", description="all entries N(0, s²); only the sparse blocks; or the balanced GD-step init"
    )
    init_scale: float = Field(0.1, ge=0.0, description="s, the scale of the initial weights")

    def resolved(self, task: TaskConfig) -> LSAConfig:
        """``param=auto`` made concrete: ``sparse`` when ``task`` shifts x by a per-prompt mean, else ``full``.

        Why: the full and block forms write back into the features, and every token of a prompt carries the
        same mean μ (and descriptor), so a layer maps that shared part m to m + (1/n)·W_PV m (mᵀ W_KQ m) + …:
        cubic, and L layers make it a polynomial of degree 3^L in μ. Adam's first steps move every entry by
        about train.lr whatever the init scale, so on x ~ N(μ, I), μ ~ N(0, I) a 3-layer full LSA diverges at
        step 1 at the defaults and by step 100 at init scale 0.01 (clipped or not); at lr 1e-3 it survives but
        ends heavy-tailed and above the one-layer optimum (d = 5, n = 20: 4.70 vs 2.65). The sparse form (the theory's,
        Huang & Ge; Zhang, Frei, Bartlett) never changes the features: the prediction is linear in the labels
        and of degree 2L + 1 in x, and it trains at every depth (docs/usage.md, "Forms")."""
        if self.param != "auto":
            return self
        shifted = getattr(task, "x_mean_std", 0.0) > 0
        return self.with_changes(param="sparse" if shifted else "full")


class KernelAttentionConfig(LSAConfig):
    """Attention with an activation h on the scores (``model.name=kernel_attention``, Cheng et al.)."""

    name: Literal["kernel_attention"] = Field("kernel_attention", description="model family")
    activation: Literal["linear", "relu", "exp", "softmax"] = Field(
        "linear", description="h applied to the scores (softmax: row-normalised)"
    )


@dataclass
class LSAShape:
    """Sizes and form of an LSA: d inputs, k descriptor entries, layers, heads, parameterisation."""

    d: int
    descriptor_dim: int = 0
    layers: int = 1
    heads: int = 1
    param: str = "full"
    activation: str = "linear"  # h on the scores: linear (LSA), relu, exp or softmax (kernel attention)

    @property
    def width(self) -> int:
        """Token width D = d + 1 + k."""
        return self.d + 1 + self.descriptor_dim

    @property
    def feature_index(self) -> Tensor:
        """Indices of the non-label coordinates (x then descriptor), length D − 1."""
        return torch.cat([torch.arange(self.d), torch.arange(self.d + 1, self.width)])


class SelfAttention(nn.Module):
    """One attention layer with ``heads`` heads and activation h on the scores; ``kq()`` and ``pv()`` give
    the full (H, D, D) matrices."""

    def __init__(self, shape: LSAShape) -> None:
        super().__init__()
        self.shape = shape
        heads, width = shape.heads, shape.width
        if shape.param == "full":
            self.w_kq = nn.Parameter(torch.zeros(heads, width, width))
            self.w_pv = nn.Parameter(torch.zeros(heads, width, width))
        else:
            self.kq_block = nn.Parameter(torch.zeros(heads, width - 1, width - 1))  # features × features
            self.value = nn.Parameter(torch.zeros(heads))  # label → label
        if shape.param == "block":
            self.pv_block = nn.Parameter(torch.zeros(heads, width - 1, width - 1))  # features → features
        self.register_buffer("features", shape.feature_index, persistent=False)
        # Fixed embeddings of the sparse blocks: W_KQ = P A Pᵀ with P: (D, D−1), W_PV = v·e_d e_dᵀ.
        self.register_buffer("feature_embed", torch.eye(width)[:, shape.feature_index], persistent=False)
        self.register_buffer("label_unit", torch.eye(width)[shape.d].outer(torch.eye(width)[shape.d]), persistent=False)
        self.scores = HookPoint()
        self.weights = HookPoint()
        self.out = HookPoint()

    def kq(self) -> Tensor:
        """W_KQ: (H, D, D)."""
        if self.shape.param == "full":
            return self.w_kq
        embed = self.feature_embed.to(self.kq_block.dtype)
        return embed @ self.kq_block @ embed.T

    def pv(self) -> Tensor:
        """W_PV: (H, D, D)."""
        if self.shape.param == "full":
            return self.w_pv
        label = self.value.view(-1, 1, 1) * self.label_unit.to(self.value.dtype)
        if self.shape.param == "sparse":
            return label
        embed = self.feature_embed.to(self.pv_block.dtype)
        return label + embed @ self.pv_block @ embed.T

    def forward(self, tokens: Tensor, n: int, start: int = 0) -> Tensor:
        """tokens: (B, N, D), the first ``n`` are the context → the update of tokens[:, start:] (B, N − start, D).

        weights = h(scores)/n, or the row-normalised softmax of the scores for ``softmax``.
        """
        keys = tokens[:, :n]  # (B, n, D): context only (the mask M)
        rows = tokens[:, start:]  # (B, R, D): the tokens whose update is wanted
        width, count = self.shape.width, rows.shape[1]
        # Linear scores, not listened to: Σ_h W_PV^h (Σ_i z_i z_iᵀ) W_KQ^h z_j, the same sum reassociated, where
        # its n·D² + 2D³ products a head are no more than the 2R(D + n)·D of the rows' scores below (many rows).
        gram_cheaper = 2 * count * (width + n) >= n * width + 2 * width * width
        if self.shape.activation == "linear" and gram_cheaper and not (self.scores.listened or self.weights.listened):
            gram = (keys.transpose(-1, -2) @ keys).unsqueeze(1)  # (B, 1, D, D)
            mix = (self.pv() @ gram @ self.kq()).sum(1)  # (B, D, D)
            return self.out(rows @ mix.transpose(-1, -2) / n)
        queries = rows.unsqueeze(1) @ self.kq().transpose(-1, -2)  # (B, H, R, D): rows W_KQ z_j
        scores = self.scores(queries @ keys.unsqueeze(1).transpose(-1, -2))  # (B, H, R, n): z_iᵀ W_KQ z_j
        if self.shape.activation == "softmax":
            weights = torch.softmax(scores, dim=-1)
        else:
            weights = Kernel(self.shape.activation).activation(scores) / n
        mixed = self.weights(weights) @ keys.unsqueeze(1)  # (B, H, R, D): Σ_i weight_ji z_i
        return self.out((mixed @ self.pv().transpose(-1, -2)).sum(1))  # W_PV applied to R rows, not n


class LSABlock(nn.Module):
    """A residual LSA layer: resid_post = tokens + attn(tokens)."""

    def __init__(self, shape: LSAShape) -> None:
        super().__init__()
        self.attn = SelfAttention(shape)
        self.resid_post = HookPoint()

    def forward(self, tokens: Tensor, n: int, start: int = 0) -> Tensor:
        """tokens: (B, N, D) → the residual stream of tokens[:, start:] after the layer (B, N − start, D)."""
        return self.resid_post(tokens[:, start:] + self.attn(tokens, n, start))

    @property
    def listened(self) -> bool:
        """Whether a hook of this layer is registered (then every token's stream is computed)."""
        return any(isinstance(module, HookPoint) and module.listened for module in self.modules())


class LSA(InContextModel):
    """L layers of self-attention with activation h (linear: LSA; relu/exp/softmax: the kernel attention
    of Cheng et al.); hooks ``embed``, ``blocks.{l}.attn.scores`` and ``.weights`` (B, H, N, n),
    ``blocks.{l}.attn.out`` and ``blocks.{l}.resid_post`` (B, N, D)."""

    token_format = "stacked"

    def __init__(self, shape: LSAShape) -> None:
        super().__init__()
        if shape.param not in ("full", "sparse", "block"):
            raise ValueError(f"model.param must be one of full, sparse, block; got {shape.param!r}")
        if shape.activation not in (*KERNELS, "softmax"):
            raise ValueError(f"model.activation must be one of linear, relu, exp, softmax; got {shape.activation!r}")
        self.shape = shape
        self.kernel = Kernel(shape.activation) if shape.activation in KERNELS and shape.activation != "linear" else None
        self.embed = HookPoint()
        self.blocks = nn.ModuleList(LSABlock(shape) for _ in range(shape.layers))

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def forward(self, tokens: Tensor, n: int, start: int = 0) -> Tensor:
        """tokens: (B, n + m, D) → the final residual stream of tokens[:, start:] (B, n + m − start, D): the last
        layer updates only those tokens, the earlier ones every token."""
        tokens = self.embed(tokens)
        for block in self.blocks[:-1]:
            tokens = block(tokens, n)
        return self.blocks[-1](tokens, n, start)

    def _streams(self, tokens: Tensor, n: int) -> list[Tensor]:
        """The residual stream after each layer: L tensors (B, n + m, D)."""
        tokens = self.embed(tokens)
        streams = []
        for block in self.blocks:
            tokens = block(tokens, n)
            streams.append(tokens)
        return streams

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        """xs: (B, n, d), ys: (B, n), xq: (B, m, d), descriptor: (B, k) → ŷ: (B, m) (minus the label slot).

        The last layer updates only the query tokens (the context's last stream is not read) unless one of its
        hooks listens."""
        n = xs.shape[1]
        start = 0 if self.blocks[-1].listened else n
        return self.readout(self(self.tokens(xs, ys, xq, descriptor), n, start)[:, n - start :])

    def layer_states(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> list[Tensor]:
        """The residual stream at the query tokens after each layer: L tensors (B, m, D)."""
        n = xs.shape[1]
        return [stream[:, n:] for stream in self._streams(self.tokens(xs, ys, xq, descriptor), n)]

    def readout(self, state: Tensor) -> Tensor:
        """Minus the label slot: (B, m, D) → (B, m)."""
        return -state[..., self.shape.d]

    def attention_stack(self) -> LSA:
        return self

    @torch.no_grad()
    def initialise(self, init: str, scale: float, generator: torch.Generator) -> None:
        """Set the weights: ``gaussian`` (every free entry N(0, scale²)), ``zero_block`` (only the sparse
        blocks, N(0, scale²)) or ``balanced`` (W_KQ block = scale·ΘΘᵀ/‖ΘΘᵀ‖_F, v = −scale, so
        ‖W_KQ‖_F = |v| and the initial predictor is a positive multiple of a GD step). With ``zero_block`` and
        ``balanced`` every other entry (the full form's, the block form's features → features values) is 0."""
        for block in self.blocks:
            attn = block.attn
            heads, feats = self.shape.heads, self.shape.width - 1
            if init == "gaussian":
                for param in attn.parameters():
                    param.copy_(scale * torch.randn(param.shape, generator=generator, dtype=torch.float64))
                continue
            if init == "zero_block":
                kq = scale * torch.randn(heads, feats, feats, generator=generator, dtype=torch.float64)
                value = scale * torch.randn(heads, generator=generator, dtype=torch.float64)
            elif init == "balanced":
                theta = torch.randn(heads, feats, feats, generator=generator, dtype=torch.float64)
                gram = theta @ theta.transpose(-1, -2)
                kq = scale * gram / torch.linalg.matrix_norm(gram).view(-1, 1, 1)
                value = torch.full((heads,), -scale, dtype=torch.float64)
            else:
                raise ValueError(f"model.init must be one of gaussian, zero_block, balanced; got {init!r}")
            if self.shape.param != "full":
                attn.kq_block.copy_(kq)
                attn.value.copy_(value)
                if self.shape.param == "block":
                    attn.pv_block.zero_()
            else:
                idx = attn.features
                attn.w_kq.zero_()
                attn.w_pv.zero_()
                attn.w_kq[:, idx.view(-1, 1), idx.view(1, -1)] = kq.to(attn.w_kq.dtype)
                attn.w_pv[:, self.shape.d, self.shape.d] = value.to(attn.w_pv.dtype)


def build_lsa(cfg: LSAConfig, task, generator: torch.Generator) -> LSA:
    """An LSA (or kernel attention) sized for ``task`` (d, descriptor), initialised from ``generator``."""
    cfg = cfg.resolved(task.cfg)  # param=auto, for a config not read through Config
    activation = cfg.activation if isinstance(cfg, KernelAttentionConfig) else "linear"
    model = LSA(LSAShape(task.d, task.descriptor_dim, cfg.layers, cfg.heads, cfg.param, activation))
    model.initialise(cfg.init, cfg.init_scale, generator)
    return model


MODELS.register("lsa", LSAConfig, build_lsa, "linear self-attention on the stacked tokens (x_i, y_i[, s])")
MODELS.register("kernel_attention", KernelAttentionConfig, build_lsa, "attention with h(scores): functional GD")

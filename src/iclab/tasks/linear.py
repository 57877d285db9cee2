"""Linear regression prompts: y = wᵀx + ε with Gaussian x (any covariance, optional mean shift) and w.

x ~ N(μ, Λ) with Λ = Q diag(λ) Qᵀ: λ all ones (isotropic), a given diagonal (``x_cov_diag``) or geometric
from 1 to 1/κ (``condition_number``); Q = I, one fixed random rotation, or a fresh one per prompt.
w ~ N(0, Σ_w) with Σ_w = I, a given diagonal, or Λ⁻¹. μ = 0, μ ~ N(0, τ² I) per prompt, or one of K fixed
means drawn once from N(0, τ² I). The descriptor given to the model is μ, or the one-hot index of μ.
Labels are y = f(wᵀx) + ε with f the identity (linear regression) or a non-linear response (relu, tanh,
cubic, square), optionally times a random sign ±1 drawn per prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor

from iclab.config import TaskConfig
from iclab.learners import Learner, Ridge
from iclab.prompts import Prompts
from iclab.registry import TASKS
from iclab.seeding import make_generator
from iclab.tasks.base import Sampler


class LinearTaskConfig(TaskConfig):
    """Linear regression and its variants (``task.name=linear``)."""

    name: Literal["linear"] = Field("linear", description="task family")
    x_cov_diag: tuple[float, ...] | None = Field(
        None, description="eigenvalues of the x covariance Λ (length d, each > 0)"
    )
    condition_number: float | None = Field(None, ge=1.0, description="κ: eigenvalues geometric from 1 down to 1/κ")
    rotation: Literal["none", "fixed", "per_prompt"] = Field(
        "none", description="eigenbasis of Λ: axes, one Haar rotation drawn from the seed, or one per prompt"
    )
    w_cov: Literal["identity", "diag", "inverse_x"] = Field(
        "identity", description="covariance of w: I, diag(task.w_cov_diag), or Λ⁻¹"
    )
    w_cov_diag: tuple[float, ...] | None = Field(None, description="diagonal of the w covariance (task.w_cov=diag)")
    x_mean_std: float = Field(0.0, ge=0.0, description="τ: per-prompt mean μ ~ N(0, τ² I) of x")
    n_means: int = Field(0, ge=0, description="K ≥ 1: μ drawn uniformly from K means fixed by the seed")
    descriptor: Literal["none", "mean", "onehot"] = Field(
        "none", description="side information for the model: μ (length d) or the one-hot index of μ (length K)"
    )
    response: Literal["identity", "relu", "tanh", "cubic", "square"] = Field(
        "identity", description="y = f(wᵀx) + ε with this f"
    )
    random_sign: bool = Field(False, description="y = ±f(wᵀx), one random sign per prompt")

    @property
    def descriptor_dim(self) -> int:
        """μ has d entries, the one-hot index K."""
        return {"none": 0, "mean": self.d, "onehot": self.n_means}[self.descriptor]

    @model_validator(mode="after")
    def _consistent(self) -> LinearTaskConfig:
        for key in ("x_cov_diag", "w_cov_diag"):
            value = getattr(self, key)
            if value is not None and not all(v > 0 for v in value):
                raise ValueError(f"task.{key} must be > 0, got {value!r}")
        if self.x_cov_diag is not None and self.condition_number is not None:
            raise ValueError("task.x_cov_diag and task.condition_number are exclusive; give one, got both")
        if self.x_cov_diag is not None and len(self.x_cov_diag) != self.d:
            raise ValueError(f"task.x_cov_diag must have task.d={self.d} entries, got {len(self.x_cov_diag)}")
        if self.w_cov == "diag" and (self.w_cov_diag is None or len(self.w_cov_diag) != self.d):
            got = None if self.w_cov_diag is None else len(self.w_cov_diag)
            raise ValueError(f"task.w_cov_diag must have task.d={self.d} entries when task.w_cov=diag, got {got}")
        if self.w_cov != "diag" and self.w_cov_diag is not None:
            raise ValueError(f"task.w_cov_diag needs task.w_cov=diag, got task.w_cov={self.w_cov}")
        if self.n_means > 0 and self.x_mean_std == 0.0:
            raise ValueError(
                "task.x_mean_std must be > 0 when task.n_means > 0 (the fixed means are drawn "
                "from N(0, x_mean_std^2 I)), got 0"
            )
        if self.descriptor == "onehot" and self.n_means == 0:
            raise ValueError("task.descriptor=onehot needs task.n_means >= 1 (the index of the mean), got 0")
        return self


def random_rotation(batch: int, d: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Haar-distributed orthogonal matrices ``(batch, d, d)`` (QR of a Gaussian with the sign fixed)."""
    gauss = torch.randn(batch, d, d, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
    signs[signs == 0] = 1.0
    return (q * signs.unsqueeze(-2)).to(dtype)


def spectrum(cfg: LinearTaskConfig) -> Tensor:
    """Eigenvalues λ (d,) of the x covariance, float64."""
    if cfg.x_cov_diag is not None:
        return torch.tensor(cfg.x_cov_diag, dtype=torch.float64)
    if cfg.condition_number is not None and cfg.d > 1:
        exponents = torch.arange(cfg.d, dtype=torch.float64) / (cfg.d - 1)
        return cfg.condition_number ** (-exponents)
    return torch.ones(cfg.d, dtype=torch.float64)


def is_isotropic(cfg: LinearTaskConfig) -> bool:
    """Whether :func:`spectrum` is all ones (Λ = I up to the rotation), by the same rules but from the config
    alone: the memory check builds tasks on the meta device, where a tensor has no values."""
    if cfg.x_cov_diag is not None:
        return all(value == 1.0 for value in cfg.x_cov_diag)
    return cfg.condition_number in (None, 1.0) or cfg.d == 1


RESPONSES: dict[str, Callable[[Tensor], Tensor]] = {
    "identity": lambda t: t,
    "relu": torch.relu,
    "tanh": torch.tanh,
    "cubic": lambda t: t**3,
    "square": lambda t: t**2,
}


class LinearTask(Sampler):
    """Sampler of linear-regression prompts; fixed parts (rotation, the K means) come from ``seed``."""

    cfg: LinearTaskConfig

    def __init__(self, cfg: LinearTaskConfig, seed: int = 0) -> None:
        super().__init__(cfg, seed)
        self.eigenvalues = spectrum(cfg)  # (d,)
        self.isotropic = is_isotropic(cfg)
        fixed = make_generator(seed, "task.fixed")
        self.rotation = random_rotation(1, cfg.d, fixed, torch.float64)[0] if cfg.rotation == "fixed" else None
        self.means = (
            cfg.x_mean_std * torch.randn(cfg.n_means, cfg.d, generator=fixed, dtype=torch.float64)
            if cfg.n_means > 0
            else None
        )  # (K, d)

    def _basis(self) -> Tensor:
        return self.rotation if self.rotation is not None else torch.eye(self.cfg.d, dtype=torch.float64)

    @property
    def x_cov(self) -> Tensor:
        """Λ (d, d) float64, the covariance of x around its mean (per-prompt rotations: not fixed)."""
        if self.cfg.rotation == "per_prompt":
            raise ValueError("task.rotation=per_prompt: the x covariance differs from prompt to prompt")
        basis = self._basis()
        return basis @ torch.diag(self.eigenvalues) @ basis.T

    @property
    def w_cov(self) -> Tensor:
        """Σ_w (d, d) float64."""
        if self.cfg.w_cov == "identity":
            return torch.eye(self.cfg.d, dtype=torch.float64)
        if self.cfg.w_cov == "diag":
            return torch.diag(torch.tensor(self.cfg.w_cov_diag, dtype=torch.float64))
        return torch.linalg.inv(self.x_cov)

    def x_covariance(self) -> Tensor | None:
        """Λ, or None when the eigenbasis is drawn per prompt."""
        return None if self.cfg.rotation == "per_prompt" else self.x_cov

    def reference_learner(self) -> Learner:
        """Ridge with α = σ² (the Bayes predictor for x ~ N(0, I), w ~ N(0, I); α = 1e-3 without noise)."""
        return Ridge(self.cfg.noise_std**2 or 1e-3)

    def zero_error(self) -> float | None:
        """tr(Λ Σ_w) + σ² for centred x and the identity response (d + σ² with the defaults); else None."""
        cfg = self.cfg
        if cfg.response != "identity" or cfg.x_mean_std > 0:
            return None
        if cfg.w_cov == "inverse_x":
            signal = float(cfg.d)
        elif cfg.w_cov == "identity":
            signal = float(self.eigenvalues.sum())
        elif self.x_covariance() is not None:
            signal = float(torch.trace(self.x_cov @ self.w_cov))
        else:
            return None
        return signal + cfg.noise_std**2

    def sample(
        self,
        batch: int,
        generator: torch.Generator,
        *,
        n: int | None = None,
        d_active: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Prompts:
        """See :meth:`Sampler.sample`; the draws are made on the CPU in ``dtype`` in a fixed order; ``w`` (B, d)
        and the descriptor (B, k) come with the prompts."""
        cfg = self.cfg
        n = cfg.n if n is None else n
        d, m = cfg.d, cfg.n_queries

        basis = None  # (B, d, d) eigenbasis Q, None for Q = I
        if cfg.rotation == "per_prompt":
            basis = random_rotation(batch, d, generator, dtype)
        elif self.rotation is not None:
            basis = self.rotation.to(dtype).expand(batch, d, d)
        sqrt_eig = None if self.isotropic else self.eigenvalues.sqrt().to(dtype)  # None: all eigenvalues 1

        g_w = torch.randn(batch, d, generator=generator, dtype=dtype)
        if cfg.w_cov == "identity":
            w = g_w
        elif cfg.w_cov == "diag":
            w = g_w * torch.tensor(cfg.w_cov_diag, dtype=dtype).sqrt()
        else:  # inverse_x: w = Q diag(λ^{-1/2}) g
            scaled = g_w if sqrt_eig is None else g_w / sqrt_eig
            w = scaled if basis is None else torch.einsum("bij,bj->bi", basis, scaled)

        descriptor = None
        mean = None  # (B, d); None: x is centred
        if self.means is not None:
            index = torch.randint(cfg.n_means, (batch,), generator=generator)
            mean = self.means[index].to(dtype)
            if cfg.descriptor == "onehot":
                descriptor = torch.nn.functional.one_hot(index, cfg.n_means).to(dtype)
        elif cfg.x_mean_std > 0:
            mean = cfg.x_mean_std * torch.randn(batch, d, generator=generator, dtype=dtype)
        if cfg.descriptor == "mean":
            descriptor = torch.zeros(batch, d, dtype=dtype) if mean is None else mean

        def draw_x(count: int) -> Tensor:  # (B, count, d) = μ + Q diag(√λ) g (each factor skipped when it is 1)
            x = torch.randn(batch, count, d, generator=generator, dtype=dtype)
            if sqrt_eig is not None:
                x = x * sqrt_eig
            if basis is not None:
                x = x @ basis.transpose(-1, -2)
            if mean is not None:
                x = mean.unsqueeze(1) + x
            if d_active is not None and d_active < d:
                x[..., d_active:] = 0.0
            return x

        xs, xq = draw_x(n), draw_x(m)
        noise = torch.randn(batch, n + m, generator=generator, dtype=dtype)  # drawn even for σ = 0: the same stream
        signal = RESPONSES[cfg.response](torch.cat([xs, xq], dim=1) @ w.unsqueeze(-1)).squeeze(-1)  # (B, n+m)
        if cfg.random_sign:
            signal = signal * (2 * torch.randint(2, (batch, 1), generator=generator) - 1).to(dtype)
        labels = signal + cfg.noise_std * noise if cfg.noise_std > 0 else signal
        return Prompts(xs=xs, ys=labels[:, :n], xq=xq, yq=labels[:, n:], descriptor=descriptor, w=w)


TASKS.register("linear", LinearTaskConfig, LinearTask, "linear regression y = f(wᵀx) + ε, Gaussian x and w")

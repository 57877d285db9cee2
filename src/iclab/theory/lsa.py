"""One-layer LSA theory for isotropic linear regression (Mahankali, Hashimoto, Ma 2024).

With x ~ N(0, I_d), w ~ N(0, I_d), noise ε ~ N(0, σ²) on context and query labels, the best one-layer LSA
is one GD step ŷ = η x_qᵀ (1/n) Σ y_i x_i with η* = n/(n + d + 1 + σ²) and population loss
L* = d(d + 1 + σ²)/(n + d + 1 + σ²) + σ².
"""

from __future__ import annotations

from dataclasses import dataclass

from iclab.config import TaskConfig


@dataclass(frozen=True)
class GDOptimum:
    """The optimal one-step GD learner: step size ``lr`` and its population loss ``loss``."""

    lr: float
    loss: float


def isotropic_gd_optimum(d: int, n: int, noise_std: float = 0.0) -> GDOptimum:
    """Optimal step size and loss of one GD step (= the optimal one-layer LSA) on isotropic data."""
    if d < 1 or n < 1:
        raise ValueError(f"d and n must be >= 1, got d={d}, n={n}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    s2 = noise_std**2
    denominator = n + d + 1 + s2
    return GDOptimum(lr=n / denominator, loss=d * (d + 1 + s2) / denominator + s2)


def isotropic_reference(task: TaskConfig) -> dict[str, float]:
    """{"label": loss} of the optimal one-layer LSA when ``task`` is the isotropic centred linear task the
    closed form covers (x, w ~ N(0, I)); empty otherwise. Used as a level on training plots."""
    covered = (
        task.name == "linear"
        and task.x_cov_diag is None
        and task.condition_number is None
        and task.w_cov == "identity"
        and task.x_mean_std == 0
    )
    if not covered:
        return {}
    return {"optimal 1-layer LSA (theory)": isotropic_gd_optimum(task.d, task.n, task.noise_std).loss}

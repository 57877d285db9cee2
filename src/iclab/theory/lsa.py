"""One-layer LSA theory: the exact population loss of ŷ = x_qᵀ Γ h, h = (1/n) Σ_i y_i x_i, and its optimum.

With x ~ N(0, Λ), w ~ N(0, Σ_w), y = wᵀx + ε, ε ~ N(0, σ²) on context and query labels (derivation in
docs/theory.md):

    M = E[h hᵀ] = (1 + 1/n) Λ Σ_w Λ + ((tr(Λ Σ_w) + σ²)/n) Λ
    L(Γ) = E(ŷ − y_q)² = tr(Γᵀ Λ Γ M) − 2 tr(Γ Λ Σ_w Λ) + tr(Λ Σ_w) + σ²
    Γ* = Σ_w Λ M⁻¹,  L* = tr(Λ Σ_w) + σ² − tr(Γ* Λ Σ_w Λ)

n = math.inf is allowed (1/n = 0: Γ* = Λ⁻¹, L* = σ²). Isotropic case (Mahankali, Hashimoto, Ma 2024):
Γ* = n/(n + d + 1 + σ²) I, L* = d(d + 1 + σ²)/(n + d + 1 + σ²) + σ².
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclab.config import TaskConfig
from iclab.theory.checks import as_matrix, as_spd, check_n
from iclab.validate import check_number


@dataclass(frozen=True)
class GDOptimum:
    """The optimal one-step GD learner: step size ``lr`` and its population loss ``loss``."""

    lr: float
    loss: float


@dataclass(frozen=True)
class LSAOptimum:
    """The optimal preconditioner ``gamma`` (d, d) of ŷ = x_qᵀ Γ h and its population loss ``loss``."""

    gamma: np.ndarray
    loss: float

    @property
    def step_size(self) -> float | None:
        """η when Γ* = η I (one plain GD step), else None."""
        eta = float(np.trace(self.gamma)) / self.gamma.shape[0]
        scale = max(abs(eta), 1e-300)
        is_scalar = np.allclose(self.gamma, eta * np.eye(self.gamma.shape[0]), rtol=0, atol=1e-10 * scale)
        return eta if is_scalar else None


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


def _inputs(
    n: float, x_cov: object, w_cov: object | None, noise_std: float
) -> tuple[float, np.ndarray, np.ndarray, float]:
    """Validated (1/n, Λ, Σ_w, σ²)."""
    inv_n = check_n(n)
    lam = as_spd(x_cov, "x_cov")
    d = lam.shape[0]
    sigma_w = np.eye(d) if w_cov is None else as_spd(w_cov, "w_cov", d)
    return inv_n, lam, sigma_w, check_number("noise_std", noise_std, ge=0.0) ** 2


def _moment(inv_n: float, lam: np.ndarray, sigma_w: np.ndarray, noise_var: float) -> np.ndarray:
    signal = lam @ sigma_w @ lam
    return (1 + inv_n) * signal + inv_n * (np.trace(lam @ sigma_w) + noise_var) * lam


def lsa_moment(n: float, x_cov: object, w_cov: object | None = None, noise_std: float = 0.0) -> np.ndarray:
    """M = E[h hᵀ] (d, d) of h = (1/n) Σ_i y_i x_i."""
    return _moment(*_inputs(n, x_cov, w_cov, noise_std))


def lsa_loss(gamma: object, n: float, x_cov: object, w_cov: object | None = None, noise_std: float = 0.0) -> float:
    """Exact E(x_qᵀ Γ h − y_q)² (no ½) for Γ = ``gamma`` (d, d), x ~ N(0, x_cov), w ~ N(0, w_cov or I)."""
    inv_n, lam, sigma_w, noise_var = _inputs(n, x_cov, w_cov, noise_std)
    g = as_matrix(gamma, "gamma", lam.shape)
    moment = _moment(inv_n, lam, sigma_w, noise_var)
    quadratic = np.trace(g.T @ lam @ g @ moment)
    linear = np.trace(g @ lam @ sigma_w @ lam)
    return float(quadratic - 2 * linear + np.trace(lam @ sigma_w) + noise_var)


def lsa_optimum(n: float, x_cov: object, w_cov: object | None = None, noise_std: float = 0.0) -> LSAOptimum:
    """Γ* = Σ_w Λ M⁻¹ and L* for the one-layer LSA (any SPD ``x_cov``, ``w_cov``; n may be math.inf)."""
    inv_n, lam, sigma_w, noise_var = _inputs(n, x_cov, w_cov, noise_std)
    moment = _moment(inv_n, lam, sigma_w, noise_var)
    gamma = np.linalg.solve(moment.T, (sigma_w @ lam).T).T  # Σ_w Λ M⁻¹
    loss = np.trace(lam @ sigma_w) + noise_var - np.trace(gamma @ lam @ sigma_w @ lam)
    return LSAOptimum(gamma=gamma, loss=float(loss))

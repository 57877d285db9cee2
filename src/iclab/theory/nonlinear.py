"""Non-linear responses y = ξ f(wᵀx) + ε (x, w ~ N(0, I_d), ε ~ N(0, σ²), ξ = 1 or a random sign per
prompt) and the one-layer LSA predictor ŷ = x_qᵀ Γ h, h = (1/n) Σ_i y_i x_i. Prompts of this kind come
from the linear task with ``task.response=identity|relu|tanh|cubic`` (and ``task.random_sign``).

Write w = s ŵ (s² ~ χ²_d, ŵ uniform on the sphere, independent), z = wᵀx = s u with u ~ N(0, 1), and
a(s) = E_u[f(su) u]. Splitting x = ŵ u + x_⊥ gives E[y x | w] = a(s) ŵ and
E[y² x xᵀ | w] = (σ² + E f²) I + (E[f² u²] − E f²) ŵŵᵀ, and averaging ŵŵᵀ → I/d:

    L(Γ) = κ ‖Γ‖²_F − 2 α tr Γ + c,   α = E_s[a(s)²]/d,   c = E_s E_u f(su)² + σ²,
    κ = (1/n)(σ² + E f² + (E[f² u²] − E f²)/d) + (1 − 1/n) α.

So Γ* = (α/κ) I — still one plain GD step, with step size η = α/κ — and L* = c − d α²/κ. ξ² = 1, so a
random sign leaves the loss unchanged. Closed forms (E s^{2k} = d(d+2)…(d+2k−2)): linear η = n/(n+d+1+σ²);
ReLU η = n/(n+2d+3+4σ²); x³ through the moments 3, 15, 105 of u. tanh: quadrature over u (adaptive) and s
(generalised Gauss–Laguerre in s²/2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.integrate import quad_vec
from scipy.special import roots_genlaguerre

from iclab.theory.checks import as_matrix, check_n
from iclab.theory.lsa import LSAOptimum
from iclab.validate import check_number

RESPONSES = ("identity", "relu", "tanh", "cubic")  # the names of task.response
_NUMPY = {"identity": lambda z: z, "relu": lambda z: np.maximum(z, 0.0), "tanh": np.tanh, "cubic": lambda z: z**3}
_U_RANGE = 14.0  # φ(14) ≈ 1e-43: the inner integrals are truncated there
_S_NODES = 320  # Gauss–Laguerre nodes over t = s²/2 (exact for polynomial responses; tanh to ~1e-10)


@dataclass(frozen=True)
class NonlinearMoments:
    """The scalars of L(Γ) = κ ‖Γ‖²_F − 2 α tr Γ + c."""

    alpha: float
    kappa: float
    c: float


def _check_response(response: str) -> str:
    if response not in RESPONSES:
        raise ValueError(f"response must be one of {', '.join(RESPONSES)}; got {response!r}")
    return response


def _closed_form(response: str, d: int) -> tuple[float, float, float, float]:
    """(E a², E f², E[f² u²], E f²) averaged over s — the three s-averages the loss needs, per response."""
    s2, s6 = d, d * (d + 2) * (d + 4)  # E s², E s⁶
    if response == "identity":
        return s2, s2, 3 * s2, s2
    if response == "relu":
        return s2 / 4, s2 / 2, 3 * s2 / 2, s2 / 2
    return 9 * s6, 15 * s6, 105 * s6, 15 * s6  # cubic: a = 3s³, E u⁶ = 15, E u⁸ = 105


def _quadrature(response: str, d: int, nodes: int) -> tuple[float, float, float, float]:
    f = _NUMPY[response]
    t, weights = roots_genlaguerre(nodes, d / 2 - 1)
    weights = weights / weights.sum()
    s = np.sqrt(2 * t)  # (p,)

    def integrand(u: float) -> np.ndarray:
        fu = f(s * u)
        return np.concatenate([fu * u, fu**2, fu**2 * u * u]) * np.exp(-u * u / 2) / np.sqrt(2 * np.pi)

    opts = {"epsabs": 1e-14, "epsrel": 1e-12}
    inner = quad_vec(integrand, -_U_RANGE, 0.0, **opts)[0] + quad_vec(integrand, 0.0, _U_RANGE, **opts)[0]
    a, f2, f2u2 = inner.reshape(3, nodes)
    return weights @ a**2, weights @ f2, weights @ f2u2, weights @ f2


def nonlinear_moments(
    response: str, n: float, d: int, noise_std: float = 0.0, method: str = "auto", nodes: int = _S_NODES
) -> NonlinearMoments:
    """α, κ, c for y = f(wᵀx) + ε; ``method``: ``closed`` (identity, relu, cubic), ``quadrature`` (any
    response), ``auto`` (closed where it exists)."""
    _check_response(response)
    inv_n, d = check_n(n), check_number("d", d, ge=1, integer=True)
    noise_var = check_number("noise_std", noise_std, ge=0.0) ** 2
    if method not in ("auto", "closed", "quadrature"):
        raise ValueError(f"method must be one of auto, closed, quadrature; got {method!r}")
    if method == "closed" and response == "tanh":
        raise ValueError("response='tanh' has no closed form here; use method='quadrature' or 'auto'")
    use_closed = method == "closed" or (method == "auto" and response != "tanh")
    a2, f2, f2u2, f2_again = _closed_form(response, d) if use_closed else _quadrature(response, d, nodes)
    alpha = a2 / d
    kappa = inv_n * (noise_var + f2 + (f2u2 - f2_again) / d) + (1 - inv_n) * alpha
    return NonlinearMoments(alpha=float(alpha), kappa=float(kappa), c=float(f2 + noise_var))


def nonlinear_loss(
    gamma: object, response: str, n: float, d: int, noise_std: float = 0.0, method: str = "auto"
) -> float:
    """E(x_qᵀ Γ h − y_q)² for Γ = ``gamma`` (d, d) and y = ξ f(wᵀx) + ε."""
    g = as_matrix(gamma, "gamma", (check_number("d", d, ge=1, integer=True), d))
    mom = nonlinear_moments(response, n, d, noise_std, method)
    return float(mom.kappa * np.sum(g * g) - 2 * mom.alpha * np.trace(g) + mom.c)


def nonlinear_optimum(response: str, n: float, d: int, noise_std: float = 0.0, method: str = "auto") -> LSAOptimum:
    """Γ* = (α/κ) I (``.step_size`` = α/κ) and L* = c − d α²/κ."""
    mom = nonlinear_moments(response, n, d, noise_std, method)
    eta = mom.alpha / mom.kappa
    return LSAOptimum(gamma=eta * np.eye(d), loss=mom.c - d * mom.alpha * eta)

"""Task descriptors (Huang & Ge 2025): exact loss and optima of a one-layer LSA on mean-shifted regression.

Each prompt draws a task mean μ and w ~ N(0, Σ_w); x_i, x_q ~ N(μ, Λ); y = wᵀx + ε, ε ~ N(0, σ²). μ is
either Gaussian, μ ~ N(0, τ² I) (τ a standard deviation, as task.x_mean_std), or one of K fixed means.
The LSA sees features f = (x, s) with the descriptor s = μ (``mean``), the one-hot index of μ
(``onehot``) or nothing (``none``), and predicts ŷ = h_fᵀ B f_q (:mod:`iclab.theory.quadratic`).

Given μ (and w, which enters h only to second order) the moments are Gaussian fourth moments; with
m = E[f | μ] = (μ, s), P = [I; 0] (F, d), C = m μᵀ + P Λ (F, d):

    S(μ) = E[f fᵀ | μ]          = m mᵀ + P Λ Pᵀ
    R(μ) = E[h_f y_q f_qᵀ | μ]   = C Σ_w Cᵀ
    E[y² f fᵀ | μ]             = (μᵀΣ_wμ + tr ΛΣ_w + σ²) S + 2(m uᵀ + u mᵀ) + 2 P Λ Σ_w Λ Pᵀ,  u = P Λ Σ_w μ
    H(μ) = E[h_f h_fᵀ | μ]       = (1/n) E[y² f fᵀ | μ] + (1 − 1/n) C Σ_w Cᵀ
    Q = E_μ[H ⊗ S],  r = E_μ[vec R],  c = E_μ[μᵀΣ_wμ] + tr ΛΣ_w + σ².

The average over K fixed means is a finite sum. For Gaussian μ (Λ, Σ_w multiples of I) Q(μ) is a
polynomial of degree ≤ 6 in μ and rotation-equivariant, so E_μ = E_r E_{rotation}: the rotation average
of a 4-index tensor is its projection on the three pairings δδ (O(d) Weingarten calculus) and the radial
average over r² = 2τ²t, t ~ Gamma(d/2), is exact with a 4-node generalised Gauss–Laguerre rule.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import roots_genlaguerre

from iclab.config import TaskConfig
from iclab.theory.checks import as_matrix, as_spd, check_n
from iclab.theory.quadratic import QuadraticLoss
from iclab.validate import check_number

DESCRIPTORS = ("none", "mean", "onehot")
RADIAL_NODES = 4  # exact for the degree-3 polynomial in t = r²/(2τ²) that the rotation average leaves


def _conditional_moments(
    mu: np.ndarray, side: np.ndarray, inv_n: float, lam: np.ndarray, sigma_w: np.ndarray, noise_var: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """mu: (N, d) task means, side: (N, k) their descriptors → H, S, R: (N, F, F) and c: (N,)."""
    count, d = mu.shape
    m = np.concatenate([mu, side], axis=1)  # (N, F)
    features = m.shape[1]
    embed = np.eye(features, d)  # P: x coordinates first
    p_lam = embed @ lam  # (F, d)
    s = m[:, :, None] * m[:, None, :] + p_lam @ embed.T  # (N, F, F)
    c_mat = m[:, :, None] * mu[:, None, :] + p_lam  # (N, F, d)
    r = c_mat @ sigma_w @ c_mat.transpose(0, 2, 1)  # (N, F, F)
    signal = np.einsum("nd,de,ne->n", mu, sigma_w, mu)  # μᵀ Σ_w μ
    c = signal + np.trace(lam @ sigma_w) + noise_var  # (N,)
    u = mu @ sigma_w @ p_lam.T  # (N, F): rows (P Λ Σ_w μ)ᵀ
    cross = m[:, :, None] * u[:, None, :]
    second = c[:, None, None] * s + 2 * (cross + cross.transpose(0, 2, 1)) + 2 * p_lam @ sigma_w @ p_lam.T
    h = inv_n * second + (1 - inv_n) * r
    return h, s, r, c


def _pairing_average(t: np.ndarray, blocks: int, d: int) -> np.ndarray:
    """O(d) average of a (F, F, F, F) tensor, F = blocks·d, acting on the coordinate of each index."""
    t8 = t.reshape(blocks, d, blocks, d, blocks, d, blocks, d)
    pairings = (("AiBiCjDj", "ab,ce"), ("AiBjCiDj", "ac,be"), ("AiBjCjDi", "ae,bc"))
    inner = np.stack([np.einsum(f"{spec}->ABCD", t8) for spec, _ in pairings])
    gram = np.full((3, 3), float(d)) + (d * d - d) * np.eye(3)  # ⟨δδ, δδ⟩
    coef = np.einsum("pq,qABCD->pABCD", np.linalg.pinv(gram), inner)
    eye = np.eye(d)
    out = sum(np.einsum(f"ABCD,{deltas}->AaBbCcDe", coef[i], eye, eye) for i, (_, deltas) in enumerate(pairings))
    return out.reshape(t.shape)


def _gaussian_mean_moments(
    d: int, tau: float, descriptor: str, inv_n: float, lam: np.ndarray, sigma_w: np.ndarray, noise_var: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Q, r, c for μ ~ N(0, τ² I): radial Gauss–Laguerre nodes × rotation average."""
    t_nodes, t_weights = roots_genlaguerre(RADIAL_NODES, d / 2 - 1)
    t_weights = t_weights / t_weights.sum()
    mu = np.zeros((RADIAL_NODES, d))
    mu[:, 0] = tau * np.sqrt(2 * t_nodes)
    side = mu if descriptor == "mean" else np.zeros((RADIAL_NODES, 0))
    h, s, r, c = _conditional_moments(mu, side, inv_n, lam, sigma_w, noise_var)
    blocks = 2 if descriptor == "mean" else 1
    features = blocks * d
    q = sum(
        w * _pairing_average(np.einsum("ac,be->abce", hj, sj), blocks, d)
        for w, hj, sj in zip(t_weights, h, s, strict=True)
    )
    r_mean = np.einsum("j,jab->ab", t_weights, r).reshape(blocks, d, blocks, d)
    r_iso = np.einsum("AB,ij->AiBj", np.einsum("AiBi->AB", r_mean) / d, np.eye(d))
    return q.reshape(features**2, features**2), r_iso.reshape(-1), float(t_weights @ c)


def _check_isotropic(matrix: np.ndarray, name: str) -> None:
    scale = matrix[0, 0]
    if not np.allclose(matrix, scale * np.eye(matrix.shape[0]), rtol=0, atol=1e-12 * abs(scale)):
        raise ValueError(f"{name} must be a multiple of the identity when the means are Gaussian (tau)")


QUADRATIC_FORM_MATRICES = 5  # the (F², F²) form, gradient flow's Jacobian, work copies (3.4 GB at F = 100)


def quadratic_form_bytes(features: int) -> int:
    """The memory the exact loss over B: (F, F) takes at its peak (:class:`QuadraticLoss`, its optimum and the
    gradient flow on it), F = ``features`` = d + the descriptor's length: QUADRATIC_FORM_MATRICES float64
    matrices of F² × F². Callers check it before building one (iclab.limits.check_memory)."""
    return QUADRATIC_FORM_MATRICES * features**4 * 8


def descriptor_problem(
    n: float,
    d: int,
    *,
    descriptor: str = "mean",
    tau: float = 0.0,
    means: object | None = None,
    mean_weights: object | None = None,
    noise_std: float = 0.0,
    x_cov: object | None = None,
    w_cov: object | None = None,
) -> QuadraticLoss:
    """The exact loss of ŷ = h_fᵀ B f_q as a :class:`QuadraticLoss` over B: (F, F), F = d + k.

    ``means=None``: μ ~ N(0, tau² I) (x_cov, w_cov multiples of I; descriptor none or mean). ``means``
    (K, d): μ is row k with probability ``mean_weights[k]`` (default 1/K); any SPD x_cov, w_cov (default
    I). n may be math.inf (h_f is then its conditional mean).
    """
    inv_n = check_n(n)
    d = check_number("d", d, ge=1, integer=True)
    if descriptor not in DESCRIPTORS:
        raise ValueError(f"descriptor must be one of {', '.join(DESCRIPTORS)}; got {descriptor!r}")
    tau = check_number("tau", tau, ge=0.0)
    noise_var = check_number("noise_std", noise_std, ge=0.0) ** 2
    lam = np.eye(d) if x_cov is None else as_spd(x_cov, "x_cov", d)
    sigma_w = np.eye(d) if w_cov is None else as_spd(w_cov, "w_cov", d)
    if means is None:
        if descriptor == "onehot":
            raise ValueError("descriptor='onehot' needs fixed means (means=(K, d) array)")
        _check_isotropic(lam, "x_cov")
        _check_isotropic(sigma_w, "w_cov")
        return QuadraticLoss(*_gaussian_mean_moments(d, tau, descriptor, inv_n, lam, sigma_w, noise_var))
    mu = as_matrix(means, "means")
    if mu.shape[1] != d:
        raise ValueError(f"means must have shape (K, {d}), got {mu.shape}")
    weights = np.full(len(mu), 1 / len(mu)) if mean_weights is None else np.asarray(mean_weights, dtype=np.float64)
    if weights.shape != (len(mu),) or np.any(weights < 0) or not math.isclose(weights.sum(), 1.0, rel_tol=1e-12):
        raise ValueError(f"mean_weights must be {len(mu)} non-negative numbers summing to 1")
    side = {"none": np.zeros((len(mu), 0)), "mean": mu, "onehot": np.eye(len(mu))}[descriptor]
    h, s, r, c = _conditional_moments(mu, side, inv_n, lam, sigma_w, noise_var)
    features = h.shape[1]
    q = np.einsum("k,kac,kbe->abce", weights, h, s).reshape(features**2, features**2)
    return QuadraticLoss(q=q, r=np.einsum("k,kab->ab", weights, r).reshape(-1), c=float(weights @ c))


def task_problem(task: TaskConfig, seed: int = 0, n: float | None = None) -> QuadraticLoss:
    """The :func:`descriptor_problem` of an iclab linear task config (its fixed means drawn from ``seed``);
    ``n`` overrides task.n (e.g. math.inf). Covers every linear task but per-prompt rotations."""
    from iclab.tasks import make_task

    if task.name != "linear":
        raise ValueError(f"task.name must be linear for the exact theory, got {task.name!r}")
    if task.rotation == "per_prompt":
        raise ValueError("task.rotation=per_prompt is not covered: the x covariance changes from prompt to prompt")
    sampler = make_task(task, seed)
    n = task.n if n is None else n
    common = {"descriptor": task.descriptor, "noise_std": task.noise_std}
    covs = {"x_cov": sampler.x_cov.numpy(), "w_cov": sampler.w_cov.numpy()}
    if sampler.means is not None:
        return descriptor_problem(n, task.d, means=sampler.means.numpy(), **common, **covs)
    if task.x_mean_std > 0:
        return descriptor_problem(n, task.d, tau=task.x_mean_std, **common, **covs)
    return descriptor_problem(n, task.d, means=np.zeros((1, task.d)), **common, **covs)


def standardising_predictor(
    d: int, descriptor: str, means: object | None = None, x_cov: object | None = None
) -> np.ndarray:
    """The n → ∞ optimum with a descriptor: ŷ = x_qᵀ Λ⁻¹ (1/n) Σ_i y_i (x_i − μ) → wᵀx_q, as B: (F, F).

    ``mean``: B_xx = Λ⁻¹, B_sx = −Λ⁻¹ (h_s = ȳ μ). ``onehot`` with means (K, d): ȳ μ = Mᵀ h_s, so
    B_sx = −M Λ⁻¹ with M = ``means``. Every other block is zero.
    """
    d = check_number("d", d, ge=1, integer=True)
    lam_inv = np.linalg.inv(np.eye(d) if x_cov is None else as_spd(x_cov, "x_cov", d))
    if descriptor == "mean":
        key = np.eye(d)
    elif descriptor == "onehot":
        if means is None:
            raise ValueError("descriptor='onehot' needs means=(K, d)")
        key = as_matrix(means, "means")
        if key.shape[1] != d:
            raise ValueError(f"means must have shape (K, {d}), got {key.shape}")
    else:
        raise ValueError(f"descriptor must be mean or onehot; got {descriptor!r}")
    b = np.zeros((d + key.shape[0], d + key.shape[0]))
    b[:d, :d] = lam_inv
    b[d:, :d] = -key @ lam_inv
    return b


def _centred_gd_moments(
    n: float,
    d: int,
    tau: float,
    means: object | None,
    mean_weights: object | None,
    noise_std: float,
    x_cov: object | None,
    w_cov: object | None,
) -> tuple[float, float, float]:
    """(T₁, T₂, c) with L(η) = η² T₁ − 2η T₂ + c for centred GD (see :func:`centred_gd_loss`)."""
    inv_n = check_n(n)
    d = check_number("d", d, ge=1, integer=True)
    tau = check_number("tau", tau, ge=0.0)
    noise_var = check_number("noise_std", noise_std, ge=0.0) ** 2
    lam = np.eye(d) if x_cov is None else as_spd(x_cov, "x_cov", d)
    sigma_w = np.eye(d) if w_cov is None else as_spd(w_cov, "w_cov", d)
    if means is None:  # μ ~ N(0, τ²I): E[(μᵀAμ)(μᵀBμ)] = τ⁴(tr A tr B + 2 tr AB)
        moment = tau**2 * np.eye(d)
        quartic = tau**4 * (np.trace(sigma_w) * np.trace(lam) + 2 * np.trace(sigma_w @ lam))
    else:
        mu = as_matrix(means, "means")
        if mu.shape[1] != d:
            raise ValueError(f"means must have shape (K, {d}), got {mu.shape}")
        weights = np.full(len(mu), 1 / len(mu)) if mean_weights is None else np.asarray(mean_weights, dtype=float)
        if weights.shape != (len(mu),) or np.any(weights < 0) or not math.isclose(weights.sum(), 1.0, rel_tol=1e-12):
            raise ValueError(f"mean_weights must be {len(mu)} non-negative numbers summing to 1")
        moment = np.einsum("k,ki,kj->ij", weights, mu, mu)
        quartic = float(weights @ (np.einsum("ki,ij,kj->k", mu, sigma_w, mu) * np.einsum("ki,ij,kj->k", mu, lam, mu)))
    second = lam + moment  # E[x xᵀ] = Λ + E[μμᵀ]
    base = np.trace(lam @ sigma_w) + noise_var  # E[y² | μ] − μᵀΣ_wμ
    lam2 = np.trace(lam @ lam)
    # E[(μᵀΣ_wμ + base)(tr Λ² + μᵀΛμ)]
    spread = quartic + np.trace(sigma_w @ moment) * lam2 + base * (lam2 + np.trace(lam @ moment))
    t1 = (1 + inv_n) * np.trace(second @ lam @ sigma_w @ lam) + inv_n * spread
    t2 = np.trace(second @ lam @ sigma_w)
    return float(t1), float(t2), float(np.trace(sigma_w @ moment) + base)


def centred_gd_loss(
    lr: float,
    n: float,
    d: int,
    *,
    tau: float = 0.0,
    means: object | None = None,
    mean_weights: object | None = None,
    noise_std: float = 0.0,
    x_cov: object | None = None,
    w_cov: object | None = None,
) -> float:
    """The exact loss of centred GD, ŷ = η x_qᵀ h, h = (1/n) Σ_i y_i (x_i − μ) (η = ``lr``; in B form
    η·:func:`standardising_predictor` with Λ = I), for μ ~ N(0, τ² I) (``means=None``) or one of the
    ``means`` (K, d), x ~ N(μ, Λ), w ~ N(0, Σ_w), y = wᵀx + ε; any SPD Λ, Σ_w. n may be math.inf.

    With g_i = x_i − μ ~ N(0, Λ) and α = wᵀμ, E[h | μ, w] = Λw and (Isserlis) n·Cov[h | μ, w] =
    (α² + wᵀΛw + σ²)Λ + ΛwwᵀΛ; x_q is independent of h given (μ, w), E[x_q x_qᵀ | μ] = Λ + μμᵀ =: E_μ, and
    E[y_q x_q | μ, w] = E_μ w. So L(η) = η² T₁ − 2η T₂ + c with

        T₁ = (1 + 1/n) E tr(E_μ ΛΣ_wΛ) + (1/n) E[(μᵀΣ_wμ + tr ΛΣ_w + σ²)(tr Λ² + μᵀΛμ)]
        T₂ = E tr(E_μ ΛΣ_w),   c = E[μᵀΣ_wμ] + tr ΛΣ_w + σ²

    (the μ averages: Gaussian fourth moments, or finite sums over the K means).
    """
    lr = check_number("lr", lr)
    t1, t2, c = _centred_gd_moments(n, d, tau, means, mean_weights, noise_std, x_cov, w_cov)
    return lr * lr * t1 - 2 * lr * t2 + c


def centred_gd_step(
    n: float,
    d: int,
    *,
    tau: float = 0.0,
    means: object | None = None,
    mean_weights: object | None = None,
    noise_std: float = 0.0,
    x_cov: object | None = None,
    w_cov: object | None = None,
) -> float:
    """The step η* = T₂/T₁ that minimises :func:`centred_gd_loss` at context length n (math.inf allowed).

    As n → ∞, η* = tr(ΛΣ_wE)/tr(ΛΣ_wΛE) with E = Λ + E[μμᵀ]: 1 when Λ = I, where centred GD is the n → ∞
    optimum (loss σ²). At finite n it is smaller: n/(n + 2(d + 1)) for Λ = Σ_w = I, τ = 1, σ = 0.
    """
    t1, t2, _ = _centred_gd_moments(n, d, tau, means, mean_weights, noise_std, x_cov, w_cov)
    return t2 / t1


def descriptor_gap(n: float, d: int, tau: float, noise_std: float = 0.0) -> tuple[float, float]:
    """(optimal loss without the descriptor, with the mean descriptor) for μ ~ N(0, τ² I), Λ = Σ_w = I."""
    without = descriptor_problem(n, d, descriptor="none", tau=tau, noise_std=noise_std).optimum()[1]
    with_mean = descriptor_problem(n, d, descriptor="mean", tau=tau, noise_std=noise_std).optimum()[1]
    return without, with_mean

"""The exact loss of a bilinear in-context predictor as a quadratic form in its weights.

A one-layer sparse LSA with features f = (x, descriptor) predicts ŷ = h_fᵀ B f_q, h_f = (1/n) Σ_i y_i f_i,
B = −v A (F, F). Its population loss is L(B) = bᵀ Q b − 2 rᵀ b + c with b = vec(B) (row-major),
Q = E[(h_f ⊗ f_q)(h_f ⊗ f_q)ᵀ], r = E[y_q h_f ⊗ f_q], c = E[y_q²].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from iclab.theory.checks import as_matrix

ROUNDING = 1e-9  # |value| ≤ ROUNDING · scale is 0 up to float64 rounding (e.g. the n = ∞ loss with μ: ~1e-13)


def snap_zero(value: float, scale: float) -> float:
    """``value``, or 0.0 when it is 0 up to rounding relative to ``scale`` (for a loss: E y², ``c``)."""
    return 0.0 if abs(value) <= ROUNDING * scale else value


@dataclass(frozen=True)
class QuadraticLoss:
    """L(B) = vec(B)ᵀ Q vec(B) − 2 rᵀ vec(B) + c for B: (F, F); ``q``: (F², F²), ``r``: (F²,)."""

    q: np.ndarray
    r: np.ndarray
    c: float

    @property
    def features(self) -> int:
        """F, the number of features (rows and columns of B)."""
        return int(round(np.sqrt(self.r.shape[0])))

    def _vec(self, b: object) -> np.ndarray:
        f = self.features
        return as_matrix(b, "B", (f, f)).ravel()

    def loss(self, b: object) -> float:
        """L(B) for B: (F, F)."""
        vec = self._vec(b)
        return float(vec @ self.q @ vec - 2 * self.r @ vec + self.c)

    def grad(self, b: object) -> np.ndarray:
        """∇_B L = 2 (Q vec(B) − r) as an (F, F) matrix."""
        vec = self._vec(b)
        return (2 * (self.q @ vec - self.r)).reshape(self.features, self.features)

    def optimum(self) -> tuple[np.ndarray, float]:
        """The minimum-norm minimiser B* = Q⁺ r (F, F) and L* = c − rᵀ Q⁺ r. Q is singular when some
        directions of B never change the prediction (e.g. the antisymmetric part of the descriptor block)."""
        vals, vecs = np.linalg.eigh(self.q)
        keep = vals > vals.max() * 1e-12
        b = vecs[:, keep] @ ((vecs[:, keep].T @ self.r) / vals[keep])
        return b.reshape(self.features, self.features), float(self.c - self.r @ b)

    def relative_error(self, b: object, reference: object) -> float:
        """‖B − B_ref‖/‖B_ref‖ (Frobenius) after dropping the directions Q ignores (its null space)."""
        vals, vecs = np.linalg.eigh(self.q)
        seen = vecs[:, vals > vals.max() * 1e-12]
        diff = seen.T @ (self._vec(b) - self._vec(reference))
        return float(np.linalg.norm(diff) / np.linalg.norm(seen.T @ self._vec(reference)))

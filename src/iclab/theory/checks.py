"""Validation of the public inputs of the theory functions (clear ``ValueError`` messages)."""

from __future__ import annotations

import math

import numpy as np


def check_n(n: float, name: str = "n") -> float:
    """A context length: an integer >= 1 or ``math.inf``; returns 1/n (0 for n = inf)."""
    if isinstance(n, bool) or not isinstance(n, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be an integer >= 1 or math.inf, got {n!r}")
    if n == math.inf:
        return 0.0
    if not (math.isfinite(n) and float(n).is_integer() and n >= 1):
        raise ValueError(f"{name} must be an integer >= 1 or math.inf, got {n!r}")
    return 1.0 / float(n)


def as_matrix(value: object, name: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A finite float64 2-D array (torch tensors and nested lists accepted)."""
    try:
        array = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a numeric matrix, got {type(value).__name__}") from None
    if array.ndim != 2 or (shape is not None and array.shape != shape):
        want = f"shape {shape}" if shape is not None else "a 2-D matrix"
        raise ValueError(f"{name} must be {want}, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    return array


def as_spd(value: object, name: str, d: int | None = None) -> np.ndarray:
    """A symmetric positive definite (d, d) float64 matrix."""
    array = as_matrix(value, name)
    if array.shape[0] != array.shape[1] or (d is not None and array.shape[0] != d):
        want = f"({d}, {d})" if d is not None else "square"
        raise ValueError(f"{name} must be {want}, got shape {array.shape}")
    scale = max(float(np.abs(array).max()), 1e-300)
    if not np.allclose(array, array.T, rtol=0, atol=1e-10 * scale):
        raise ValueError(f"{name} must be symmetric")
    try:
        np.linalg.cholesky(array)
    except np.linalg.LinAlgError:
        raise ValueError(f"{name} must be positive definite") from None
    return (array + array.T) / 2

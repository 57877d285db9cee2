"""The reference algorithms as pure batched functions.

Most are functions of the data's sufficient statistics: for a prompt (or prefix) with inputs X: (k, d) and
labels y: (k,), the Gram matrix ``gram = XᵀX: (..., d, d)``, the moment ``moment = Xᵀy: (..., d)`` and the
count ``count = k: (...)``. They return weights ``w: (..., d)``; the prediction at a query x_q is x_qᵀw.
Leading dimensions are free, so one call serves a batch of prompts and every prefix length at once.
Least squares and ridge are solved from X itself (:func:`ridge_predictions`), since XᵀX squares the
condition number; :func:`k_nearest` works on the points.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor


def sufficient_statistics(xs: Tensor, ys: Tensor, prefixes: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """xs: (B, n, d), ys: (B, n) → gram (B, d, d), moment (B, d), count (B,).

    With ``prefixes=True`` the statistics of every prefix 1..n: gram (B, n, d, d), moment (B, n, d),
    count (B, n) (cumulative sums, one pass).
    """
    moment, count = moment_statistics(xs, ys, prefixes)
    if not prefixes:
        return xs.transpose(-1, -2) @ xs, moment, count
    return torch.cumsum(xs.unsqueeze(-1) * xs.unsqueeze(-2), dim=1), moment, count  # gram (B, n, d, d)


def moment_statistics(xs: Tensor, ys: Tensor, prefixes: bool = False) -> tuple[Tensor, Tensor]:
    """The moment and count of :func:`sufficient_statistics` without the Gram matrix: (B, d), (B,), or
    (B, n, d), (B, n) with ``prefixes=True``."""
    batch, n, _ = xs.shape
    if not prefixes:
        return torch.einsum("bkd,bk->bd", xs, ys), xs.new_full((batch,), float(n))
    count = torch.arange(1, n + 1, dtype=xs.dtype, device=xs.device).expand(batch, n)
    return torch.cumsum(xs * ys.unsqueeze(-1), dim=1), count


# ----------------------------------------------------------------- ridge and least squares from X itself

_EPS = torch.finfo(torch.float64).eps
_RANK_TOL = _EPS**0.5  # a pivot below this share of the prefix's norm: numerically rank-deficient
_NULL_BASIS_LIMIT = 1e4  # largest entry of the null basis K trusted (see _null_space_prefixes)


def ridge_predictions(xs: Tensor, ys: Tensor, xq: Tensor, alpha: float = 0.0, prefixes: bool = False) -> Tensor:
    """Ridge regression (``alpha`` > 0) or minimum-norm least squares (``alpha`` = 0) at the queries, solved
    from X itself (never from XᵀX, which squares the condition number).

    xs: (B, n, d), ys: (B, n), xq: (B, m, d) → (B, m), or (B, n, m) with ``prefixes=True`` (the solution of
    every prefix 1..n). Computed in float64 and returned in ``xs``'s dtype. The weights are
    w = V diag(s/(s² + α)) Uᵀy from the SVD X = U diag(s) Vᵀ, where singular values at most
    eps·max(k, d)·s_max count as zero (numpy's ``lstsq`` rule, so α → 0 gives ``np.linalg.lstsq``).

    All prefixes come from a few factorizations per prompt: prefixes k ≤ d from one LQ factorisation of the
    first d rows (the row spaces are nested), prefixes k > d from the staircase basis of the left null space
    of [x_q; X] (the null spaces are nested); see :func:`_row_space_prefixes` and :func:`_null_space_prefixes`.
    A prompt whose first min(n, d) rows are numerically rank-deficient (a pivot below √eps of the rows' norm,
    where the nesting breaks down) or nearly so (see :func:`_null_space_prefixes`) is solved by the SVD at
    each prefix instead. A prompt with a non-finite entry gives NaN; nothing raises.
    """
    x, y, q = xs.double(), ys.double(), xq.double()
    if not prefixes:
        return _svd_predictions(x, y, q, alpha, torch.full(y.shape[:1], x.shape[1], device=x.device)).to(xs.dtype)
    batch, n, d = x.shape
    r = min(n, d)
    queries = q if q.shape[1] <= d else torch.eye(d, dtype=q.dtype, device=q.device).expand(batch, d, d)
    m = queries.shape[1]
    # one QR of the first r rows' transpose X_rᵀ = QR carrying the queries and the later rows along: in the
    # rotated coordinates Qᵀx the first r rows are L = Rᵀ (lower triangular), the rest Qᵀ[x_q, x_{r+1}, …]
    factor = torch.geqrf(torch.cat([x[:, :r], queries, x[:, r:]], dim=1).mT)[0]  # (B, d, n + m)
    lower = factor[:, :r, :r].triu().mT  # (B, r, r)
    pivots = lower.diagonal(dim1=-2, dim2=-1).abs()  # (B, r): a zero pivot, row j depends on the rows before
    norms = torch.cumsum((x[:, :r] ** 2).sum(-1), dim=-1).sqrt()  # (B, r): ‖X_j‖_F
    deficient = (pivots <= _RANK_TOL * norms).any(-1)  # (B,)
    parts = [_row_space_prefixes(lower, factor[:, :r, r : r + m], y[:, :r], alpha)]  # (B, r, m)
    if n > d:
        rotated = factor[:, :, r:].mT  # (B, m + n - d, d): the queries and later rows, rotated
        after, untrusted = _null_space_prefixes(lower, rotated[:, :m], rotated[:, m:], y, alpha)  # (B, n - d, m)
        parts.append(after)
        deficient = deficient | untrusted
    out = torch.cat(parts, dim=1)  # (B, n, m')
    if queries is not q:  # the predictions at e_1..e_d are the weights
        out = torch.einsum("bkd,bmd->bkm", out, q)
    if deficient.any():
        index = deficient.nonzero().squeeze(-1)
        rows = torch.arange(1, n + 1, device=x.device)
        inside = (torch.arange(n, device=x.device) < rows.unsqueeze(-1)).to(x.dtype)  # (prefix, row)
        masked = x[index].unsqueeze(1) * inside.view(1, n, n, 1)  # (F, n, n, d): prefix k keeps rows < k
        flat = _svd_predictions(
            masked.flatten(0, 1),
            (y[index].unsqueeze(1) * inside).flatten(0, 1),
            q[index].repeat_interleave(n, dim=0),
            alpha,
            rows.repeat(len(index)),
        )  # (F n, m)
        out[index] = flat.view(len(index), n, -1)
    return out.to(xs.dtype)


def without_non_finite(solve: Callable[..., Tensor], *tensors: Tensor) -> Tensor:
    """``solve(*tensors)`` with every prompt (index of the first dimension) that holds a non-finite entry
    replaced by zeros, and NaN in its results: iterative factorisations (SVD, eigh) raise on NaN, and one bad
    prompt must not stop the batch. The result's first dimension indexes the prompts."""
    finite = torch.stack([torch.isfinite(t).flatten(1).all(1) for t in tensors]).all(0)  # (B,)
    if finite.all():
        return solve(*tensors)
    out = solve(*(torch.where(finite.view(-1, *[1] * (t.ndim - 1)), t, torch.zeros_like(t)) for t in tensors))
    return torch.where(finite.view(-1, *[1] * (out.ndim - 1)), out, torch.full_like(out, float("nan")))


def _svd_predictions(x: Tensor, y: Tensor, q: Tensor, alpha: float, rows: Tensor) -> Tensor:
    """x: (B, M, d), y: (B, M), q: (B, m, d), rows: (B,) the number of examples (for the rank cutoff) →
    (B, m) through the SVD of R from X = QR (the SVD of a tall matrix is slow on CPUs)."""

    def solve(x: Tensor, y: Tensor, q: Tensor) -> Tensor:
        if x.shape[1] > x.shape[2]:
            basis, x = torch.linalg.qr(x)  # (B, M, d), (B, d, d)
            y = (basis.mT @ y.unsqueeze(-1)).squeeze(-1)
        u, s, vh = torch.linalg.svd(x, full_matrices=False)  # (B, ., r), (B, r), (B, r, d)
        cutoff = _EPS * torch.clamp(rows, min=x.shape[-1]).unsqueeze(-1) * s[:, :1]  # (B, 1)
        kept = s > cutoff
        gain = torch.where(kept, s / torch.where(kept, s * s + alpha, torch.ones_like(s)), torch.zeros_like(s))
        w = vh.mT @ (gain * (u.mT @ y.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)  # (B, d, 1)
        return (q @ w).squeeze(-1)

    return without_non_finite(solve, x, y, q)


def _row_space_prefixes(lower: Tensor, c: Tensor, y: Tensor, alpha: float) -> Tensor:
    """Prefixes k = 1..r of r ≤ d rows given as X_r = L Qᵀ (L = lower: (B, r, r) lower triangular) with the
    queries' coordinates c = Qᵀx_q: (B, r, m) and labels y: (B, r) → predictions (B, r, m).

    X_k = L_kk Q_kᵀ for every k, so the solution lies in span(q_1..q_k). Least squares (α = 0) interpolates:
    w_k = Q_k L_kk⁻¹ y_k, and forward substitution gives z = L⁻¹y whose first k entries are L_kk⁻¹ y_k, so
    x_qᵀ w_k = Σ_{j≤k} z_j c_j. Ridge uses the dual form x_qᵀX_kᵀ(X_kX_kᵀ + αI)⁻¹y_k: X_kX_kᵀ + αI = R̂_kkᵀR̂_kk
    is a leading block, with [Lᵀ; √αI] = Q̂R̂ (no squaring), and L_kkᵀR̂_kk⁻¹ = Q̂_top[:k, :k] (upper
    triangular), so x_qᵀ w_k = Σ_{j≤k} (Q̂_topᵀ c)_j (R̂⁻ᵀy)_j; the QR carries c along as extra columns."""
    r = y.shape[-1]
    if alpha > 0:
        eye = torch.eye(r, dtype=y.dtype, device=y.device).expand_as(lower)
        stacked = torch.cat([torch.cat([lower.mT, c], -1), torch.cat([alpha**0.5 * eye, torch.zeros_like(c)], -1)], 1)
        factor = torch.geqrf(stacked)[0]  # (B, 2r, r + m): R̂ and Q̂_topᵀc in its first r rows
        lower, c = factor[:, :r, :r].triu().mT, factor[:, :r, r:]
    z = torch.linalg.solve_triangular(lower, y.unsqueeze(-1), upper=False)  # (B, r, 1)
    return torch.cumsum(z * c, dim=1)


def _null_space_prefixes(lower: Tensor, q: Tensor, rest: Tensor, y: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """Prefixes k = d+1..n of points in coordinates where the first d rows are L = lower: (B, d, d) (lower
    triangular, full rank), the later rows rest: (B, n - d, d), the queries q: (B, m, d), labels y: (B, n) →
    predictions (B, n - d, m), and (B,) whether a prompt's null basis was too long to trust (see below).

    Ridge on X_k is least squares on [H; x_{k₀+1}; …; x_k] with labels [h; y_{k₀+1}; …] for any k₀ ≤ k, where
    H (d × d, triangular), h come from the QR of [√αI; X_{k₀}] with its labels [0; y_{k₀}] (or H = L, h = y_d
    for α = 0, k₀ = d). Put each query on top: A = [x_q; H; x_{k₀+1}; …] with labels ỹ = [0; h; …]. Its left
    null space has the basis K = [e_0 − H⁻ᵀx_q; −H⁻ᵀx_j + e_j …] (ν_H = −H⁻ᵀ(x_q ν_q + Σ_j x_j ν_j)), whose
    column j is zero below row d + j; the QR of K turns it into an orthonormal staircase n_0, n_1, … of the
    same nested spans, and the first k + 1 - k₀ of them span the null space of prefix k, so the residual there
    is Σ_j (n_jᵀỹ) n_j. Adding the query row with label t moves its residual to (t - p_k)/(1 + g): labels 0
    and e_0 give p_k = -Σ_j (n_j)_0 (n_jᵀỹ) / Σ_j (n_j)_0² (cumulative sums). One QR of [K | e_0 | ỹ] gives
    (n_j)_0 and n_jᵀỹ as the top rows of its last two columns. The spans carry an error of about eps·‖K‖, so
    a prompt with an entry of H⁻ᵀ[x_q, x_j] above 1e4 (nearly dependent first rows; 1 in 4000 Gaussian
    prompts at d = 20) is flagged for the SVD instead, which keeps the error below 1e-11 relative.

    The QR of K costs O((d + b) b²) for b rows after the head, so the prefixes go in blocks of b = max(d, 16)
    rows, k₀ = d, d + b, …, all blocks in one batched QR (and their heads in another): O(n(d + b)²) per prompt
    instead of O(n³) for one block when n ≫ d."""
    batch, d, _ = lower.shape
    n, m, b = d + rest.shape[1], q.shape[1], max(d, 16)
    starts = torch.arange(d, n, b, device=y.device)  # k₀ of each block
    blocks, last = len(starts), int(starts[-1])
    if alpha == 0 and blocks == 1:  # the head is L itself, with the labels y_d
        heads, labels, upper = lower.unsqueeze(1), y[:, :d].unsqueeze(1), False
    else:  # the R factor and rotated labels of [√αI; X_{k₀}] for every block at once
        rows = torch.cat([torch.cat([lower, rest[:, : last - d]], 1), y[:, :last, None]], dim=-1).unsqueeze(1)
        rows = rows * (torch.arange(last, device=y.device) < starts.unsqueeze(-1)).to(y.dtype).unsqueeze(-1)
        rows = rows.expand(batch, blocks, last, d + 1)
        if alpha > 0:
            eye = torch.eye(d, d + 1, dtype=y.dtype, device=y.device).expand(batch, blocks, d, d + 1)
            rows = torch.cat([alpha**0.5 * eye, rows], dim=2)
        factor = torch.geqrf(rows)[0][..., :d, :]  # (B, blocks, d, d + 1): H (upper triangular) | h
        heads, labels, upper = factor[..., :d].triu(), factor[..., d], True
    pad = last + b - n  # zero rows past n add nothing to the sums
    after_x = torch.nn.functional.pad(rest, (0, 0, 0, pad)).unfold(1, b, b)  # (B, blocks, d, b)
    after_y = torch.nn.functional.pad(y[:, d:], (0, pad)).unfold(1, b, b)  # (B, blocks, b)
    rhs = torch.cat([q.mT.unsqueeze(1).expand(batch, blocks, d, m), after_x], dim=-1)  # (B, blocks, d, m + b)
    u = torch.linalg.solve_triangular(heads.mT, rhs, upper=not upper)  # H⁻ᵀ[x_q, x_j]
    untrusted = ~(u.abs().flatten(1).amax(1) <= _NULL_BASIS_LIMIT)  # (B,)
    s = b + 1
    columns = y.new_zeros(batch, blocks, m, s + 2, 1 + d + b)  # [K | e_0 | ỹ] by columns: no copy for geqrf
    columns[..., 0, 0] = 1.0
    columns[..., 0, 1 : 1 + d] = -u[..., :m].mT
    columns[..., 1:s, 1 : 1 + d] = -u[..., m:].mT.unsqueeze(2)
    columns[..., 1:s, 1 + d :] = torch.eye(b, dtype=y.dtype, device=y.device)
    columns[..., s, 0] = 1.0
    columns[..., s + 1, 1 : 1 + d] = labels.unsqueeze(2)
    columns[..., s + 1, 1 + d :] = after_y.unsqueeze(2)
    staircase = torch.geqrf(columns.mT)[0][..., :s, s:]  # (B, blocks, m, s, 2): (n_j)_0, n_jᵀỹ
    top, projection = staircase[..., 0], staircase[..., 1]
    predictions = (-torch.cumsum(top * projection, -1) / torch.cumsum(top * top, -1))[..., 1:]  # k₀+1..k₀+b
    return predictions.permute(0, 1, 3, 2).reshape(batch, blocks * b, m)[:, : n - d], untrusted


def gradient_descent(
    gram: Tensor, moment: Tensor, count: Tensor, steps: int, lr: float, preconditioner: Tensor | None = None
) -> Tensor:
    """``steps`` steps of (preconditioned) GD on (1/2k)‖y − Xw‖² from w₀ = 0:
    w ← w + (lr/k)·P·Xᵀ(y − Xw), P = I or ``preconditioner: (d, d)``."""
    return last(_gradient_descent_iterates(gram, moment, count, steps, lr, preconditioner))


def gradient_descent_path(
    gram: Tensor, moment: Tensor, count: Tensor, steps: int, lr: float, preconditioner: Tensor | None = None
) -> Tensor:
    """Every iterate w₀ = 0, w₁, …, w_steps of :func:`gradient_descent`: (steps + 1, ..., d)."""
    return torch.stack(list(_gradient_descent_iterates(gram, moment, count, steps, lr, preconditioner)))


def _gradient_descent_iterates(
    gram: Tensor, moment: Tensor, count: Tensor, steps: int, lr: float, preconditioner: Tensor | None
) -> Iterator[Tensor]:
    w = torch.zeros_like(moment)
    yield w
    scale = (lr / count).unsqueeze(-1)
    for _ in range(steps):
        step = moment - (gram @ w.unsqueeze(-1)).squeeze(-1)
        if preconditioner is not None:
            step = step @ preconditioner.T
        w = w + scale * step
        yield w


def gradient_descent_spectrum(gram: Tensor, moment: Tensor, count: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """What GD's iterates in closed form (:func:`gradient_descent_at`) need, in float64: the eigenvalues λ
    (..., d) and eigenvectors V (..., d, d) of S = XᵀX/k, and c = Vᵀb (..., d), b = Xᵀy/k, for gram (..., d, d),
    moment (..., d), count (...). Eigenvalues at most d·eps·λ_max (eigh's rounding: S is singular there, e.g. a
    prefix of fewer than d points) are set to exactly 0 and so is c on them: b lies in S's range, and GD from
    w = 0 never moves off it, where an eps-sized c times t·lr would grow with the count t."""
    scale = count.double().unsqueeze(-1)
    eigenvalues, vectors = torch.linalg.eigh(gram.double() / scale.unsqueeze(-1))
    projected = (vectors.mT @ (moment.double() / scale).unsqueeze(-1)).squeeze(-1)
    cutoff = eigenvalues.shape[-1] * _EPS * eigenvalues.abs().amax(-1, keepdim=True)
    singular = eigenvalues <= cutoff
    zero = torch.zeros_like(eigenvalues)
    return torch.where(singular, zero, eigenvalues), vectors, torch.where(singular, zero, projected)


def gradient_descent_at(spectrum: tuple[Tensor, Tensor, Tensor], steps: Sequence[int], lr: float) -> Tensor:
    """GD's iterates from w₀ = 0 with step ``lr`` (:func:`gradient_descent`, no preconditioner) after each count
    of ``steps``, in closed form: (len(steps), ..., d) float64 from the :func:`gradient_descent_spectrum`
    (λ, V, c) of the data: w_t = V (φ_t(λ) ⊙ c) (see :func:`gradient_descent_coefficients`)."""
    eigenvalues, vectors, projected = spectrum
    return (vectors @ gradient_descent_coefficients(eigenvalues, projected, steps, lr).unsqueeze(-1)).squeeze(-1)


def gradient_descent_coefficients(eigenvalues: Tensor, projected: Tensor, steps: Sequence[int], lr: float) -> Tensor:
    """GD's iterates in the eigenbasis of S = XᵀX/k: Vᵀw_t = φ_t(λ) ⊙ c for each count t of ``steps``,
    (len(steps), ..., d) float64, from λ (..., d) and c = Vᵀb (..., d), b = Xᵀy/k.

    w_t = Σ_{j<t} (I − lr·S)^j lr·b = V diag(φ_t(λ)) Vᵀb with φ_t(λ) = (1 − (1 − lr·λ)^t)/λ, whose limit at
    λ = 0 is t·lr (taken there exactly: on a direction without data b has no component, so a rank-deficient S
    adds nothing). Where 1 − lr·λ > 0, 1 − (1 − lr·λ)^t is −expm1(t·log1p(−lr·λ)), accurate for the tiny λ
    of an ill-conditioned S; elsewhere (lr·λ ≥ 1) the power is taken as it is, and grows without bound where
    lr·λ > 2, like the iterates. A count of thousands costs what one costs: d numbers per prompt and prefix."""
    t = torch.tensor(list(steps), dtype=torch.float64, device=eigenvalues.device).view(-1, *[1] * eigenvalues.ndim)
    rate = lr * eigenvalues
    shrinking = rate < 1
    decayed = -torch.expm1(t * torch.log1p(-torch.where(shrinking, rate, torch.zeros_like(rate))))  # 1 − r^t
    decayed = torch.where(shrinking, decayed, 1 - torch.pow(1 - rate, t))
    zero = eigenvalues == 0
    phi = torch.where(zero, t * lr, decayed / torch.where(zero, torch.ones_like(eigenvalues), eigenvalues))
    return phi * projected


def newton_schulz(gram: Tensor, moment: Tensor, steps: int) -> Tensor:
    """Newton–Schulz iterations for S⁻¹, S = XᵀX (Fu et al. 2024): M₀ = αS with α = 1/‖SSᵀ‖_F (the authors'
    code; it makes every eigenvalue of αS² at most 1, so M_k → S⁺ for every X), M_{k+1} = 2M_k − M_k S M_k;
    returns w = M_steps Xᵀy. A prompt whose X is zero gets w = 0."""
    return (last(_newton_schulz_inverses(gram, steps)) @ moment.unsqueeze(-1)).squeeze(-1)


def newton_schulz_path(gram: Tensor, moment: Tensor, steps: int) -> Tensor:
    """Every iterate w_k = M_k Xᵀy, k = 0..steps, of :func:`newton_schulz`: (steps + 1, ..., d)."""
    return torch.stack([(m @ moment.unsqueeze(-1)).squeeze(-1) for m in _newton_schulz_inverses(gram, steps)])


def _newton_schulz_inverses(gram: Tensor, steps: int) -> Iterator[Tensor]:
    """M₀, …, M_steps: (..., d, d) each."""
    norm = torch.linalg.matrix_norm(gram @ gram.transpose(-1, -2))  # (...)
    alpha = torch.where(norm > 0, 1 / norm.clamp_min(torch.finfo(gram.dtype).tiny), torch.zeros_like(norm))
    inverse = alpha[..., None, None] * gram
    yield inverse
    for _ in range(steps):
        inverse = 2 * inverse - inverse @ gram @ inverse
        yield inverse


def last(iterates: Iterator[Tensor]) -> Tensor:
    """The final element of an iterator of iterates, keeping none of the others."""
    return deque(iterates, maxlen=1)[0]


def averaging(moment: Tensor, count: Tensor) -> Tensor:
    """ŵ = (1/k) Σ y_i x_i (one GD step with lr = 1)."""
    return moment / count.unsqueeze(-1)


def k_nearest(xs: Tensor, ys: Tensor, xq: Tensor, k: int, prefixes: bool = False) -> Tensor:
    """Mean label of the k context points nearest (Euclidean) to each query; of points at equal distance the
    earliest in the context wins.

    xs: (B, n, d), ys: (B, n), xq: (B, m, d) → (B, m); with ``prefixes=True`` → (B, n, m), where prefix p
    uses the min(k, p) nearest of its first p points, and equals the prediction from those p points alone.
    Squared distances Σ(x − x_q)² are taken from the differences in float64 (not from ‖x‖² + ‖x_q‖² − 2xᵀx_q,
    which loses the order of near points under a large offset), so the neighbours are those of an exact
    float64 computation for data within about 1e±150.

    Every prefix in O(n k) after one sort: with r_i the rank of point i by (distance, index), the j-th
    smallest rank among points 0..P is F_j(P), F_1 = cummin(r) and F_{j+1}(P) = min_{t≤P} max(r_t, F_j(t − 1))
    (the (j+1)-th smallest of a prefix is the first element that arrives after j smaller ones).
    """
    batch, n, _ = xs.shape
    m = xq.shape[1]
    diff = xs.double().unsqueeze(1) - xq.double().unsqueeze(2)  # (B, m, n, d)
    order = diff.square_().sum(-1).argsort(dim=-1, stable=True)  # (B, m, n): points by (distance, index)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(n, device=xs.device).expand_as(order))
    smallest = [rank.cummin(-1).values]  # F_1 (B, m, n); the rank n stands for "no such point"
    missing = torch.full_like(rank[..., :1], n)
    for _ in range(min(k, n) - 1):
        before = torch.cat([missing, smallest[-1][..., :-1]], dim=-1)  # F_j(P − 1)
        smallest.append(torch.maximum(rank, before).cummin(-1).values)
    nearest = torch.stack(smallest, dim=-1)  # (B, m, n, kk): ranks of each prefix's neighbours
    if not prefixes:
        nearest = nearest[:, :, -1:]
    sorted_labels = torch.cat([ys.unsqueeze(1).expand(batch, m, n).gather(-1, order), ys.new_zeros(batch, m, 1)], -1)
    labels = sorted_labels.unsqueeze(-2).expand(*nearest.shape[:-1], n + 1).gather(-1, nearest)  # (B, m, P, kk)
    count = torch.arange(n - nearest.shape[-2] + 1, n + 1, device=xs.device).clamp(max=k).double()  # (P,)
    means = (labels.double().sum(-1) / count).to(ys.dtype)  # (B, m, P)
    return means.mT if prefixes else means[..., 0]

"""Between one-layer LSA weights and the predictor they compute.

The query's label slot of a one-layer LSA receives Σ_h (1/n) Σ_i (W_PV^h z_i)_d (z_iᵀ W_KQ^h z_q), with
z_i = (f_i, y_i) for the features f = (x, descriptor) and z_q = (f_q, 0). Writing p = W_PV[d, f] and
q = W_KQ[d, f] for the label rows, the part linear in the labels is y_i f_iᵀ (W_PV[d, d] W_KQ[f, f] + pᵀq) f_q,
so ŷ contains h_fᵀ B f_q with h_f = (1/n) Σ_i y_i f_i and B = −Σ_h (W_PV^h[d, d] W_KQ^h[f, f] + p_hᵀ q_h).
For the sparse parameterisation that is the whole prediction (B = −Σ_h v_h A_h); a full LSA adds terms even
in the labels (y_i² q f_q, and label-free ones) that a trained model drives to 0. Without a descriptor
B = Γᵀ: ŷ = x_qᵀ Γ h.
"""

from __future__ import annotations

import numpy as np
import torch

from iclab.models.lsa import LSA, LSAShape
from iclab.theory.checks import as_matrix
from iclab.validate import check_number


def effective_bilinear(model: LSA) -> np.ndarray:
    """B: (F, F) float64, F = d + k, of a one-layer LSA (either parameterisation, any number of heads)."""
    if not isinstance(model, LSA):
        raise ValueError(f"model must be an iclab LSA, got {type(model).__name__}")
    if model.shape.layers != 1:
        raise ValueError(f"the effective predictor needs a one-layer LSA, got model.layers={model.shape.layers}")
    attn, d = model.blocks[0].attn, model.shape.d
    with torch.no_grad():
        kq = attn.kq().double().cpu()  # (H, D, D)
        pv = attn.pv().double().cpu()  # (H, D, D)
        features = attn.features.cpu()
        value = pv[:, d, d]  # (H,)
        p, q = pv[:, d, features], kq[:, d, features]  # (H, F): label rows of W_PV and W_KQ
        b = -torch.einsum("h,hij->ij", value, kq[:, features][:, :, features]) - torch.einsum("hi,hj->ij", p, q)
    return b.numpy()


def effective_gamma(model: LSA) -> np.ndarray:
    """Γ: (d, d) of a one-layer LSA, ŷ = x_qᵀ Γ (1/n) Σ_i y_i x_i (the x-block of Bᵀ)."""
    b = effective_bilinear(model)  # validates the model
    d = model.shape.d
    return b[:d, :d].T.copy()


def lsa_from_bilinear(b: object, d: int, param: str = "sparse") -> LSA:
    """A float64 one-layer, one-head LSA computing ŷ = h_fᵀ B f_q for B: (F, F), F = d + k (k descriptor
    entries). Balanced: v = −‖B‖_F^½ and A = B/‖B‖_F^½, so ‖A‖_F = |v|. ``param``: sparse or full (the
    full one has the same non-zero blocks)."""
    d = check_number("d", d, ge=1, integer=True)
    matrix = as_matrix(b, "B")
    if matrix.shape[0] != matrix.shape[1] or matrix.shape[0] < d:
        raise ValueError(f"B must be square (F, F) with F >= d = {d}, got shape {matrix.shape}")
    if param not in ("sparse", "full"):
        raise ValueError(f"param must be one of sparse, full; got {param!r}")
    model = LSA(LSAShape(d=d, descriptor_dim=matrix.shape[0] - d, layers=1, heads=1, param=param)).double()
    scale = np.sqrt(np.linalg.norm(matrix))
    a = torch.from_numpy(matrix / scale if scale > 0 else matrix)
    attn = model.blocks[0].attn
    with torch.no_grad():
        if param == "sparse":
            attn.kq_block.copy_(a.unsqueeze(0))
            attn.value.fill_(-scale)
        else:
            idx = attn.features
            attn.w_kq[0, idx.view(-1, 1), idx.view(1, -1)] = a
            attn.w_pv[0, d, d] = -scale
    return model


def lsa_from_gamma(gamma: object, param: str = "sparse") -> LSA:
    """A float64 one-layer LSA computing ŷ = x_qᵀ Γ (1/n) Σ_i y_i x_i for Γ = ``gamma`` (d, d)."""
    g = as_matrix(gamma, "gamma")
    if g.shape[0] != g.shape[1]:
        raise ValueError(f"gamma must be square (d, d), got shape {g.shape}")
    return lsa_from_bilinear(g.T, g.shape[0], param)

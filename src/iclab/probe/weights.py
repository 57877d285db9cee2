"""A trained attention stack's weights beside the GD construction (von Oswald et al. 2023).

The construction (:func:`iclab.constructions.gd_model`) has, in every layer, W_KQ = I on the x block and
W_PV = −η e_d e_dᵀ (the value reads and writes the label). Cosine similarity is scale-free, so η does not
matter. For linear attention the pair (−W_KQ, −W_PV) computes the same layer, so the trained pair is
sign-normalised first (W_PV's label entry made negative). Only W_PV's label row writes the label slot that
the last layer's read-out uses; the other rows change the x part of the tokens, which only later layers
read, so ``pv_label_cosine`` compares that row alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch

from iclab.models import InContextModel
from iclab.plots import save_figure


@dataclass
class LayerWeights:
    """One head of one layer: trained and construction matrices (D, D) and their cosine similarities."""

    layer: int
    head: int
    kq: np.ndarray
    pv: np.ndarray
    kq_construction: np.ndarray
    pv_construction: np.ndarray
    kq_cosine: float
    pv_cosine: float
    pv_label_cosine: float


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float((a * b).sum() / norm) if norm > 0 else 0.0


def compare_with_gd_construction(model: InContextModel) -> list[LayerWeights]:
    """Every layer and head of the model's attention stack against the GD construction; [] for a model
    without a stacked-token attention stack (``model.attention_stack()`` is None)."""
    stack = model.attention_stack()
    if stack is None:
        return []
    d, width = stack.shape.d, stack.shape.width
    kq_construction = np.zeros((width, width))
    kq_construction[:d, :d] = np.eye(d)
    pv_construction = np.zeros((width, width))
    pv_construction[d, d] = -1.0
    rows = []
    with torch.no_grad():
        for layer, block in enumerate(stack.blocks, start=1):
            kq_all = block.attn.kq().double().cpu().numpy()
            pv_all = block.attn.pv().double().cpu().numpy()
            for head in range(stack.shape.heads):
                kq, pv = kq_all[head], pv_all[head]
                if stack.shape.activation == "linear" and pv[d, d] > 0:
                    kq, pv = -kq, -pv
                rows.append(LayerWeights(layer, head, kq, pv, kq_construction, pv_construction,
                                         _cosine(kq, kq_construction), _cosine(pv, pv_construction),
                                         _cosine(pv[d], pv_construction[d])))  # fmt: skip
    return rows


def plot_weights(rows: list[LayerWeights], path, max_rows: int = 8) -> None:
    """weights.png: per layer/head, trained W_KQ and W_PV beside the construction's (each row on one colour
    scale symmetric about 0)."""
    rows = rows[:max_rows]
    if not rows:
        return
    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 2.5 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows, strict=True):
        panels = [
            (row.kq, f"L{row.layer} h{row.head} W_KQ (cos {row.kq_cosine:.3f})"),
            (row.kq_construction, "GD construction W_KQ"),
            (row.pv, f"L{row.layer} h{row.head} W_PV (cos {row.pv_cosine:.3f})"),
            (row.pv_construction, "GD construction W_PV"),
        ]
        for ax, (matrix, title) in zip(ax_row, panels, strict=True):
            limit = float(np.abs(matrix).max()) or 1.0
            image = ax.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(image, ax=ax, fraction=0.046)
    save_figure(fig, path)

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
from iclab.plots import caption, save_figure


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


def frobenius_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """⟨a, b⟩_F / (‖a‖_F ‖b‖_F) of two same-shape arrays (0 when either is 0)."""
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
                                         frobenius_cosine(kq, kq_construction), frobenius_cosine(pv, pv_construction),
                                         frobenius_cosine(pv[d], pv_construction[d])))  # fmt: skip
    return rows


def coordinate_names(width: int, d: int) -> list[str]:
    """The token coordinates a (D, D) weight matrix acts on: x1..xd, y (the label), then s1..sk (the
    descriptor)."""
    return [f"x{i + 1}" for i in range(d)] + ["y"] + [f"s{i + 1}" for i in range(width - d - 1)]


def plot_weights(rows: list[LayerWeights], path, max_rows: int = 8, caption_text: str = "") -> None:
    """weights.png: per layer/head, trained W_KQ and W_PV beside the construction's, each matrix on its own
    colour scale symmetric about 0 with its own colour bar; rows and columns are labelled with the token
    coordinates (x1..xd, y, descriptor s1..sk). Constrained layout keeps colour bars and labels apart."""
    rows = rows[:max_rows]
    if not rows:
        return
    width = rows[0].kq.shape[0]
    d = int(round(float(np.trace(rows[0].kq_construction))))  # the construction is I on the x block
    names = coordinate_names(width, d)
    fig, axes = plt.subplots(len(rows), 4, figsize=(13, 2.9 * len(rows) + 0.4), squeeze=False, layout="constrained")
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
            ax.set_xticks(range(width), names, fontsize=6 if width > 12 else 7)
            ax.set_yticks(range(width), names, fontsize=6 if width > 12 else 7)
            ax.set_xlabel("column (input coordinate)", fontsize=7)
            ax.set_ylabel("row (output coordinate)", fontsize=7)
            colourbar = fig.colorbar(image, ax=ax, shrink=0.8)
            colourbar.ax.tick_params(labelsize=6)
    if caption_text:
        caption(fig, caption_text)
    save_figure(fig, path)

"""Figures of the theory engine: gradient flow loss vs time, beside SGD on sampled prompts."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from iclab.plots import caption, clipped_label, outside_legend, save_figure  # noqa: E402
from iclab.theory.gradient_flow import FlowResult, SGDResult  # noqa: E402

GAP_FLOOR = 1e-16  # L − L* below this (rounding) is drawn at it, and the curve's label says so


def plot_flow(
    flow: FlowResult, path: Path, sgd: SGDResult | None = None, title: str = "", caption_text: str | None = None
) -> Path:
    """Left: exact loss vs t (flow, and SGD iterates at t = lr × step); right: L − L* on log axes (clipped below
    at 1e-16, said in the legend). ``caption_text`` (e.g. the command line) goes under the figure."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(flow.t, flow.loss, lw=2, label="gradient flow (exact loss)")
    gap = (flow.loss - flow.optimal_loss)[1:]
    right.loglog(flow.t[1:], gap.clip(GAP_FLOOR), lw=2, label=clipped_label("gradient flow", gap, GAP_FLOOR))
    if sgd is not None:
        left.plot(sgd.t, sgd.loss, "--", lw=1.5, label="SGD iterate (exact loss)")
        left.plot(sgd.t[1:], sgd.batch_loss[1:], ":", lw=1, alpha=0.7, label="SGD minibatch loss")
        sgd_gap = (sgd.loss - flow.optimal_loss)[1:]
        right.loglog(sgd.t[1:], sgd_gap.clip(GAP_FLOOR), "--", lw=1.5,
                     label=clipped_label("SGD iterate", sgd_gap, GAP_FLOOR))  # fmt: skip
        left.set_xlim(0, sgd.t[-1])
    left.axhline(flow.optimal_loss, color="k", ls="--", lw=1, label=f"global minimum {flow.optimal_loss:.4g}")
    left.set_xlabel("time t (SGD: lr × step)")
    left.set_ylabel("population loss E(ŷ − y)²")
    right.set_xlabel("time t")
    right.set_ylabel("L(θ(t)) − L*")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0.0, -0.2), borderaxespad=0.0)
    outside_legend(right, fontsize=8)
    if title:
        fig.suptitle(title)
    if caption_text:
        caption(fig, caption_text)
    return save_figure(fig, Path(path))

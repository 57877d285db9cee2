"""Figures of the theory engine: gradient flow loss vs time, beside SGD on sampled prompts."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from iclab.rundir import atomic_write_bytes  # noqa: E402
from iclab.theory.gradient_flow import FlowResult, SGDResult  # noqa: E402


def plot_flow(flow: FlowResult, path: Path, sgd: SGDResult | None = None, title: str = "") -> Path:
    """Left: exact loss vs t (flow, and SGD iterates at t = lr × step); right: L − L* on log axes."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(flow.t, flow.loss, lw=2, label="gradient flow (exact loss)")
    right.loglog(flow.t[1:], (flow.loss - flow.optimal_loss)[1:].clip(1e-16), lw=2, label="gradient flow")
    if sgd is not None:
        left.plot(sgd.t, sgd.loss, "--", lw=1.5, label="SGD iterate (exact loss)")
        left.plot(sgd.t[1:], sgd.batch_loss[1:], ":", lw=1, alpha=0.7, label="SGD minibatch loss")
        right.loglog(sgd.t[1:], (sgd.loss - flow.optimal_loss)[1:].clip(1e-16), "--", lw=1.5, label="SGD iterate")
        left.set_xlim(0, sgd.t[-1])
    left.axhline(flow.optimal_loss, color="k", ls="--", lw=1, label=f"global minimum {flow.optimal_loss:.4g}")
    left.set_xlabel("time t (SGD: lr × step)")
    left.set_ylabel("population loss E(ŷ − y)²")
    right.set_xlabel("time t")
    right.set_ylabel("L(θ(t)) − L*")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)

"""Figures of a run: training curves and error-vs-examples curves (matplotlib, no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from iclab.evaluate import ErrorCurve  # noqa: E402
from iclab.rundir import atomic_write_bytes  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_training(metrics: pd.DataFrame, path: Path, reference: dict[str, float] | None = None) -> Path:
    """Train and held-out loss vs step (log scale), with horizontal reference levels (e.g. the optimum)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(metrics["step"], metrics["train_loss"], label="train loss", lw=1)
    held = metrics.dropna(subset=["eval_loss"])
    if len(held):
        ax.plot(held["step"], held["eval_loss"], "o-", label="held-out loss", ms=3)
    for i, (label, level) in enumerate((reference or {}).items()):
        ax.axhline(level, ls="--", color=f"C{i + 2}", lw=1, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("mean squared error at the query")
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def error_band(ax: plt.Axes, curve: ErrorCurve, floor: float = 0.0, **style: object) -> None:
    """Draw ``curve`` on ``ax`` with its bootstrap interval as a band of the line's colour (values clipped
    below at ``floor``, for log axes); ``style`` goes to the line."""
    ks = curve.ks.numpy()
    (line,) = ax.plot(ks, curve.mse.numpy().clip(floor), label=curve.name, **style)
    ax.fill_between(
        ks, curve.low.numpy().clip(floor), curve.high.numpy().clip(floor), color=line.get_color(), alpha=0.15
    )


def plot_error_curves(curves: list[ErrorCurve], path: Path, title: str = "") -> Path:
    """Query error vs number of in-context examples, one line with its bootstrap interval as a band per
    learner; the first curve (the model) is drawn solid, the others dashed. Values below 1e-6 of the largest
    are clipped."""
    fig, ax = plt.subplots(figsize=(6, 4))
    top = max(float(c.mse.max()) for c in curves)
    floor = top * 1e-6  # exact solvers reach ~1e-30: keep the interesting range visible
    for i, curve in enumerate(curves):
        error_band(ax, curve, floor, **({"lw": 2.5} if i == 0 else {"lw": 1.5, "ls": "--"}))
    ax.set_ylim(floor / 2, top * 2)
    ax.set_yscale("log")
    ax.set_xlabel("number of in-context examples")
    ax.set_ylabel("mean squared error at the query")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def markdown_table(table: pd.DataFrame, digits: int = 4) -> str:
    """A pandas table as GitHub markdown (floats rounded to ``digits`` significant digits)."""

    def cell(value: object) -> str:
        return f"{value:.{digits}g}" if isinstance(value, float) else str(value)

    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "---|" * len(table.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows])

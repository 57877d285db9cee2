"""Figures of a run: training curves and error-vs-examples curves (matplotlib, no display needed), and the
helpers every figure of iclab uses so that a reader can read it: a caption saying which run and config it
shows (:func:`caption`), integer ticks on count axes (:func:`count_axis`), legends outside the axes so they
hide no point (:func:`outside_legend`), labelled ticks near the value a loss converges to
(:func:`readable_log_axis`) and curves that say when they are clipped (:func:`clipped_label`)."""

from __future__ import annotations

import dataclasses
import io
import math
import textwrap
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

from iclab.config import Config, flat_keys, parse_config  # noqa: E402
from iclab.evaluate import ErrorCurve  # noqa: E402
from iclab.rundir import atomic_write_bytes  # noqa: E402

CAPTION_GID = "iclab-caption"  # the gid of a figure's caption text (tests and tools find it by it)


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it (its caption placed under everything else first)."""
    _place_caption(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path


# --------------------------------------------------------------------------- helpers every figure uses


def caption(fig: plt.Figure, text: str) -> None:
    """A line (wrapped to the figure's width) of small grey text under the figure: which run dir, recipe or
    config it shows. :func:`save_figure` places it below the axes, labels and legends."""
    width = max(int(fig.get_figwidth() * 15), 40)
    lines = textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False)  # breaks at spaces only
    fig.text(0, 0, "\n".join(lines), fontsize=7, color="0.3", ha="left", va="top", gid=CAPTION_GID)


def figure_caption(fig: plt.Figure) -> str | None:
    """The caption of ``fig`` as one line (None without one)."""
    texts = [t.get_text().replace("\n", " ") for t in fig.texts if t.get_gid() == CAPTION_GID]
    return texts[0] if texts else None


def _place_caption(fig: plt.Figure) -> None:
    """Move the caption just under the bounding box of everything else drawn (axes, tick labels, legends)."""
    captions = [t for t in fig.texts if t.get_gid() == CAPTION_GID]
    if not captions:
        return
    for text in captions:
        text.set_visible(False)
    fig.draw_without_rendering()  # runs the layout engine, so the box is the final one
    box = fig.get_tightbbox(fig.canvas.get_renderer())  # inches
    for text in captions:
        text.set_visible(True)
        text.set_position((box.x0 / fig.get_figwidth(), (box.y0 - 0.05) / fig.get_figheight()))


def config_caption(cfg: Config, where: str | Path | None = None, step: int | None = None) -> str:
    """``RUN (step k): task.d=5 task.n=20 model.name=lsa …``: where the figure's data come from, then the
    families, the sizes and every key that differs from its family's default (the run's command line)."""
    defaults = flat_keys(parse_config({}, [f"task.name={cfg.task.name}", f"model.name={cfg.model.name}"]))
    keys = flat_keys(cfg)
    always = ("task.name", "task.d", "task.n", "model.name")
    shown = [key for key in keys if key in always or keys[key] != defaults.get(key)]
    if "model.layers" in keys and "model.layers" not in shown:
        shown.insert(shown.index("model.name") + 1, "model.layers")
    text = " ".join(f"{key}={_value_text(keys[key])}" for key in shown)
    head = "" if where is None else f"{where}" + ("" if step is None else f" (step {step})") + ": "
    return head + text


def _value_text(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ",".join(_value_text(v) for v in value)
    return str(value)


def count_axis(axis: matplotlib.axis.Axis) -> None:
    """Integer ticks on an axis of counts (steps, examples, layers, iterations): never 1.5 examples."""
    axis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))


def outside_legend(ax: plt.Axes, handles: Sequence | None = None, labels: Sequence[str] | None = None,
                   **options: object) -> matplotlib.legend.Legend:  # fmt: skip
    """The legend of ``ax`` (or of the given handles) to the right of ``ax``, outside every axes of the row,
    so it hides no point; ``save_figure``'s tight bounding box keeps it in the PNG."""
    options = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0, "fontsize": 7, **options}
    if handles is None:
        return ax.legend(**options)
    return ax.legend(handles, labels, **options)


def below_legend(ax: plt.Axes, ncol: int = 2, **options: object) -> matplotlib.legend.Legend:
    """The legend of ``ax`` under its x-axis label (for a row of panels, where the right is the next panel), so
    it hides no point."""
    options = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.2), "borderaxespad": 0.0, "fontsize": 7,
               "ncol": ncol, **options}  # fmt: skip
    return ax.legend(**options)


def recipe_caption(name: str, size_name: str, out: str | Path, size: object = None, setting: str = "") -> str:
    """What a reproduction's figure shows: the command that made it, the size's settings (a dataclass) and the
    setting in words."""
    parts = [f"iclab reproduce {name} --size {size_name} --out {out}"]
    if dataclasses.is_dataclass(size):
        parts.append(" ".join(f"{key}={_value_text(value)}" for key, value in dataclasses.asdict(size).items()))
    if setting:
        parts.append(setting)
    return "; ".join(parts)


def clipped_label(label: str, values: np.ndarray | Iterable[float], floor: float) -> str:
    """``label`` with ``(clipped at FLOOR)`` appended when any of ``values`` lies below ``floor``."""
    below = bool(np.any(np.asarray(list(values) if not isinstance(values, np.ndarray) else values) < floor))
    return f"{label} (clipped at {floor:.2g})" if below else label


def readable_log_axis(ax: plt.Axes, values: Iterable[float], marks: Sequence[float] = ()) -> list[float]:
    """A log y-axis over the finite positive ``values`` whose labelled ticks a reader can read: 1, 2, 5 × 10^k
    (1, 1.5, 2, 3, 4, 5, 7 × 10^k within
    1.5 decades; only 10^k over more than four) and each of ``marks`` itself (e.g. the converged loss), nice
    ticks within 20 % of a mark left out so no labels collide; minor ticks unlabelled. Returns the ticks."""
    finite = np.array([v for v in values if math.isfinite(v) and v > 0], dtype=float)
    marks = [float(m) for m in marks if math.isfinite(m) and m > 0]
    if not len(finite) and not marks:
        ax.set_yscale("log")
        return []
    low = min([*finite.tolist(), *marks]) / 1.25
    high = max([*finite.tolist(), *marks]) * 1.25
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    span = math.log10(high / low)
    subs = (1,) if span > 4 else (1, 2, 5) if span > 1.5 else (1, 1.5, 2, 3, 4, 5, 7)
    nice = [s * 10.0**k for k in decades for s in subs if low <= s * 10.0**k <= high]
    nice = [t for t in nice if all(abs(math.log(t / m)) > math.log(1.2) for m in marks)]
    ticks = sorted({*nice, *marks})
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.4g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    return ticks


# --------------------------------------------------------------------------- a run's figures


def plot_training(
    metrics: pd.DataFrame, path: Path, reference: dict[str, float] | None = None, caption_text: str | None = None
) -> Path:
    """Train and held-out loss vs step (log scale), with horizontal reference levels (e.g. the optimum). The
    y-axis has a labelled tick at the last held-out loss (or the last training loss without held-out rows),
    the value the run converged to."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(metrics["step"], metrics["train_loss"], label="train loss", lw=1)
    held = metrics.dropna(subset=["eval_loss"])
    if len(held):
        ax.plot(held["step"], held["eval_loss"], "o-", label="held-out loss", ms=3)
    converged = float(held["eval_loss"].iloc[-1]) if len(held) else float(metrics["train_loss"].iloc[-1])
    for i, (label, level) in enumerate((reference or {}).items()):
        ax.axhline(level, ls="--", color=f"C{i + 2}", lw=1, label=f"{label}: {level:.4g}")
    values = [*metrics["train_loss"], *held["eval_loss"], *(reference or {}).values()]
    readable_log_axis(ax, values, marks=[converged])
    count_axis(ax.xaxis)
    ax.set_xlabel("step")
    ax.set_ylabel("mean squared error at the query")
    ax.set_title(f"{'held-out' if len(held) else 'train'} loss at the end: {converged:.4g}", fontsize=9)
    outside_legend(ax)
    ax.grid(alpha=0.3)
    if caption_text:
        caption(fig, caption_text)
    return save_figure(fig, path)


def error_band(ax: plt.Axes, curve: ErrorCurve, floor: float = 0.0, label: str | None = None, **style: object) -> None:
    """Draw ``curve`` on ``ax`` with its bootstrap interval as a band of the line's colour (values clipped
    below at ``floor``, for log axes, and the label then says so); ``style`` goes to the line."""
    ks = curve.ks.numpy()
    mse = curve.mse.numpy()
    name = curve.name if label is None else label
    (line,) = ax.plot(ks, mse.clip(floor), label=clipped_label(name, mse, floor) if floor > 0 else name, **style)
    ax.fill_between(
        ks, curve.low.numpy().clip(floor), curve.high.numpy().clip(floor), color=line.get_color(), alpha=0.15
    )


def plot_error_curves(
    curves: list[ErrorCurve],
    path: Path,
    title: str = "",
    caption_text: str | None = None,
    labels: Sequence[str] | None = None,
    solid: int = 1,
) -> Path:
    """Query error vs number of in-context examples, one line with its bootstrap interval as a band per
    learner; the first ``solid`` curves (the models) are drawn solid, the others dashed. Values below 1e-6 of
    the largest are clipped (the curve's label says so); ``labels`` replace the curves' names."""
    fig, ax = plt.subplots(figsize=(6, 4))
    top = max(float(c.mse.max()) for c in curves)
    floor = top * 1e-6  # exact solvers reach ~1e-30: keep the interesting range visible
    for i, curve in enumerate(curves):
        style = {"lw": 2.5} if i < solid else {"lw": 1.5, "ls": "--"}
        error_band(ax, curve, floor, label=None if labels is None else labels[i], **style)
    ax.set_ylim(floor / 2, top * 2)
    ax.set_yscale("log")
    count_axis(ax.xaxis)
    ax.set_xlabel("number of in-context examples")
    ax.set_ylabel("mean squared error at the query")
    if title:
        ax.set_title(title)
    outside_legend(ax)
    ax.grid(alpha=0.3)
    if caption_text:
        caption(fig, caption_text)
    return save_figure(fig, path)


def markdown_table(table: pd.DataFrame, digits: int = 4) -> str:
    """A pandas table as GitHub markdown (floats rounded to ``digits`` significant digits)."""

    def cell(value: object) -> str:
        return f"{value:.{digits}g}" if isinstance(value, float) else str(value)

    header = "| " + " | ".join(map(str, table.columns)) + " |"
    rule = "|" + "---|" * len(table.columns)
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *rows])

"""The results of a folder of run dirs: one table row per run, and a metric plotted against a config key with
the seeds aggregated (``iclab results DIR [--plot METRIC --by KEY [--hue KEY]]``).

Any folder works: a sweep's (``DIR/<run-id>/``), a reproduction's (``DIR/runs/<run-id>/``), or run dirs made
one by one. A run dir is a folder holding ``config.yaml``; hidden folders (``.submitit``) are not searched.
A row holds ``run_id`` (the run dir's path relative to DIR), the summary (:data:`SUMMARY_COLUMNS`; status is
finished, diverged, unfinished or damaged) and every config key, flattened (``task.n``, ``train.lr``, …;
list values joined by commas). The wall-clock time is left out: the table depends only on what was trained,
so a sweep killed and rerun writes the same bytes as one that was not.

Seeds are aggregated by their mean and a 90 % t interval, mean ± t₀.₉₅(k−1)·s/√k over the k seeds of a
point (s: their sample standard deviation); a point of one seed has no interval.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from scipy import stats  # noqa: E402

from iclab.config import flat_keys  # noqa: E402
from iclab.errors import UsageError  # noqa: E402
from iclab.plots import save_figure  # noqa: E402
from iclab.rundir import (  # noqa: E402
    CONFIG_FILE,
    SUMMARY_FILE,
    RunDirError,
    atomic_write_text,
    read_config,
    read_summary,
)

RESULTS_FILE = "results.csv"
SUMMARY_COLUMNS = ("status", "steps", "final_eval_loss", "final_eval_sem", "final_eval_low", "final_eval_high",
                   "final_train_loss", "message")  # fmt: skip
CONFIDENCE = 0.9
LOG_SPAN = 50.0  # an axis whose positive values span this factor or more is drawn on a log scale


def find_run_dirs(folder: Path) -> list[Path]:
    """Every run dir under ``folder`` (itself included), sorted; hidden folders and the insides of run dirs
    are not searched."""
    found = []
    for current, folders, files in os.walk(folder):
        if CONFIG_FILE in files:
            found.append(Path(current))
            folders.clear()
        else:
            folders[:] = [name for name in folders if not name.startswith(".")]
    return sorted(found)


def _cell(value: object) -> object:
    """A config value as a table cell: lists joined by commas (as overrides write them)."""
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return value


def run_row(folder: Path, run_dir: Path) -> dict:
    """The table row of ``run_dir`` (its files verified); a damaged run dir is a row with status "damaged" and
    the problem as its message."""
    row: dict = {"run_id": Path(os.path.relpath(run_dir, folder)).as_posix()}
    row.update(dict.fromkeys(SUMMARY_COLUMNS))
    try:
        cfg = read_config(run_dir)
        summary = read_summary(run_dir) if (Path(run_dir) / SUMMARY_FILE).exists() else {"status": "unfinished"}
    except RunDirError as err:
        return {**row, "status": "damaged", "message": " ".join(str(err).split())}
    row.update({key: summary.get(key) for key in SUMMARY_COLUMNS})
    row.update({key: _cell(value) for key, value in flat_keys(cfg).items()})
    return row


def results_table(folder: Path, run_dirs: list[Path] | None = None) -> pd.DataFrame:
    """One row per run dir of ``run_dirs`` (default: every run dir under ``folder``), in that order: run_id,
    the summary columns, then the config keys."""
    folder = Path(folder)
    run_dirs = find_run_dirs(folder) if run_dirs is None else run_dirs
    rows = [run_row(folder, run_dir) for run_dir in run_dirs]
    return pd.DataFrame(rows, columns=None if rows else ["run_id", *SUMMARY_COLUMNS])


def write_results(table: pd.DataFrame, path: Path) -> None:
    """``table`` as CSV, written atomically (a reader sees the old file or the whole new one)."""
    atomic_write_text(path, table.to_csv(index=False, lineterminator="\n"))


def config_columns(table: pd.DataFrame) -> list[str]:
    return [column for column in table.columns if column != "run_id" and column not in SUMMARY_COLUMNS]


def varying_keys(table: pd.DataFrame) -> list[str]:
    """The config keys whose value differs between rows (seed last)."""
    keys = [key for key in config_columns(table) if table[key].astype(str).nunique() > 1]
    return sorted(keys, key=lambda key: key == "seed")


def _sort_key(column: pd.Series) -> pd.Series:
    return column if pd.api.types.is_numeric_dtype(column) else column.astype(str)


def sorted_table(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` sorted by its varying config keys (numbers as numbers), then run_id."""
    keys = [*varying_keys(table), "run_id"]
    return table.sort_values(keys, key=_sort_key, kind="stable").reset_index(drop=True)


def summary_view(table: pd.DataFrame) -> pd.DataFrame:
    """The columns worth printing: run_id, status, the varying keys and the final losses."""
    columns = ["run_id", "status", *varying_keys(table), "final_eval_loss", "final_eval_sem"]
    return table[[column for column in columns if column in table.columns]]


def format_table(table: pd.DataFrame) -> str:
    return table.to_string(index=False, na_rep="", float_format=lambda value: f"{value:.4g}")


def mean_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its t interval at ``confidence``; NaN bounds for one value."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    quantile = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1))
    half = quantile * float(values.std(ddof=1)) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def _check_column(table: pd.DataFrame, name: str, flag: str, choices: list[str]) -> None:
    if name not in table.columns:
        listed = ", ".join(choices) if choices else "none"
        raise UsageError(f"{flag} {name!r} is not a column of the results; choose from {listed}")


def aggregate(table: pd.DataFrame, metric: str, by: str, hue: str | None = None) -> pd.DataFrame:
    """The finished runs' ``metric`` averaged over seeds: one row per line and value of ``by`` with the columns
    of the line (``hue``, then every other varying key but seed), ``by``, seeds, mean, low, high (a 90 % t
    interval). UsageError (one line, naming the choices) for a metric that is not a numeric column, or a key
    that is not a config key."""
    numeric = [c for c in table.columns if c != "run_id" and pd.api.types.is_numeric_dtype(table[c])]
    _check_column(table, metric, "--plot", [c for c in numeric if c in SUMMARY_COLUMNS] or numeric)
    if metric not in numeric:
        raise UsageError(f"--plot {metric!r} is not a number; choose from {', '.join(numeric)}")
    keys = config_columns(table)
    for flag, key in (("--by", by), ("--hue", hue)):
        if key is not None and key not in keys:
            raise UsageError(f"{flag} {key!r} is not a config key of the runs; varying keys: "
                             f"{', '.join(varying_keys(table)) or 'none'}")  # fmt: skip
    if hue is not None and hue == by:
        raise UsageError(f"--hue must differ from --by, got {by} for both")
    rows = table[(table["status"] == "finished") & table[metric].notna()]
    if rows.empty:
        raise UsageError(f"no finished run has a value of {metric}")
    lines = ([hue] if hue else []) + [key for key in varying_keys(rows) if key not in (by, hue, "seed")]
    out = []
    for point, group in rows.groupby([*lines, by], sort=False, dropna=False):
        mean, low, high = mean_interval(group[metric].to_numpy())
        out.append({**dict(zip([*lines, by], point, strict=True)), "seeds": len(group), "mean": mean, "low": low,
                    "high": high})  # fmt: skip
    return sorted_by(pd.DataFrame(out), [*lines, by])


def sorted_by(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return table.sort_values(keys, key=_sort_key, kind="stable").reset_index(drop=True)


def _log_scale(values: pd.Series) -> bool:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return bool(len(values)) and bool((values > 0).all()) and float(values.max() / values.min()) >= LOG_SPAN


def figure_path(folder: Path, metric: str, by: str, hue: str | None) -> Path:
    """Where ``iclab results`` writes the plot: ``folder/figures/METRIC_by_KEY[_hue_KEY].png``."""
    name = f"{metric}_by_{by}" + (f"_hue_{hue}" if hue else "")
    return Path(folder) / "figures" / (re.sub(r"[^A-Za-z0-9_.-]", "_", name) + ".png")


def plot_results(
    table: pd.DataFrame, metric: str, by: str, path: Path, hue: str | None = None, folder: str = ""
) -> pd.DataFrame:
    """Plot ``metric`` against ``by``, seeds aggregated (mean, a band for the 90 % t interval, each seed a dot):
    one line per value of ``hue`` (its colour) and of any other varying key but seed (its line style). Writes
    the PNG ``path``; returns the aggregated table (:func:`aggregate`)."""
    points = aggregate(table, metric, by, hue)
    lines = [column for column in points.columns if column not in (by, "seeds", "mean", "low", "high")]
    rows = table[(table["status"] == "finished") & table[metric].notna()]
    numeric_x = pd.api.types.is_numeric_dtype(points[by]) and not pd.api.types.is_bool_dtype(points[by])
    categories = {value: i for i, value in enumerate(dict.fromkeys(points[by].astype(str)))}

    def x_of(values: pd.Series) -> np.ndarray:
        return values.to_numpy(dtype=float) if numeric_x else values.astype(str).map(categories).to_numpy(dtype=float)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    others = lines[1:] if hue else lines  # a colour per hue value, a line style per combination of the others
    hues = list(dict.fromkeys(points[hue].astype(str))) if hue else []
    combos = list(dict.fromkeys(tuple(row) for row in points[others].astype(str).to_numpy())) if others else [()]
    styles = ["-", "--", ":", "-."]
    groups = points.groupby(lines, sort=False, dropna=False) if lines else [((), points)]
    for line, group in groups:
        line = line if isinstance(line, tuple) else (line,)
        combo = tuple(str(value) for value in (line[1:] if hue else line))
        colour = f"C{(hues.index(str(line[0])) if hue else combos.index(combo)) % 10}"
        style = styles[combos.index(combo) % len(styles)] if hue else "-"
        label = ", ".join(f"{key}={value}" for key, value in zip(lines, line, strict=True)) or metric
        xs = x_of(group[by])
        ax.plot(xs, group["mean"], marker="o", ms=4, color=colour, ls=style, label=label)
        ax.fill_between(xs, group["low"], group["high"], color=colour, alpha=0.15, lw=0)
        mine = rows
        for key, value in zip(lines, line, strict=True):
            mine = mine[mine[key].astype(str) == str(value)]
        ax.plot(x_of(mine[by]), mine[metric], ".", color=colour, alpha=0.35, ms=4)
    if not numeric_x:
        ax.set_xticks(list(categories.values()), list(categories))
    elif _log_scale(points[by]):
        ax.set_xscale("log")
    elif pd.api.types.is_integer_dtype(points[by]):  # a count or a seed: integer ticks
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if _log_scale(rows[metric]):
        ax.set_yscale("log")
    seeds = sorted(set(points["seeds"]))
    counted = f"{seeds[0]}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]}"
    spread = "one run per point, no interval" if seeds == [1] else f"mean of {counted} seeds, band: 90 % t interval"
    ax.set_xlabel(by)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs {by} in {folder}\n{spread}", fontsize=9)
    if lines:  # outside the axes, where it hides no point
        ax.legend(fontsize=8, title=", ".join(lines), title_fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                  borderaxespad=0.0)  # fmt: skip
    ax.grid(alpha=0.3)
    save_figure(fig, Path(path))
    return points

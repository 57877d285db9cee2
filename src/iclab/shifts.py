"""Garg et al.'s distribution shifts (2022, §4): the same prompts, changed at evaluation time only.

Each shift maps a batch of linear-regression prompts (which carry their w) to shifted ones; the labels of
changed inputs are recomputed as y = wᵀx (noise-free). ``evaluate_shifts`` scores a run's model beside least
squares on every shift: error against the number of in-context examples, normalised by the base task's
zero-predictor error, as shifts.csv and figures/shifts.png in the run dir.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch import Tensor

from iclab.errors import UsageError
from iclab.evaluate import error_curve
from iclab.learners import LeastSquares, from_model
from iclab.plots import caption, config_caption, count_axis, outside_legend, save_figure
from iclab.prompts import Prompts
from iclab.rundir import FIGURES_DIR, atomic_write_text, run_outputs
from iclab.runs import load_model
from iclab.seeding import make_generator
from iclab.tasks import make_task

Shift = Callable[[Prompts, torch.Generator], Prompts]


def _relabel(prompts: Prompts, xs: Tensor, xq: Tensor) -> Prompts:
    """New inputs with their noise-free labels wᵀx."""
    w = prompts.w.unsqueeze(-1)
    return replace(prompts, xs=xs, ys=(xs @ w).squeeze(-1), xq=xq, yq=(xq @ w).squeeze(-1))


def _rotations(batch: int, d: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
    """Haar-random orthogonal matrices (batch, d, d)."""
    q, r = torch.linalg.qr(torch.randn(batch, d, d, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)).to(dtype)


def skewed_covariance(prompts: Prompts, generator: torch.Generator) -> Prompts:
    """x ← Σ^{1/2} x with Σ's eigenvalues ∝ 1/i² (i = 1..d, scaled to trace d) in a random basis per prompt."""
    d = prompts.d
    eigen = 1.0 / torch.arange(1, d + 1, dtype=prompts.xs.dtype) ** 2
    root = (eigen * d / eigen.sum()).sqrt()
    basis = _rotations(prompts.batch, d, generator, prompts.xs.dtype)
    transform = basis @ torch.diag_embed(root.expand(prompts.batch, d)) @ basis.transpose(-1, -2)  # Σ^{1/2}
    return _relabel(prompts, prompts.xs @ transform, prompts.xq @ transform)


def noisy_labels(prompts: Prompts, generator: torch.Generator) -> Prompts:
    """Context labels get noise N(0, 1); the query label stays noise-free."""
    noise = torch.randn(prompts.ys.shape, generator=generator, dtype=prompts.ys.dtype)
    return replace(prompts, ys=prompts.ys + noise)


def scaled_inputs(prompts: Prompts, generator: torch.Generator) -> Prompts:
    """Every x (context and query) times 3."""
    return _relabel(prompts, 3 * prompts.xs, 3 * prompts.xq)


def orthant(prompts: Prompts, generator: torch.Generator) -> Prompts:
    """Context inputs in one random orthant per prompt (|x| with a fixed sign pattern); queries unchanged."""
    signs = torch.randint(2, (prompts.batch, 1, prompts.d), generator=generator).to(prompts.xs.dtype) * 2 - 1
    return _relabel(prompts, prompts.xs.abs() * signs, prompts.xq)


def orthogonal_query(prompts: Prompts, generator: torch.Generator) -> Prompts:
    """Each query projected onto the orthogonal complement of the first min(n, d − 1) context inputs: with
    up to d − 1 examples the query is orthogonal to all of them (least squares then predicts 0), and the
    complement is never empty."""
    span = prompts.xs[:, : min(prompts.n, prompts.d - 1)]  # (B, r, d)
    if span.shape[1] == 0:
        return prompts
    basis = torch.linalg.qr(span.transpose(-1, -2)).Q  # (B, d, r), orthonormal (inputs in general position)
    xq = prompts.xq - (prompts.xq @ basis) @ basis.transpose(-1, -2)
    return _relabel(prompts, prompts.xs, xq)


def query_in_context(prompts: Prompts, generator: torch.Generator) -> Prompts:
    """Each query is one of the context points (uniformly chosen), with its label."""
    index = torch.randint(prompts.n, (prompts.batch, prompts.xq.shape[1]), generator=generator)
    xq = torch.gather(prompts.xs, 1, index.unsqueeze(-1).expand(-1, -1, prompts.d))
    return _relabel(prompts, prompts.xs, xq)


def subspace(prompts: Prompts, generator: torch.Generator) -> Prompts:
    """Every x projected onto a random subspace of dimension ⌈d/2⌉ per prompt."""
    d = prompts.d
    basis = _rotations(prompts.batch, d, generator, prompts.xs.dtype)[..., : (d + 1) // 2]  # (B, d, d/2)
    projection = basis @ basis.transpose(-1, -2)
    return _relabel(prompts, prompts.xs @ projection, prompts.xq @ projection)


SHIFTS: dict[str, Shift] = {
    "skewed_covariance": skewed_covariance,
    "noisy_labels": noisy_labels,
    "scaled_inputs": scaled_inputs,
    "orthant": orthant,
    "orthogonal_query": orthogonal_query,
    "query_in_context": query_in_context,
    "subspace": subspace,
}


def parse_shifts(names: list[str]) -> list[str]:
    """``["all"]`` or shift names → the names; UsageError naming the unknown one."""
    if names == ["all"]:
        return list(SHIFTS)
    for name in names:
        if name not in SHIFTS:
            raise UsageError(f"--shifts must be all or names from {', '.join(SHIFTS)}; got {name!r}")
    return names


def evaluate_shifts(run_dir: str | Path, names: list[str], batch_size: int = 1280, device: str = "cpu") -> pd.DataFrame:
    """The run's model and least squares on every shift (and on the unshifted prompts): one row per (shift,
    learner, k) with the query MSE, its standard error and the error normalised by the base task's
    zero-predictor error; writes shifts.csv and figures/shifts.png into the run dir. Needs prompts that carry
    w (linear tasks); UsageError otherwise."""
    run_dir = Path(run_dir)
    model, cfg, step = load_model(run_dir, device=device)
    task = make_task(cfg.task, cfg.seed)
    base = task.sample_in_chunks(batch_size, make_generator(cfg.seed, "shifts"), torch.float64)
    if base.w is None:
        raise UsageError(f"the shift suite changes inputs and relabels them with w: task.name={cfg.task.name} "
                         "prompts carry no w (use a linear task)")  # fmt: skip
    unit = task.zero_error() or float((base.yq**2).mean())
    learners = [from_model(model, "model"), LeastSquares()]
    rows = []
    for name in ["none", *parse_shifts(names)]:
        prompts = base if name == "none" else SHIFTS[name](base, make_generator(cfg.seed, f"shift-{name}"))
        for learner in learners:
            curve = error_curve(learner, prompts)
            for k, mse, sem in zip(curve.ks.tolist(), curve.mse.tolist(), curve.sem.tolist(), strict=True):
                rows.append({"shift": name, "learner": learner.name, "k": k, "mse": mse, "sem": sem,
                             "normalised": mse / unit})  # fmt: skip
    table = pd.DataFrame(rows)
    with run_outputs(run_dir) as staging:  # recorded in the run dir's manifest.json
        atomic_write_text(staging / "shifts.csv", table.to_csv(index=False))
        plot_shifts(table, staging / FIGURES_DIR / "shifts.png", f"{run_dir.name}: {cfg.model.name} on "
                    f"{cfg.task.name}", config_caption(cfg, run_dir, step))  # fmt: skip
    return table


SHIFT_FLOOR = 1e-6  # normalised errors below this (exact solvers) are drawn at it


def plot_shifts(table: pd.DataFrame, path: Path, title: str, caption_text: str = "") -> None:
    """One panel per shift: normalised error against the number of examples, model and least squares (values
    below 1e-6 clipped, the panel's title says which), one legend to the right of the first row."""
    shifts = list(dict.fromkeys(table["shift"]))
    columns = 4
    rows = -(-len(shifts) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 2.8 * rows), squeeze=False, sharey=True,
                             layout="constrained")  # fmt: skip
    for ax, shift in zip(axes.flat, shifts, strict=False):
        clipped = []
        for learner, curve in table[table["shift"] == shift].groupby("learner", sort=False):
            ax.plot(curve["k"], curve["normalised"].clip(lower=SHIFT_FLOOR), label=learner)
            if (curve["normalised"] < SHIFT_FLOOR).any():
                clipped.append(learner)
        ax.set_yscale("log")
        note = f"\n({', '.join(clipped)} clipped at {SHIFT_FLOOR:g})" if clipped else ""
        ax.set_title(shift + note, fontsize=9 if not clipped else 8)
        ax.set_xlabel("in-context examples")
        count_axis(ax.xaxis)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(shifts) :]:
        ax.axis("off")
    axes[0][0].set_ylabel("normalised error")
    outside_legend(axes[0][-1], *axes[0][0].get_legend_handles_labels())
    fig.suptitle(title, fontsize=10)
    if caption_text:
        caption(fig, caption_text)
    save_figure(fig, path)


def shift_summary(table: pd.DataFrame, ks: list[int]) -> pd.DataFrame:
    """Normalised error per shift and learner at the example counts ``ks`` (one column each)."""
    picked = table[table["k"].isin(ks)]
    summary = picked.pivot_table(index=["shift", "learner"], columns="k", values="normalised", sort=False)
    summary.columns = [f"k={k}" for k in summary.columns]
    return summary.reset_index()

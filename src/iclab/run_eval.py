"""Evaluate a trained run beside reference learners: error vs number of examples, table and figure."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from iclab.evaluate import HEAVY_TAIL_FACTOR, TAIL_FRACTION, ErrorCurve, error_curve
from iclab.learners import from_model
from iclab.learners.specs import parse_learner
from iclab.plots import plot_error_curves
from iclab.rundir import FIGURES_DIR, write_json
from iclab.runs import load_model
from iclab.seeding import make_generator
from iclab.tasks import Sampler, make_task
from iclab.theory import isotropic_gd_optimum

DEFAULT_LEARNERS = ("gd", "least_squares", "averaging", "zero")


def default_step(task: Sampler) -> float:
    """The default step of one-step ``gd``/``pgd`` specs: the optimal isotropic step n/(n + d + 1 + σ²)."""
    return isotropic_gd_optimum(task.d, task.n, task.cfg.noise_std).lr


def evaluate_run(
    run_dir: str | Path, learners: list[str] | None = None, batch_size: int = 5000, device: str = "cpu"
) -> list[ErrorCurve]:
    """Error curves (k = 1..n) of the run's model and of ``learners`` on the same fresh prompts.

    Writes ``eval.json`` and ``figures/error_curve.png`` into the run dir.
    """
    run_dir = Path(run_dir)
    model, cfg, step = load_model(run_dir, device=device)
    task = make_task(cfg.task, cfg.seed)
    references = [parse_learner(spec, task, default_step(task)) for spec in (learners or DEFAULT_LEARNERS)]
    # float64 prompts: the reference solvers stay exact; the model learner casts to its own dtype.
    prompts = task.sample_in_chunks(batch_size, make_generator(cfg.seed, "curves"), torch.float64)
    layers = model.num_layers
    name = f"model ({cfg.model.name}, {layers} layer{'s' if layers > 1 else ''})"
    curves = [error_curve(learner, prompts) for learner in [from_model(model, name), *references]]
    write_json(
        run_dir / "eval.json",
        {"step": step, "batch_size": batch_size, "curves": [c.to_dict() for c in curves]},
    )
    plot_error_curves(
        curves,
        run_dir / FIGURES_DIR / "error_curve.png",
        title=f"d={cfg.task.d}, n={cfg.task.n}, noise={cfg.task.noise_std:g}",
    )
    return curves


def curve_table(curves: list[ErrorCurve], max_rows: int | None = None) -> pd.DataFrame:
    """The curves at every example count (or at up to ``max_rows`` of them, always including 1 and n), one
    column each; a cell reads ``mse [low, high]`` (the bootstrap interval), with ``*`` where the loss has a
    heavy tail (:func:`heavy_tail_note` says what that means)."""
    n = len(curves[0].ks)
    rows = n if max_rows is None else min(max_rows, n)
    picks = sorted({round(1 + i * (n - 1) / max(rows - 1, 1)) for i in range(rows)})

    def cell(curve: ErrorCurve, k: int) -> str:
        mark = "*" if curve.heavy_tail[k - 1] else ""
        return f"{float(curve.mse[k - 1]):.4g} [{float(curve.low[k - 1]):.3g}, {float(curve.high[k - 1]):.3g}]{mark}"

    table = pd.DataFrame({c.name: [cell(c, k) for k in picks] for c in curves}, index=picks)
    table.index.name = "examples"
    return table


def heavy_tail_note(curves: list[ErrorCurve]) -> str:
    """What the table's intervals are, and which curves have heavy tails (the ``*`` cells) with the largest
    share of their loss carried by the worst 0.1 % of prompts."""
    first = curves[0]
    note = f"[low, high]: {100 * first.confidence:g} % bootstrap interval over {first.prompts} prompts"
    heavy = [
        f"{c.name} (up to {100 * float(c.top_share[c.heavy_tail].max()):.0f} %)" for c in curves if c.heavy_tail.any()
    ]
    if heavy:
        share = 100 * HEAVY_TAIL_FACTOR * TAIL_FRACTION
        note += (
            f"\n* heavy tail: the worst {100 * TAIL_FRACTION:g} % of prompts carry more than {share:g} % of the loss, "
            f"so fresh prompts can give a quite different mean: {', '.join(heavy)}"
        )
    return note

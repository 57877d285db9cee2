"""Evaluate a trained run beside reference learners: error vs number of examples, table and figure."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from iclab.evaluate import ErrorCurve, error_curve
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


def curve_table(curves: list[ErrorCurve], max_rows: int = 12) -> pd.DataFrame:
    """The curves at up to ``max_rows`` example counts (always including 1 and n), one column each."""
    n = len(curves[0].ks)
    picks = sorted({round(1 + i * (n - 1) / max(max_rows - 1, 1)) for i in range(min(max_rows, n))})
    table = pd.DataFrame({c.name: [float(c.mse[k - 1]) for k in picks] for c in curves}, index=picks)
    table.index.name = "examples"
    return table

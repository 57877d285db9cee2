"""Evaluate a trained run beside reference learners: error vs number of examples, table and figure."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import torch

from iclab.config import Config, flat_keys
from iclab.evaluate import HEAVY_TAIL_FACTOR, TAIL_FRACTION, ErrorCurve, error_curve
from iclab.learners import from_model
from iclab.learners.specs import parse_learner
from iclab.plots import config_caption, plot_error_curves
from iclab.rundir import FIGURES_DIR, read_config, run_outputs, write_json
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
    with run_outputs(run_dir) as staging:  # recorded in the run dir's manifest.json
        write_json(
            staging / "eval.json",
            {"step": step, "batch_size": batch_size, "curves": [c.to_dict() for c in curves]},
        )
        plot_error_curves(
            curves,
            staging / FIGURES_DIR / "error_curve.png",
            title=f"d={cfg.task.d}, n={cfg.task.n}, noise={cfg.task.noise_std:g}",
            caption_text=config_caption(cfg, run_dir, step),
        )
    return curves


def run_labels(run_dirs: list[Path], configs: list[Config], max_keys: int = 4) -> list[str]:
    """One label per run: its folder's name (its path where names repeat) and the config keys whose values
    differ between the runs (up to ``max_keys``; ``seed`` counts)."""
    names = [path.name for path in run_dirs]
    if len(set(names)) < len(names):
        names = [str(path) for path in run_dirs]
    keys = [flat_keys(cfg) for cfg in configs]
    differing = [key for key in keys[0] if len({repr(k.get(key)) for k in keys}) > 1]
    differing += [key for k in keys[1:] for key in k if key not in keys[0] and key not in differing]
    labels = []
    for name, values in zip(names, keys, strict=True):
        shown = [f"{key.split('.', 1)[-1]}={values.get(key)}" for key in differing[:max_keys]]
        more = " …" if len(differing) > max_keys else ""
        labels.append(f"{name} ({', '.join(shown)}{more})" if shown else name)
    return labels


def default_comparison_figure(run_dirs: list[Path]) -> Path:
    """Where ``iclab eval RUN1 RUN2 …`` puts its combined figure unless told: in the runs' common folder,
    named after them (``compare-RUN1-RUN2….png``, shortened past 100 characters)."""
    common = Path(os.path.commonpath([str(path.resolve()) for path in run_dirs]))
    stem = "compare-" + "-".join(path.resolve().name for path in run_dirs)
    if len(stem) > 100:
        stem = stem[:90] + f"-{len(run_dirs)}-runs"
    return common / f"{stem}.png"


def compare_runs(
    run_dirs: list[str | Path],
    learners: list[str] | None = None,
    batch_size: int = 5000,
    device: str = "cpu",
    figure: str | Path | None = None,
) -> tuple[dict[str, list[ErrorCurve]], Path]:
    """Evaluate every run (:func:`evaluate_run`: each gets its own eval.json and figures/error_curve.png), then
    draw their models' curves on one figure (``figure``, default :func:`default_comparison_figure`), labelled by
    run name and the config keys that differ. The reference learners are drawn too (dashed), from the first run,
    when every run has the same task and seed: then they are the same curves on the same prompts for all.
    Returns ({run dir: curves}, the figure's path)."""
    paths = [Path(r) for r in run_dirs]
    results = {str(path): evaluate_run(path, learners, batch_size, device) for path in paths}
    configs = [read_config(path) for path in paths]
    figure = default_comparison_figure(paths) if figure is None else Path(figure)
    models = [curves[0] for curves in results.values()]
    labels = run_labels(paths, configs)
    same_prompts = all(c.task == configs[0].task and c.seed == configs[0].seed for c in configs)
    references = list(results.values())[0][1:] if same_prompts else []
    note = "" if same_prompts else "; reference learners left out: the runs' prompts differ"
    plot_error_curves(
        [*models, *references],
        figure,
        title=f"{len(paths)} runs",
        caption_text=f"{', '.join(map(str, paths))}: {config_caption(configs[0])} (the first run's config; each "
        f"label gives the keys that differ){note}",
        labels=[*labels, *(curve.name for curve in references)],
        solid=len(models),
    )
    return results, figure


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

"""Figures a reader can read (issue 15: 10), checked on the matplotlib Figure objects, not on pixels: the loss
plot has a labelled tick at the converged value, count axes have integer ticks, a clipped curve says so, the
colour bars of weights.png overlap nothing and its rows and columns name the token coordinates, legends lie
outside every plotting area, and every figure carries a caption naming its run or config."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from iclab.config import parse_config
from iclab.constructions import gd_model
from iclab.evaluate import error_curve
from iclab.learners import GradientDescent, LeastSquares
from iclab.plots import config_caption, figure_caption, plot_error_curves, plot_training
from iclab.probe import ProbeSettings, probe_model, write_probe
from iclab.probe.weights import compare_with_gd_construction, plot_weights
from iclab.tasks import make_task


@pytest.fixture
def figures(monkeypatch):
    """``figures()``: the figures made so far in the test, in order, kept open (``save_figure`` closes them:
    here it may not); closed at the end."""
    before = set(plt.get_fignums())
    monkeypatch.setattr(plt, "close", lambda *args: None)

    def made() -> list[plt.Figure]:
        return [plt.figure(n) for n in sorted(plt.get_fignums()) if n not in before]

    yield made
    opened = made()
    monkeypatch.undo()
    for fig in opened:
        plt.close(fig)


def renderer(fig: plt.Figure):
    fig.draw_without_rendering()
    return fig.canvas.get_renderer()


def hidden_points(fig: plt.Figure) -> list[str]:
    """Legends that overlap a plotting area (an axes' data rectangle), or the caption overlapping an axes with
    its labels: what a reader could not see."""
    render = renderer(fig)
    problems = []
    areas = [(ax, ax.get_window_extent(render)) for ax in fig.axes]
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    for legend in legends:
        box = legend.get_window_extent(render)
        problems += [f"legend over axes {ax.get_title()!r}" for ax, area in areas if box.overlaps(area)]
    for text in fig.texts:
        if text.get_gid() == "iclab-caption":
            box = text.get_window_extent(render)
            problems += [f"caption over {ax.get_title()!r}" for ax in fig.axes
                         if box.overlaps(ax.get_tightbbox(render))]  # fmt: skip
    return problems


def integer_ticks(axis) -> bool:
    """Every tick shown within the axis' limits is an integer."""
    low, high = sorted(axis.get_view_interval())
    shown = [t for t in axis.get_majorticklocs() if low - 1e-9 <= t <= high + 1e-9]
    return bool(shown) and all(abs(t - round(t)) < 1e-9 for t in shown)


def test_loss_plot_has_a_labelled_tick_at_the_converged_value_and_a_caption(tmp_path, figures):
    """A run that converges at 1.147 between a start at 5.3 and a reference at 1.1538: the nearest labelled
    y tick lies within 1 % of 1.147 (log10 axes label only 1 and 10 there); step ticks are integers."""
    steps = np.arange(50, 4001, 50)
    train = 1.147 + 4.2 * np.exp(-steps / 300)
    held = [v if s % 500 == 0 else np.nan for s, v in zip(steps, train, strict=True)]
    metrics = pd.DataFrame({"step": steps, "train_loss": train, "eval_loss": held})
    metrics.loc[metrics.index[-1], "eval_loss"] = 1.147
    cfg = parse_config({}, ["task.d=5", "task.n=20", "train.steps=4000"])
    plot_training(metrics, tmp_path / "loss.png", {"optimal 1-layer LSA (theory)": 1.1538},
                  config_caption(cfg, "runs/lsa1", 4000))  # fmt: skip
    (fig,) = figures()
    ax = fig.axes[0]
    ticks = [t for t in ax.get_yticks() if ax.get_ylim()[0] <= t <= ax.get_ylim()[1]]
    nearest = min(ticks, key=lambda t: abs(math.log(t / 1.147)))
    assert abs(nearest / 1.147 - 1) < 0.01, ticks
    renderer(fig)
    labels = {round(t, 6): label.get_text() for t, label in zip(ax.get_yticks(), ax.get_yticklabels(), strict=True)}
    assert labels[round(nearest, 6)] == "1.147"
    assert len(ticks) >= 3  # more than the converged tick: a reader can place the start too
    assert integer_ticks(ax.xaxis)
    assert figure_caption(fig).startswith("runs/lsa1 (step 4000): task.name=linear task.d=5 task.n=20")
    assert hidden_points(fig) == []


def small_curves(n: int = 4, tiny: bool = True):
    """Error curves on n = 4 examples (least squares reaches ~1e-30 from k = d = 2: clipped on the plot)."""
    task = make_task(parse_config({}, ["task.d=2", f"task.n={n}"]).task, seed=0)
    prompts = task.sample(400, torch.Generator().manual_seed(0), dtype=torch.float64)
    return [error_curve(GradientDescent(1, 0.5), prompts), error_curve(LeastSquares(), prompts)]


def test_error_curves_integer_ticks_clipped_label_legend_outside(tmp_path, figures):
    curves = small_curves()
    assert float(curves[1].mse[-1]) < 1e-20  # least squares is exact once k ≥ d
    plot_error_curves(curves, tmp_path / "curve.png", title="t", caption_text="runs/x: task.d=2")
    (fig,) = figures()
    ax = fig.axes[0]
    assert integer_ticks(ax.xaxis) and sorted(ax.get_xlim())[1] < 5
    labels = ax.get_legend_handles_labels()[1]
    assert labels[0] == "gd(steps=1, lr=0.5)" and labels[1].startswith("least_squares (clipped at ")
    assert hidden_points(fig) == [] and figure_caption(fig) == "runs/x: task.d=2"


def test_weights_figure_colour_bars_overlap_nothing_and_coordinates_are_named(tmp_path, figures):
    """A 2-layer model (d = 3, descriptor of 2): no two axes (images and colour bars, with their tick labels)
    overlap, and every image's rows and columns read x1, x2, x3, y, s1, s2."""
    model = gd_model(3, layers=2, lr=0.5)
    rows = compare_with_gd_construction(model)
    for row in rows:  # a descriptor's coordinates after the label: width 6
        for name in ("kq", "pv", "kq_construction", "pv_construction"):
            setattr(row, name, np.pad(getattr(row, name), (0, 2)))
    plot_weights(rows, tmp_path / "weights.png", caption_text="probe of runs/x")
    (fig,) = figures()
    render = renderer(fig)
    boxes = [ax.get_tightbbox(render) for ax in fig.axes]
    assert len(fig.axes) == 16  # 2 rows × 4 images, each with its colour bar
    overlaps = [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
    assert overlaps == []
    images = [ax for ax in fig.axes if ax.images]
    for ax in images:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["x1", "x2", "x3", "y", "s1", "s2"]
        assert [t.get_text() for t in ax.get_yticklabels()] == ["x1", "x2", "x3", "y", "s1", "s2"]
    assert hidden_points(fig) == []


def test_probe_figures_are_readable(tmp_path, figures):
    """Every figure write_probe makes: a caption, no legend over a plotting area, integer ticks on the
    iteration and example axes."""
    task = make_task(parse_config({}, ["task.d=2", "task.n=6"]).task, seed=0)
    settings = ProbeSettings(prompts=40, queries=2, probe_prompts=80, max_iterations=3, sweeps=2)
    result = probe_model(gd_model(2, layers=2, lr=0.5), task, settings, progress=False)
    result.caption = "probe of runs/gd2 (step 10): task.d=2 task.n=6"
    write_probe(result, tmp_path / "probe", "gd2")
    made = figures()
    assert len(made) == 4
    for fig in made:
        assert figure_caption(fig) == result.caption
        assert hidden_points(fig) == []
    iterations = made[0]
    assert all(integer_ticks(ax.xaxis) for ax in iterations.axes if ax.images)
    assert integer_ticks(made[1].axes[0].xaxis)  # layer curves: examples


def test_recipe_and_shift_figures_are_readable(tmp_path, figures):
    """The figures of the reproductions and of the shift suite, drawn from small tables: integer ticks where
    the axis counts, the clipping said, legends outside the data, a caption."""
    from iclab.experiments.garg import plot_curves
    from iclab.experiments.newton import plot_maps
    from iclab.shifts import plot_shifts

    maps = pd.DataFrame({"depth": [1, 2, 2], "layer": [1, 1, 2], "newton_k": [1, 0, 3], "gd_k": [1, 1, 2]})
    plot_maps(maps, tmp_path / "map.png", "iclab reproduce newton --size quick")
    ks = np.arange(1, 9)
    rows = [{"shift": shift, "learner": learner, "k": k, "normalised": value}
            for shift in ("none", "scaled_inputs") for learner in ("model", "least_squares")
            for k, value in zip(ks, np.where(ks >= 3, 1e-30, 0.5) if learner == "least_squares" else 1 / ks,
                                strict=True)]  # fmt: skip
    plot_shifts(pd.DataFrame(rows), tmp_path / "shifts.png", "title", "runs/x (step 4): task.d=2")
    garg = pd.DataFrame([{"task": task, "condition": "in distribution", "learner": learner, "seed": seed, "k": k,
                          "normalised": 1 / k, "low": 0.8 / k, "high": 1.2 / k}
                         for task in ("linear", "sparse_linear") for learner in ("gpt2", "least_squares")
                         for seed in (0, 1) for k in range(1, 11)])  # fmt: skip
    plot_curves(garg, tmp_path / "curves.png", "iclab reproduce garg --size quick")
    newton, shifts, curves = figures()
    assert integer_ticks(newton.axes[0].yaxis) and integer_ticks(newton.axes[0].xaxis)
    renderer(newton)
    assert [t.get_text() for t in newton.axes[1].get_yticklabels() if t.get_text()] == ["1", "2"]
    assert all(ax.get_title().endswith("(least_squares clipped at 1e-06)") for ax in shifts.axes if ax.lines)
    assert all(integer_ticks(ax.xaxis) for ax in shifts.axes + curves.axes if ax.lines)
    for fig in (newton, shifts, curves):
        assert figure_caption(fig) and hidden_points(fig) == []


def test_flow_figure_says_the_gap_is_clipped(tmp_path, figures):
    from iclab.theory.descriptors import task_problem
    from iclab.theory.figures import plot_flow
    from iclab.theory.gradient_flow import gradient_flow, initial_weights

    cfg = parse_config({}, ["task.d=2", "task.n=6"])
    problem = task_problem(cfg.task, cfg.seed, n=6)
    flow = gradient_flow(problem, *initial_weights(problem.features, "balanced", 0.1, 0), t_max=200)
    assert float((flow.loss - flow.optimal_loss).min()) < 1e-16  # converged to rounding: clipped
    plot_flow(flow, tmp_path / "flow.png", caption_text="iclab theory flow task.d=2 task.n=6")
    (fig,) = figures()
    assert fig.axes[1].get_legend_handles_labels()[1] == ["gradient flow (clipped at 1e-16)"]
    assert hidden_points(fig) == [] and figure_caption(fig) == "iclab theory flow task.d=2 task.n=6"


def test_probe_run_captions_name_the_run_and_step(tmp_path):
    """write_probe names the run in every figure: probe_run's caption holds the run dir and its step."""
    from iclab.cli import main

    out = tmp_path / "run"
    assert main(["train", "task.d=2", "task.n=4", "train.steps=4", "train.batch_size=8", "eval.batch_size=20",
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    from iclab.probe import probe_run

    result = probe_run(out, tmp_path / "probe", ProbeSettings(prompts=20, queries=1, probe_prompts=40,
                                                              max_iterations=2, sweeps=1), progress=False)  # fmt: skip
    assert result.caption.startswith(f"probe of {out} (step 4): task.name=linear task.d=2 task.n=4")
    assert Path(tmp_path / "probe" / "figures" / "weights.png").stat().st_size > 10_000

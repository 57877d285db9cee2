"""Huang & Ge (ICLR 2025): a task descriptor (the mean μ of x, or a one-hot task id) helps a one-layer LSA, which
reaches the exact optimum from the balanced initialisation; deeper models do better still.

Setting (PAPERS.md; the paper's n, τ and losses are not available, so these are chosen and stated): x ~ N(μ, I),
μ ~ N(0, τ² I) per prompt (or one of K fixed means with its one-hot index as descriptor), w ~ N(0, I),
y = wᵀx (noise-free); the descriptor s is appended to every token, (x_i, y_i, s) and (x_q, 0, s). Models: LSAs
in the sparse form (W_KQ on the features (x, s), W_PV on the label: the paper's model), balanced
initialisation, Adam with gradient clipping, fresh prompts every step.

- **One layer, n finite**: the exact loss of the trained weights (:func:`compare_with_theory`, no Monte Carlo)
  beside L*(n) with and without the descriptor, over a grid of n, and the trained B beside B*.
- **n → ∞**: L* = 0 with the descriptor (one GD step on x − μ), > 0 without; the trained losses fall towards it.
- **Gradient flow** on the exact population loss from the balanced initialisation (finite n and n = ∞).
- **Depth** 1–3 at d = 5, 10, 20 (n = 4d): the loss of each trained model on fresh prompts (95 % bootstrap
  interval) and how the with/without gap moves with depth and with d.
- **One-hot descriptors** over K fixed means (K = 4, 16) against no descriptor on the same means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from iclab.evaluate import loss_statistics, paired_prompt_losses
from iclab.experiments.grid import claims_report
from iclab.experiments.recipe import Claim, Recipe, RunSpec, claim_checks, claims_frame
from iclab.learners import from_model
from iclab.plots import caption, outside_legend, readable_log_axis, recipe_caption, save_figure
from iclab.rundir import atomic_write_text
from iclab.runs import load_model
from iclab.seeding import make_generator
from iclab.tasks import make_task
from iclab.theory.compare import TheoryComparison, compare_with_theory
from iclab.theory.descriptors import descriptor_problem, task_problem
from iclab.theory.gradient_flow import gradient_flow, initial_weights
from iclab.theory.lsa_weights import lsa_from_bilinear
from iclab.theory.quadratic import ROUNDING, snap_zero

WITH, WITHOUT = "with", "without"


@dataclass(frozen=True)
class Size:
    """One size of the experiment (every run: sparse LSA, balanced init, Adam with clipping 1.0)."""

    d: int  # the main setting's dimension (loss vs n, one-hot)
    n: int  # its context length (weights, one-hot, depth at d)
    n_grid: tuple[int, ...]  # one-layer runs with and without the descriptor at these n
    depths: tuple[int, ...]  # layers of the depth study
    dims: tuple[int, ...]  # d of the depth study, each at n = n_per_d·d (the first one is d, at n)
    n_means: tuple[int, ...]  # K of the one-hot study
    seeds: int  # seeds of the one-layer and d-dimensional runs (the larger d: one seed)
    steps: int  # one-layer runs
    deep_steps: int  # runs with two or more layers
    batch_size: int  # prompts per step at d (at d' > d: batch_size·(d/d')², at least 512)
    tau: float = 1.0
    lr: float = 0.03  # one-layer runs (cosine decay)
    deep_lr: float = 0.01  # runs with two or more layers
    eval_prompts: int = 20_000  # fresh prompts per trained model for its Monte Carlo loss
    flow_t_max: float = 1e4
    loss_tolerance: float = 0.03  # trained one-layer exact loss within this of L* (relative)
    weights_tolerance: float = 0.05  # ‖B − B*‖/‖B*‖ below this
    flow_tolerance: float = 1e-8  # flow's L(θ(T)) − L* below this

    @property
    def n_per_d(self) -> int:
        return self.n // self.d


FULL = Size(d=5, n=20, n_grid=(5, 10, 20, 40, 80), depths=(1, 2, 3), dims=(5, 10, 20), n_means=(4, 16), seeds=2,
            steps=1500, deep_steps=2000, batch_size=4096)  # fmt: skip
QUICK = Size(d=3, n=12, n_grid=(12,), depths=(1, 2), dims=(3,), n_means=(4,), seeds=1, steps=1500, deep_steps=1000,
             batch_size=2048, eval_prompts=8192)  # fmt: skip
SIZES = {"quick": QUICK, "full": FULL}


@dataclass(frozen=True)
class Run:
    """One planned run: d, n, layers, descriptor ("mean", "onehot" or "none"), K fixed means (0: Gaussian μ)."""

    d: int
    n: int
    layers: int
    descriptor: str
    n_means: int
    seed: int

    @property
    def run_id(self) -> str:
        means = f"_K{self.n_means}" if self.n_means else ""
        return f"d{self.d}_n{self.n}_L{self.layers}_{self.descriptor}{means}_s{self.seed}"

    @property
    def given(self) -> str:
        return WITHOUT if self.descriptor == "none" else WITH


def runs(size: Size) -> list[Run]:
    """Every run of ``size``, each once (the loss-vs-n, depth and one-hot studies share runs)."""
    planned: list[Run] = []
    for seed in range(size.seeds):
        for desc in ("mean", "none"):
            planned += [Run(size.d, n, 1, desc, 0, seed) for n in size.n_grid]
            for d in size.dims:
                if d == size.d or seed == 0:
                    planned += [Run(d, size.n_per_d * d, layers, desc, 0, seed) for layers in size.depths]
        for k in size.n_means:
            planned += [Run(size.d, size.n, 1, desc, k, seed) for desc in ("onehot", "none")]
    return list(dict.fromkeys(planned))


def overrides(size: Size, run: Run) -> tuple[str, ...]:
    batch = max(size.batch_size * size.d**2 // run.d**2, 512)  # a step's cost grows as d²·n ∝ d³
    steps = size.steps if run.layers == 1 else size.deep_steps
    task = [f"task.d={run.d}", f"task.n={run.n}", f"task.x_mean_std={size.tau:g}", f"task.descriptor={run.descriptor}"]
    if run.n_means:
        task.append(f"task.n_means={run.n_means}")
    return (
        f"seed={run.seed}",
        *task,
        f"model.layers={run.layers}",
        "model.param=sparse",
        "model.init=balanced",
        f"train.steps={steps}",
        f"train.batch_size={batch}",
        f"train.lr={size.lr if run.layers == 1 else size.deep_lr}",
        "train.grad_clip=1.0",
        f"train.log_every={max(steps // 50, 1)}",
        f"eval.every={max(steps // 5, 1)}",
        "eval.batch_size=1000",
    )


def plan(size_name: str) -> list[RunSpec]:
    size = SIZES[size_name]
    return [RunSpec(run.run_id, overrides(size, run)) for run in runs(size)]


def measure(size: Size, run_dirs: dict[str, Path], device: str) -> tuple[pd.DataFrame, dict[str, TheoryComparison]]:
    """One row per run: its loss and the optimal one-layer LSA's on the same fresh prompts (means and 95 %
    intervals, and of their difference), L* of its task, and for one-layer runs the exact loss of the trained
    weights and ‖B − B*‖/‖B*‖; and each one-layer run's weights beside the optimum ``{run_id: comparison}``."""
    rows, comparisons = [], {}
    for run in runs(size):
        model, cfg, _ = load_model(run_dirs[run.run_id], device=device)
        problem = task_problem(cfg.task, cfg.seed)
        best, optimal_loss = problem.optimum()
        sampler, generator = make_task(cfg.task, cfg.seed), make_generator(cfg.seed, "analysis")
        optimum = lsa_from_bilinear(best, cfg.task.d)
        learners = [from_model(m.double().to(device)) for m in (model, optimum)]
        losses = paired_prompt_losses(learners, sampler, size.eval_prompts, generator, device=device)
        mean, _, low, high, _ = loss_statistics(torch.cat([losses, losses[:, :1] - losses[:, 1:]], dim=1))
        row = {**run.__dict__, "given": run.given, "run_id": run.run_id, "loss": float(mean[0]),
               "loss_low": float(low[0]), "loss_high": float(high[0]), "optimum_loss_same_prompts": float(mean[1]),
               "minus_optimum": float(mean[2]), "minus_optimum_low": float(low[2]),
               "minus_optimum_high": float(high[2]), "optimal_loss_1layer": optimal_loss,
               "exact_loss": np.nan, "gap_percent": np.nan, "weights_distance": np.nan}  # fmt: skip
        if run.layers == 1:
            comparison = comparisons[run.run_id] = compare_with_theory(model, cfg.task, cfg.seed)
            row["exact_loss"] = comparison.model_loss
            row["gap_percent"] = 100 * (comparison.model_loss / comparison.optimal_loss - 1)
            row["weights_distance"] = comparison.distance
        rows.append(row)
    return pd.DataFrame(rows), comparisons


def flows(size: Size) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Gradient flow of the exact loss from the balanced init (scale 0.1, seed 0) at n and n = ∞, with and
    without the mean descriptor: a table and ``{label: (t, L(t) − L*)}``."""
    rows, curves = [], {}
    for n in (size.n, math.inf):
        for desc in ("mean", "none"):
            problem = descriptor_problem(n, size.d, descriptor=desc, tau=size.tau)
            a0, v0 = initial_weights(problem.features, "balanced", 0.1, 0)
            flow = gradient_flow(problem, a0, v0, t_max=size.flow_t_max)
            given = WITH if desc == "mean" else WITHOUT
            label = f"n = {'∞' if math.isinf(n) else n}, {given} μ"
            curves[label] = (flow.t, flow.loss - flow.optimal_loss)
            rows.append({"n": n, "given": given, "initial_loss": flow.loss[0],
                         "optimal_loss": snap_zero(flow.optimal_loss, problem.c), "final_gap": flow.final_gap,
                         "t_max": size.flow_t_max})  # fmt: skip
    return pd.DataFrame(rows), curves


def _mean_over_seeds(table: pd.DataFrame, keys: list[str], columns: list[str]) -> pd.DataFrame:
    return table.groupby(keys, as_index=False)[columns].mean()


def claims(size: Size, results: pd.DataFrame, flow_table: pd.DataFrame) -> list[Claim]:
    """The paper's claims as iclab measures them (each with its tolerance)."""
    found: list[Claim] = []
    one = results[(results.layers == 1) & (results.n_means == 0) & (results.d == size.d)]
    for r in _mean_over_seeds(one, ["n", "given"], ["exact_loss", "optimal_loss_1layer", "gap_percent",
                                                      "weights_distance"]).itertuples():  # fmt: skip
        found.append(Claim(
            f"one layer, {r.given} descriptor, n = {r.n}: training reaches the global minimum",
            "Thm 4.1: from the balanced init, gradient flow reaches the global minimiser (finite n)",
            f"exact loss of the trained weights {r.exact_loss:.5g} vs L* = {r.optimal_loss_1layer:.5g} "
            f"({r.gap_percent:+.3g} %; mean of {size.seeds} seed{'s' if size.seeds > 1 else ''})",
            f"< {size.loss_tolerance:.0%} above L*", bool(r.gap_percent < 100 * size.loss_tolerance)))  # fmt: skip
        if r.n == size.n:
            found.append(Claim(
                f"one layer, {r.given} descriptor, n = {r.n}: the trained weights are the closed-form B*",
                "Thm 4.1: the minimiser's form (with μ: two more non-zero blocks, the 11 and 21 of W_KQ)",
                f"‖B − B*‖_F/‖B*‖_F = {r.weights_distance:.2%}", f"< {size.weights_tolerance:.0%}",
                bool(r.weights_distance < size.weights_tolerance)))  # fmt: skip
    paired = one.pivot_table(index=["n", "seed"], columns="given", values="loss")
    for n, group in paired.groupby(level=0):
        better = bool((group[WITH] < group[WITHOUT]).all())
        found.append(Claim(
            f"one layer, n = {n}: the descriptor lowers the loss", "descriptors help (Fig. 2)",
            f"trained {group[WITH].mean():.4g} with vs {group[WITHOUT].mean():.4g} without (fresh prompts)",
            "with < without, every seed", better))  # fmt: skip
    infinite = flow_table[np.isinf(flow_table.n)].set_index("given")["optimal_loss"]
    found.append(Claim(
        "n → ∞: with the descriptor the optimum is exact (zero loss), without it is not",
        "Thm 3.1: subtract μ in the keys, one step of preconditioned GD: ŷ = wᵀx_q; without μ no fixed Γ "
        "undoes (I + μμᵀ)",
        f"L*(∞) = {infinite[WITH]:.4g} with, {infinite[WITHOUT]:.4g} without",
        f"with 0 (to {ROUNDING:g}·E y²), without > 0", bool(infinite[WITH] == 0 < infinite[WITHOUT])))  # fmt: skip
    with_mean = _mean_over_seeds(one[one.given == WITH], ["n"], ["exact_loss"]).sort_values("n")
    if len(with_mean) > 1:
        found.append(Claim(
            "with the descriptor the trained one-layer loss falls towards 0 as n grows",
            "L*(n) → 0 as n → ∞ with μ",
            " → ".join(f"{v:.3g}" for v in with_mean["exact_loss"]), "decreasing in n",
            bool((np.diff(with_mean["exact_loss"].to_numpy()) < 0).all())))  # fmt: skip
    for r in flow_table.itertuples():
        n = "∞" if math.isinf(r.n) else f"{r.n:g}"
        found.append(Claim(
            f"gradient flow from the balanced init, n = {n}, {r.given} descriptor, reaches the global minimum",
            "Thm 3.1 (n = ∞), Thm 4.1 (finite n); balanced stays balanced (Lemma 3.3)",
            f"L(θ(T)) − L* = {r.final_gap:.2g} at T = {r.t_max:g} (from {r.initial_loss:.4g})",
            f"< {size.flow_tolerance:g}", bool(r.final_gap < size.flow_tolerance)))  # fmt: skip
    for d in size.dims:
        deep = results[(results.d == d) & (results.n_means == 0) & (results.layers > 1)]
        means = deep.groupby(["given", "layers"])[["loss", "minus_optimum", "minus_optimum_high",
                                                   "optimal_loss_1layer"]].mean()  # fmt: skip
        for (given, layers), r in means.iterrows():
            found.append(Claim(
                f"d = {d}, {given} descriptor: {layers} layers beat the one-layer optimum",
                "deeper models do better (Fig. 2; more layers run more GD steps)",
                f"{r.loss:.4g} vs L* = {r.optimal_loss_1layer:.4g}; on the same prompts {r.minus_optimum:+.3g} "
                f"(95 % interval up to {r.minus_optimum_high:+.3g})",
                "interval of the difference below 0", bool(r.minus_optimum_high < 0)))  # fmt: skip
    for k in size.n_means:
        group = results[results.n_means == k].pivot_table(index="seed", columns="given", values="exact_loss")
        found.append(Claim(
            f"K = {k} fixed means: the one-hot task id lowers the loss (one layer, exact)",
            "one-hot descriptors also help",
            f"{group[WITH].mean():.4g} with vs {group[WITHOUT].mean():.4g} without", "with < without, every seed",
            bool((group[WITH] < group[WITHOUT]).all())))  # fmt: skip
    return found


def gap_table(size: Size, results: pd.DataFrame) -> pd.DataFrame:
    """The with/without gap per d and depth: absolute, relative to the loss without. Two or more layers: the
    trained models' losses on fresh prompts; one layer: the exact optimum L* (what one layer reaches, as the
    one-layer claims check at d; Adam from the balanced init is slow at larger d: results.csv has the trained
    one-layer losses)."""
    deep = results[results.n_means == 0]
    deep = deep[deep.apply(lambda r: r.n == size.n_per_d * r.d, axis=1)]
    value = deep["loss"].where(deep["layers"] > 1, deep["optimal_loss_1layer"])
    means = deep.assign(value=value).pivot_table(index=["d", "layers"], columns="given", values="value")
    means = means.reset_index()
    means["gap"] = means[WITHOUT] - means[WITH]
    means["relative_gap"] = means["gap"] / means[WITHOUT]
    means["one_layer"] = np.where(means["layers"] == 1, "L* (theory)", "trained")
    return means


def observations(size: Size, gaps: pd.DataFrame) -> pd.DataFrame:
    """What the paper reports about the gap's shape, and what iclab measures (not pass/fail claims: the paper's
    n and τ are not known, so shapes are compared)."""
    rows = []
    for d, group in gaps.groupby("d"):
        g = group.set_index("layers")
        layers = " → ".join(str(layer) for layer in g.index)
        rows.append({"paper": "the gap narrows from 1 to 2 layers (Fig. 2)",
                     "setting": f"d = {d}, n = {size.n_per_d * d}",
                     "iclab": f"absolute gap over {layers} layers: " + " → ".join(f"{v:.3g}" for v in g["gap"]) +
                     "; relative: " + " → ".join(f"{v:.0%}" for v in g["relative_gap"]),
                     "matches": "yes" if 2 in g.index and g["gap"][2] < g["gap"][1] else "no"})  # fmt: skip
    if gaps["d"].nunique() > 1:
        one = gaps[gaps.layers == gaps.layers.min()].sort_values("d")
        rows.append({"paper": "the gap widens with d", "setting": f"one layer (L*), n = {size.n_per_d}d",
                     "iclab": " → ".join(f"d={r.d}: {r.gap:.3g}" for r in one.itertuples()) + " (relative " +
                     " → ".join(f"{v:.0%}" for v in one["relative_gap"]) + ")",
                     "matches": "yes" if (np.diff(one["gap"].to_numpy()) > 0).all() else "no"})  # fmt: skip
    return pd.DataFrame(rows)


def plot_loss_vs_n(size: Size, results: pd.DataFrame, path: Path, caption_text: str) -> None:
    """loss_vs_n.png: L*(n) with and without the descriptor (lines), the trained one-layer models (exact loss of
    their weights: dots; fresh-prompt loss with its 95 % interval: bars), the n = ∞ limits (dashed)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    grid = np.unique(np.geomspace(min(size.n_grid) / 1.5, max(size.n_grid) * 1.5, 40).round().astype(int))
    one = results[(results.layers == 1) & (results.n_means == 0) & (results.d == size.d)]
    values = []
    for i, (desc, given) in enumerate((("mean", WITH), ("none", WITHOUT))):
        theory = [descriptor_problem(n, size.d, descriptor=desc, tau=size.tau).optimum()[1] for n in grid]
        infinite = descriptor_problem(math.inf, size.d, descriptor=desc, tau=size.tau)
        limit = snap_zero(infinite.optimum()[1], infinite.c)
        ax.plot(grid, theory, color=f"C{i}", label=f"L*(n), {given} μ (theory)")
        if limit > 0:
            ax.axhline(limit, color=f"C{i}", linestyle="--", linewidth=0.8, label=f"L*(∞) = {limit:.3g}, {given} μ")
        trained = one[one.given == given].groupby("n")[["exact_loss", "loss", "loss_low", "loss_high"]].mean()
        ax.scatter(trained.index, trained["exact_loss"], color=f"C{i}", zorder=3,
                   label=f"trained, {given} μ (exact loss of the weights)")  # fmt: skip
        ax.errorbar(trained.index * 1.04, trained["loss"],
                    yerr=[trained["loss"] - trained["loss_low"], trained["loss_high"] - trained["loss"]],
                    fmt="none", ecolor=f"C{i}", alpha=0.6, capsize=3,
                    label=f"trained, {given} μ (fresh prompts, 95 % interval)")  # fmt: skip
        values += [*theory, *trained["loss_high"], *trained["loss_low"]]
    ax.set_xscale("log")
    ax.set_xticks(list(size.n_grid), [str(n) for n in size.n_grid])
    ax.minorticks_off()
    readable_log_axis(ax, values)
    ax.set_xlabel("n, in-context examples")
    ax.set_ylabel("query loss E(ŷ − y)²")
    ax.set_title(f"one-layer LSA, d = {size.d}: with vs without the task descriptor (L*(∞) = 0 with μ)")
    ax.grid(alpha=0.3)
    outside_legend(ax)
    fig.tight_layout()
    caption(fig, caption_text)
    save_figure(fig, path)


def plot_flows(curves: dict[str, tuple[np.ndarray, np.ndarray]], tolerance: float, path: Path, text: str) -> None:
    """flow.png: L(θ(t)) − L* along gradient flow from the balanced init (log-log; gaps below 1e-14 clipped)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    floor = 1e-14
    for i, (label, (t, gap)) in enumerate(curves.items()):
        keep = t > 0
        ax.plot(t[keep], np.maximum(gap[keep], floor), color=f"C{i}", label=label)
    ax.axhline(tolerance, color="C3", linestyle=":", label=f"tolerance {tolerance:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("time t of the flow dθ/dt = −∇L(θ)")
    ax.set_ylabel(f"L(θ(t)) − L* (clipped at {floor:g})")
    ax.set_title("gradient flow on the exact population loss from the balanced initialisation")
    ax.grid(alpha=0.3)
    outside_legend(ax)
    fig.tight_layout()
    caption(fig, text)
    save_figure(fig, path)


def plot_weights(size: Size, pairs: dict[str, tuple[np.ndarray, np.ndarray]], distances: dict[str, float],
                 path: Path, text: str) -> None:  # fmt: skip
    """weights.png: trained B beside B* (one diverging colour scale), with and without the descriptor."""
    fig, axes = plt.subplots(len(pairs), 2, figsize=(7.5, 3.4 * len(pairs)), squeeze=False, layout="constrained")
    scale = max(float(np.abs(np.concatenate([m.ravel() for pair in pairs.values() for m in pair])).max()), 1e-12)
    image = None
    for row, (given, pair) in enumerate(pairs.items()):
        for col, (matrix, what) in enumerate(zip(pair, ("trained B", "B* (theory)"), strict=True)):
            ax = axes[row][col]
            image = ax.imshow(matrix, cmap="RdBu_r", vmin=-scale, vmax=scale)
            names = [f"x{i + 1}" for i in range(size.d)] + [f"μ{i + 1}" for i in range(matrix.shape[0] - size.d)]
            ax.set_xticks(range(len(names)), names, fontsize=6, rotation=90)
            ax.set_yticks(range(len(names)), names, fontsize=6)
            ax.set_title(f"{what}, {given} μ" + (f" (‖B − B*‖/‖B*‖ = {distances[given]:.1%})" if col == 0 else ""),
                         fontsize=8)  # fmt: skip
    fig.colorbar(image, ax=axes, shrink=0.6, label="entry of B (ŷ = h_fᵀ B f_q, f = (x, μ))")
    caption(fig, text)
    save_figure(fig, path)


def plot_depth(size: Size, results: pd.DataFrame, gaps: pd.DataFrame, path: Path, text: str) -> None:
    """depth.png: one panel per d (loss vs layers with and without, 95 % intervals, the one-layer optima
    dashed) and a last panel with the relative gap vs layers, a line per d."""
    dims = sorted(gaps["d"].unique())
    fig, axes = plt.subplots(1, len(dims) + 1, figsize=(3.6 * (len(dims) + 1), 3.8), squeeze=False)
    for ax, d in zip(axes[0], dims, strict=False):
        deep = results[(results.d == d) & (results.n_means == 0) & (results.n == size.n_per_d * d)]
        for i, given in enumerate((WITH, WITHOUT)):
            rows = deep[deep.given == given].groupby("layers")[["loss", "loss_low", "loss_high",
                                                                 "optimal_loss_1layer"]].mean()  # fmt: skip
            spread = [rows["loss"] - rows["loss_low"], rows["loss_high"] - rows["loss"]]
            ax.errorbar(rows.index, rows["loss"], yerr=spread, color=f"C{i}", marker="o", capsize=3,
                        label=f"trained, {given} μ")  # fmt: skip
            ax.axhline(rows["optimal_loss_1layer"].iloc[0], color=f"C{i}", linestyle="--", linewidth=0.8,
                       label=f"one-layer L*, {given} μ")  # fmt: skip
        ax.set_xticks(list(size.depths))
        ax.set_xlabel("layers")
        ax.set_ylabel("query loss (fresh prompts)")
        ax.set_title(f"d = {d}, n = {size.n_per_d * d}", fontsize=9)
        ax.grid(alpha=0.3)
    ax = axes[0][-1]
    for d, group in gaps.groupby("d"):
        ax.plot(group["layers"], 100 * group["relative_gap"], marker="o", label=f"d = {d}")
    ax.set_xticks(list(size.depths))
    ax.set_xlabel("layers")
    ax.set_ylabel("(without − with) / without, %")
    ax.set_title("relative gap vs depth", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, bbox_to_anchor=(0.5, 0.0))
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    caption(fig, text)
    save_figure(fig, path)


def plot_onehot(size: Size, results: pd.DataFrame, path: Path, text: str) -> None:
    """onehot.png: one-layer exact loss with the one-hot task id vs without, per K, beside L*."""
    table = results[results.n_means > 0].groupby(["n_means", "given"])[["exact_loss", "optimal_loss_1layer"]].mean()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    x = np.arange(len(size.n_means))
    for i, given in enumerate((WITH, WITHOUT)):
        part = table.xs(given, level="given").reindex(list(size.n_means))
        ax.bar(x + (i - 0.5) * 0.35, part["exact_loss"], 0.35, color=f"C{i}",
               label=f"trained, {'one-hot id' if given == WITH else 'no descriptor'}")  # fmt: skip
        ax.scatter(x + (i - 0.5) * 0.35, part["optimal_loss_1layer"], marker="_", s=400, color="k", zorder=3,
                   label="L* (theory)" if i == 0 else None)  # fmt: skip
    ax.set_xticks(x, [f"K = {k}" for k in size.n_means])
    ax.set_ylabel("exact query loss of the trained weights")
    ax.set_title(f"one-hot task descriptors over K fixed means (one layer, d = {size.d}, n = {size.n})")
    ax.grid(alpha=0.3, axis="y")
    outside_legend(ax)
    fig.tight_layout()
    caption(fig, text)
    save_figure(fig, path)


def analyse(out: Path, size_name: str, run_dirs: dict[str, Path], device: str, progress: bool) -> dict:
    """Measure every run, integrate the flows, check the claims; write results.csv, flow.csv, gaps.csv,
    claims.csv, figures/ and report.md into ``out``."""
    size = SIZES[size_name]
    results, comparisons = measure(size, run_dirs, device)
    flow_table, curves = flows(size)
    gaps = gap_table(size, results)
    found = claims(size, results, flow_table)
    table = claims_frame(found)
    seen = observations(size, gaps)
    for name, frame in (("results.csv", results), ("flow.csv", flow_table), ("gaps.csv", gaps),
                        ("claims.csv", table), ("observations.csv", seen)):  # fmt: skip
        atomic_write_text(out / name, frame.to_csv(index=False))
    setting = (f"x ~ N(μ, I), μ ~ N(0, {size.tau:g}² I) per prompt (or one of K fixed means), w ~ N(0, I), y = wᵀx; "
               "sparse LSA (the paper's model), balanced init, Adam, clipping 1.0")  # fmt: skip
    text = recipe_caption("task_descriptors", size_name, out, size, setting)
    figures = out / "figures"
    plot_loss_vs_n(size, results, figures / "loss_vs_n.png", text)
    plot_flows(curves, size.flow_tolerance, figures / "flow.png", text)
    pairs, distances = {}, {}
    for desc, given in (("mean", WITH), ("none", WITHOUT)):
        comparison = comparisons[Run(size.d, size.n, 1, desc, 0, 0).run_id]
        pairs[given], distances[given] = (comparison.weights, comparison.optimum), comparison.distance
    plot_weights(size, pairs, distances, figures / "weights.png", text)
    plot_depth(size, results, gaps, figures / "depth.png", text)
    plot_onehot(size, results, figures / "onehot.png", text)
    tables = {"The with/without gap vs depth and d (the paper's shapes, reported as measured)": seen,
              "Gap per d and depth (losses on fresh prompts)": gaps,
              "Gradient flow from the balanced initialisation": flow_table,
              "Every run": results.drop(columns=["given"])}  # fmt: skip
    report = claims_report("Huang & Ge: task descriptors in one-layer and deeper LSAs", size_name, size, setting,
                           found, tables)  # fmt: skip
    atomic_write_text(out / "report.md", report)
    return {"results": results, "claims": table, "gaps": gaps, "flow": flow_table, "checks": claim_checks(found)}


RECIPE = Recipe(
    name="task_descriptors",
    paper="Huang & Ge, ICLR 2025",
    claim="a task descriptor (μ or a one-hot id) helps a one-layer LSA, which reaches the exact optimum from the "
    "balanced init; deeper models do better",
    plan=plan,
    analyse=analyse,
    sizes=tuple(SIZES),
)

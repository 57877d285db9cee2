"""Nath et al. (2024): softmax transformers represent smooth functions piecewise-constantly; the sharper the
softmax, the flatter and more abrupt its steps.

In context, one softmax attention layer predicts ŷ(x_q) = −v Σ_i softmax_i(x_iᵀ A x_q) y_i, a convex combination
of the context labels: as ‖A‖ grows it tends to the nearest context point's label, constant on each Voronoi cell
of the context (hardmax attention, the mechanism of Nath et al.'s piecewise-constant approximations). Kernel
attention with exp (the same scores, not normalised) or linear scores (ŷ linear in x_q) has no such limit.

Setting (our choices, stated in the report): x uniform on the circle (d = 2, so a great-circle sweep of the query
passes every context point), n = 16 context points, noise-free GP labels with the exp kernel exp(xᵀx'/s),
s = 0.1 (a smooth, analytic function whose length scale √s ≈ 0.32 is about the spacing 2π/16 ≈ 0.39 of the
context points); one layer, sparse form (scores from x only, value label → label), Adam with gradient clipping
1.0. The softmax model is trained for several step counts (training sharpens it); the controls, exp and linear
attention, as long as the longest. On the same prompts and the same great circles (:mod:`iclab.probe.piecewise`,
400 points each) every model's ŷ(t) and the Bayes predictor's (the GP posterior mean, smooth) are compared by the
plateau share: the fraction of steps t_i → t_{i+1} inside plateaus, runs of ≥ 3 steps with |Δŷ| < 0.1 × the
curve's own mean |Δŷ| (scale-free: any predictor linear in x_q, a sinusoid along a great circle, has about 4 %).
The temperature is then varied through the weights: the trained softmax's W_KQ × β for β on a grid, which
scales every score by β. Intervals are percentile bootstraps over the swept prompts (pooled over seeds).

Earlier measurements (docs/results.md) found trained softmax models smooth on the functional-GD task (d = 5,
n = 8, s = 1): there the loss-optimal temperature is low. On this task it is high, so training itself sharpens
the softmax towards piecewise constancy, and the temperature grid shows the same share rising on both.

Time on this machine (2 cores): quick about 15 s (36 s with another job on the cores); full 5.8 min measured
(15 runs, 4.9 min of training; 100 sweeps per seed, model and temperature): docs/results/nath.md.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from iclab.config import parse_config
from iclab.evaluate import loss_statistics, per_prompt_loss
from iclab.experiments.grid import claims_report, load_finished, training_overrides
from iclab.experiments.recipe import Claim, Recipe, RunSpec, claim_checks, claims_frame
from iclab.learners import from_model
from iclab.models import InContextModel
from iclab.plots import caption, outside_legend, recipe_caption, save_figure
from iclab.probe.piecewise import Sweep, summarise, sweep_queries
from iclab.rundir import atomic_write_text
from iclab.seeding import make_generator
from iclab.tasks import make_task

SOFTMAX = "softmax"
CURVES_SAVED = 3  # sweeps per (model, β) of seed 0 written to curves.csv and drawn
PAPER = "Nath et al. 2024"


@dataclass(frozen=True)
class Size:
    """One size of the experiment: the softmax model trained for each of ``softmax_steps`` (the last is the main
    model, whose W_KQ is scaled by each of ``betas``), the ``controls`` trained as long, ``seeds`` of each."""

    softmax_steps: tuple[int, ...]
    controls: tuple[str, ...]
    betas: tuple[float, ...]
    seeds: int
    batch_size: int
    sweeps: int  # swept prompts per seed (one great circle each)
    eval_prompts: int  # prompts per seed for the query loss
    d: int = 2
    n: int = 16
    kernel_scale: float = 0.1
    lr: float = 0.3
    points: int = 400  # positions per sweep
    flat_tol: float = 0.1  # a step is flat when |Δŷ| < flat_tol × the curve's mean |Δŷ|
    min_ratio: float = 2.0  # piecewise constant: plateau share ≥ min_ratio × the Bayes reference's
    sharp_share: float = 0.5  # "almost everywhere": plateau share at the largest β above this
    loss_ratio: float = 1.5  # softmax's loss ≥ loss_ratio × the Bayes loss at every temperature

    @property
    def steps(self) -> int:
        """Training steps of the main softmax model and of the controls."""
        return max(self.softmax_steps)


FULL = Size(softmax_steps=(250, 1000, 4000), controls=("exp", "linear"), betas=(1, 2, 4, 8, 16, 32, 64), seeds=3,
            batch_size=256, sweeps=100, eval_prompts=10000)  # fmt: skip
QUICK = Size(softmax_steps=(100, 400), controls=("exp",), betas=(1, 2, 4, 8, 16), seeds=1, batch_size=128, sweeps=20,
             eval_prompts=2000)  # fmt: skip
SIZES = {"quick": QUICK, "full": FULL}


def task_overrides(size: Size) -> list[str]:
    return ["task.name=gp", "task.kernel=exp", f"task.kernel_scale={size.kernel_scale:g}", "task.x_dist=sphere",
            f"task.d={size.d}", f"task.n={size.n}"]  # fmt: skip


def run_id(activation: str, steps: int, seed: int) -> str:
    return f"{activation}_steps{steps}_s{seed}"


def trained(size: Size) -> list[tuple[str, int]]:
    """(activation, steps) of every trained model: the softmax at each step count, then the controls."""
    return [(SOFTMAX, steps) for steps in size.softmax_steps] + [(control, size.steps) for control in size.controls]


def plan(size_name: str) -> list[RunSpec]:
    """One run per trained model and seed."""
    size = SIZES[size_name]
    return [
        RunSpec(
            run_id(activation, steps, seed),
            (
                f"seed={seed}",
                *task_overrides(size),
                "model.name=kernel_attention",
                f"model.activation={activation}",
                "model.param=sparse",
                *training_overrides(steps, size.batch_size, size.lr),
            ),
        )
        for seed in range(size.seeds)
        for activation, steps in trained(size)
    ]


def sharpened(model: InContextModel, beta: float) -> InContextModel:
    """A float64 copy of a one-layer sparse model with W_KQ × ``beta``: every score x_iᵀ A x_q times β (for
    softmax, temperature 1/β)."""
    copied = copy.deepcopy(model).double()
    with torch.no_grad():
        copied.blocks[0].attn.kq_block.mul_(beta)
    return copied


def kq_norm(model: InContextModel) -> float:
    """‖W_KQ‖_F of the first layer."""
    return float(model.blocks[0].attn.kq_block.detach().norm())


def betas_of(size: Size, activation: str, steps: int) -> tuple[float, ...]:
    """The temperature grid for the main softmax model, β = 1 for every other model."""
    return size.betas if (activation, steps) == (SOFTMAX, size.steps) else (1.0,)


def measure(size: Size, models: dict[str, InContextModel]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Sweep every model (at each of its temperatures) and the Bayes predictor along the same great circles.

    Returns ``results`` (one row per model and β, pooled over seeds: plateau shares of the model, of the Bayes
    reference on the same lines and their paired difference, each with a 95 % bootstrap interval over the
    swept prompts; plateau counts; TV ratio; ‖W_KQ‖_F; query loss / zero-predictor loss with its interval, and
    the Bayes loss), ``per_sweep`` (one row per model, β, seed and sweep) and ``curves`` (ŷ(t) of the model and
    the reference for the first CURVES_SAVED sweeps of seed 0)."""
    shares, losses, norms = defaultdict(list), defaultdict(list), defaultdict(list)
    rows, curves = [], []
    for seed in range(size.seeds):
        task = make_task(parse_config({}, task_overrides(size)).task)
        prompts = task.sample(size.eval_prompts, make_generator(seed, "nath-test"), dtype=torch.float64)
        reference = task.reference_learner()
        zero = float((prompts.yq.double() ** 2).mean())
        bayes_loss = per_prompt_loss(reference, prompts) / zero  # (eval_prompts,)
        for activation, steps in trained(size):
            model = models[run_id(activation, steps, seed)]
            for beta in betas_of(size, activation, steps):
                key = (activation, steps, float(beta))
                learner = from_model(sharpened(model, beta))
                lines = make_generator(seed, "nath-lines")  # the same great circles for every model
                sweeps = sweep_queries(learner, reference, prompts, sphere=True, generator=lines, count=size.sweeps,
                                       points=size.points)  # fmt: skip
                for index, sweep in enumerate(sweeps):
                    stats = summarise([sweep], size.flat_tol)
                    shares[key].append((stats["flat_fraction_model"], stats["flat_fraction_reference"]))
                    rows.append({"model": activation, "steps": steps, "beta": float(beta), "seed": seed,
                                 "sweep": index, **stats})  # fmt: skip
                    if seed == 0 and index < CURVES_SAVED:
                        curves.append(_curve_frame(sweep, activation, steps, float(beta), index))
                loss = per_prompt_loss(learner, prompts) / zero
                losses[key].append(torch.stack([loss, bayes_loss, loss - bayes_loss], dim=1))  # paired, same prompts
                norms[key].append(beta * kq_norm(model))
    results = []
    for (activation, steps, beta), pairs in shares.items():
        paired = torch.tensor(pairs, dtype=torch.float64)  # (sweeps, 2): model, reference
        mean, _, low, high, _ = loss_statistics(torch.cat([paired, paired[:, :1] - paired[:, 1:]], dim=1))
        loss, _, loss_low, loss_high, _ = loss_statistics(torch.cat(losses[key]))  # (3,) each
        key = (activation, steps, beta)
        group = [r for r in rows if (r["model"], r["steps"], r["beta"]) == key]
        results.append({
            "model": activation, "steps": steps, "beta": beta, "kq_norm": float(np.mean(norms[key])),
            "plateau_share": float(mean[0]), "plateau_share_low": float(low[0]), "plateau_share_high": float(high[0]),
            "bayes_share": float(mean[1]), "bayes_share_low": float(low[1]), "bayes_share_high": float(high[1]),
            "excess": float(mean[2]), "excess_low": float(low[2]), "excess_high": float(high[2]),
            "plateaus": float(np.mean([r["plateaus_model"] for r in group])),
            "bayes_plateaus": float(np.mean([r["plateaus_reference"] for r in group])),
            "tv_ratio": float(np.mean([r["tv_ratio"] for r in group])),
            "loss": float(loss[0]), "loss_low": float(loss_low[0]), "loss_high": float(loss_high[0]),
            "bayes_loss": float(loss[1]), "bayes_loss_low": float(loss_low[1]), "bayes_loss_high": float(loss_high[1]),
            "loss_excess": float(loss[2]), "loss_excess_low": float(loss_low[2]),
            "loss_excess_high": float(loss_high[2]), "sweeps": len(pairs),
        })  # fmt: skip
    return pd.DataFrame(results), pd.DataFrame(rows), pd.concat(curves, ignore_index=True)


def _curve_frame(sweep: Sweep, activation: str, steps: int, beta: float, index: int) -> pd.DataFrame:
    return pd.DataFrame({"model": activation, "steps": steps, "beta": beta, "sweep": index, "t": sweep.t,
                         "prediction": sweep.model, "reference": sweep.reference})  # fmt: skip


def _share(row: pd.Series) -> str:
    return f"{row.plateau_share:.1%} [{row.plateau_share_low:.1%}, {row.plateau_share_high:.1%}]"


def _bayes_share(row: pd.Series) -> str:
    return f"{row.bayes_share:.1%} [{row.bayes_share_low:.1%}, {row.bayes_share_high:.1%}]"


def claims(size: Size, results: pd.DataFrame) -> list[Claim]:
    """The claims as iclab measures them (each with its tolerance)."""
    softmax = results[results.model == SOFTMAX]
    scaled = softmax[softmax.steps == size.steps].sort_values("beta")
    main = scaled.iloc[0]  # β = 1: the trained softmax
    found = [Claim(
        f"trained softmax attention ({size.steps} steps) has plateaus well beyond the smooth Bayes predictor's",
        f"{PAPER}: softmax transformers approximate smooth functions by piecewise-constant ones",
        f"plateau share {_share(main)} vs the Bayes predictor's {_bayes_share(main)} on the same lines "
        f"(paired excess {main.excess:+.1%} [{main.excess_low:+.1%}, {main.excess_high:+.1%}]; {main.plateaus:.2g} vs "
        f"{main.bayes_plateaus:.2g} plateaus per sweep)",
        f"excess interval above 0 and share ≥ {size.min_ratio:g}× the reference's",
        bool(main.excess_low > 0 and main.plateau_share >= size.min_ratio * main.bayes_share))]  # fmt: skip
    for control in size.controls:
        row = results[(results.model == control) & (results.steps == size.steps)].iloc[0]
        found.append(Claim(
            f"the smooth control, {control} attention trained alike, is not piecewise constant",
            f"{PAPER}: the steps come from softmax (hardmax-like) attention",
            f"plateau share {_share(row)} (Bayes {_bayes_share(row)}) vs softmax's {_share(main)}",
            "its interval below softmax's interval",
            bool(row.plateau_share_high < main.plateau_share_low)))  # fmt: skip
    shares = scaled["plateau_share"].to_numpy()
    found.append(Claim(
        "the sharper the softmax (W_KQ × β), the larger the plateau share",
        f"{PAPER}: hardmax-like attention gives piecewise-constant outputs",
        " → ".join(f"β={r.beta:g}: {r.plateau_share:.1%}" for r in scaled.itertuples()),
        "increasing at every β of the grid", bool((np.diff(shares) > 0).all())))  # fmt: skip
    sharpest = scaled.iloc[-1]
    found.append(Claim(
        f"at β = {sharpest.beta:g} the softmax's prediction is flat almost everywhere (a staircase)",
        f"{PAPER}: piecewise-constant with sizable intervals",
        f"plateau share {_share(sharpest)}, {sharpest.plateaus:.2g} plateaus per sweep "
        f"(Bayes {_bayes_share(sharpest)})",
        f"share > {size.sharp_share:.0%}", bool(sharpest.plateau_share > size.sharp_share)))  # fmt: skip
    if len(size.softmax_steps) > 1:
        by_steps = softmax[softmax.beta == 1].sort_values("steps")
        sharper = (np.diff(by_steps["kq_norm"]) > 0).all() and (np.diff(by_steps["plateau_share"]) > 0).all()
        found.append(Claim(
            "training longer sharpens the softmax and adds plateaus",
            f"{PAPER}: trained softmax transformers fall back on piecewise-constant approximations",
            " → ".join(f"{r.steps} steps: ‖W_KQ‖ {r.kq_norm:.3g}, share {r.plateau_share:.1%}"
                       for r in by_steps.itertuples()),
            "‖W_KQ‖_F and plateau share increase with the steps",
            bool(sharper)))  # fmt: skip
    best = scaled.loc[scaled["loss"].idxmin()]
    above = (scaled["loss"] >= size.loss_ratio * scaled["bayes_loss"]).all() and (scaled["loss_excess_low"] > 0).all()
    found.append(Claim(
        "no temperature makes one softmax layer reach the Bayes loss (the steps cost accuracy)",
        f"{PAPER}: transformers are not expressive enough for regression of smooth functions",
        f"best loss over β: {best.loss:.3g} [{best.loss_low:.3g}, {best.loss_high:.3g}] at β = {best.beta:g} vs Bayes "
        f"{best.bayes_loss:.3g} [{best.bayes_loss_low:.3g}, {best.bayes_loss_high:.3g}] on the same prompts (÷ the "
        f"zero predictor's; paired excess {best.loss_excess:+.3g} [{best.loss_excess_low:+.3g}, "
        f"{best.loss_excess_high:+.3g}])",
        f"≥ {size.loss_ratio:g}× the Bayes loss and the paired excess's interval above 0, at every β",
        bool(above)))  # fmt: skip
    return found


def _label(activation: str, steps: int, beta: float = 1.0) -> str:
    scale = "" if beta == 1 else f", W_KQ × {beta:g}"
    return f"{activation} attention ({steps} steps{scale})"


def plot_sweeps(size: Size, curves: pd.DataFrame, path: Path, caption_text: str) -> None:
    """sweeps.png: ŷ(t) along the first CURVES_SAVED great circles of seed 0: the Bayes predictor, the trained
    softmax, the sharpest softmax and the controls (legend right of the last panel)."""
    shown = [(SOFTMAX, size.steps, 1.0), (SOFTMAX, size.steps, float(max(size.betas)))]
    shown += [(control, size.steps, 1.0) for control in size.controls]
    fig, axes = plt.subplots(1, CURVES_SAVED, figsize=(4.4 * CURVES_SAVED, 3.6), squeeze=False)
    for index, ax in enumerate(axes[0]):
        prompt = curves[curves.sweep == index]
        first = prompt[(prompt.model == SOFTMAX) & (prompt.beta == 1) & (prompt.steps == size.steps)]
        ax.plot(first.t, first.reference, color="gray", ls="--", lw=2, label="Bayes (GP posterior mean)")
        for k, (activation, steps, beta) in enumerate(shown):
            curve = prompt[(prompt.model == activation) & (prompt.steps == steps) & (prompt.beta == beta)]
            ax.plot(curve.t, curve.prediction, color=f"C{k}", lw=1.2, label=_label(activation, steps, beta))
        ax.set_xlabel("angle t along the great circle (rad)")
        ax.set_title(f"prompt {index}")
    axes[0][0].set_ylabel("prediction ŷ(x(t))")
    outside_legend(axes[0][-1], *axes[0][0].get_legend_handles_labels())
    caption(fig, caption_text)
    save_figure(fig, path)


def plot_sharpness(size: Size, results: pd.DataFrame, path: Path, caption_text: str) -> None:
    """sharpness.png: plateau share (left) and query loss (right) against ‖W_KQ‖_F: the main softmax with W_KQ
    scaled by β (line, 95 % band), the softmax after fewer steps and the controls (points with 95 % bars), the
    Bayes predictor (dotted)."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8))
    scaled = results[(results.model == SOFTMAX) & (results.steps == size.steps)].sort_values("beta")
    for ax, column, title in ((axes[0], "plateau_share", "plateau share along great circles"),
                              (axes[1], "loss", "query loss / zero-predictor loss")):  # fmt: skip
        ax.plot(scaled.kq_norm, scaled[column], "o-", color="C0", label=f"softmax ({size.steps} steps), W_KQ × β")
        ax.fill_between(scaled.kq_norm, scaled[f"{column}_low"], scaled[f"{column}_high"], color="C0", alpha=0.2)
        for r in scaled.itertuples():
            ax.annotate(f"β={r.beta:g}", (r.kq_norm, getattr(r, column)), textcoords="offset points", xytext=(3, 5),
                        fontsize=7)  # fmt: skip
        others = results[(results.beta == 1) & ~((results.model == SOFTMAX) & (results.steps == size.steps))]
        for k, r in enumerate(others.itertuples(), start=1):
            value, low, high = getattr(r, column), getattr(r, f"{column}_low"), getattr(r, f"{column}_high")
            ax.errorbar([r.kq_norm], [value], yerr=[[value - low], [high - value]], fmt="s", color=f"C{k}",
                        capsize=3, label=_label(r.model, r.steps))  # fmt: skip
        bayes = "bayes_share" if column == "plateau_share" else "bayes_loss"
        ax.axhline(scaled[bayes].mean(), color="gray", ls=":", label="Bayes (GP posterior mean)")
        ax.set_xscale("log")
        ax.set_xlabel("‖W_KQ‖_F (sharpness of the scores)")
        ax.set_title(title)
    axes[0].set_ylabel("fraction of steps inside plateaus")
    axes[0].set_ylim(0, 1)
    outside_legend(axes[1], *axes[0].get_legend_handles_labels())
    caption(fig, caption_text)
    save_figure(fig, path)


def analyse(out: Path, size_name: str, runs: dict[str, Path], device: str, progress: bool) -> dict:
    """Sweep the trained models; write results.csv, sweeps.csv, curves.csv, claims.csv, figures/sweeps.png,
    figures/sharpness.png and report.md into ``out``."""
    size = SIZES[size_name]
    models = {key: model.double() for key, model in load_finished(runs, device).items()}
    results, per_sweep, curves = measure(size, models)
    found = claims(size, results)
    table = claims_frame(found)
    atomic_write_text(out / "results.csv", results.to_csv(index=False))
    atomic_write_text(out / "sweeps.csv", per_sweep.to_csv(index=False))
    atomic_write_text(out / "curves.csv", curves.to_csv(index=False))
    atomic_write_text(out / "claims.csv", table.to_csv(index=False))
    setting = (f"x uniform on the circle (d = {size.d}), n = {size.n}, noise-free GP labels, exp kernel "
               f"exp(xᵀx'/{size.kernel_scale:g}); one-layer kernel attention, sparse form; plateau: ≥ 3 steps with "
               f"|Δŷ| < {size.flat_tol:g} × the curve's mean |Δŷ|; reference: the GP posterior mean on the same "
               "lines")  # fmt: skip
    text = recipe_caption("nath", size_name, out, size, setting)
    plot_sweeps(size, curves, out / "figures" / "sweeps.png", text)
    plot_sharpness(size, results, out / "figures" / "sharpness.png", text)
    shown = results[["model", "steps", "beta", "kq_norm", "plateau_share", "plateau_share_low", "plateau_share_high",
                     "bayes_share", "excess_low", "plateaus", "bayes_plateaus", "tv_ratio", "loss",
                     "bayes_loss"]]  # fmt: skip
    tables = {"Plateau share and loss per model and temperature (pooled over seeds)": shown}
    report = claims_report("Nath et al. reproduction", size_name, size, setting, found, tables)
    atomic_write_text(out / "report.md", report)
    return {"results": results, "claims": table, "checks": claim_checks(found)}


RECIPE = Recipe(
    name="nath",
    paper="Nath et al. 2024",
    claim="softmax attention represents smooth functions piecewise-constantly; the sharper, the more plateaus",
    plan=plan,
    analyse=analyse,
    sizes=tuple(SIZES),
)

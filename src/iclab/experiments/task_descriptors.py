"""Huang & Ge (ICLR 2025): a task descriptor (the mean μ of x, or a one-hot task id) helps a one-layer LSA, which
reaches the exact optimum from the balanced initialisation; deeper models do better still.

Setting (PAPERS.md; the paper's n, τ and losses are not available, so these are chosen and stated): x ~ N(μ, I),
μ ~ N(0, τ² I) per prompt (or one of K fixed means with its one-hot index as descriptor), w ~ N(0, I),
y = wᵀx (noise-free); the descriptor s is appended to every token, (x_i, y_i, s) and (x_q, 0, s). Models: LSAs
in the sparse form (W_KQ on the features (x, s), W_PV on the label: the paper's model), balanced
initialisation, Adam with gradient clipping, fresh prompts every step. Deep sparse LSAs update only the labels
(the x tokens stay as given); whether that handicaps the model without the descriptor is issue 23's question.

Claims, each with its controls:

- **One layer, finite n (Thm 4.1)**: the exact loss of the trained weights is L*(n) and the trained B is B*,
  with and without the descriptor; controls B* × 0.95, the other descriptor setting's optimum (with μ: the
  descriptor-free optimum, μ unused) and the n → ∞ optimum of Thm 3.1 (without the 11 and 21 blocks); the
  tolerance is half the distance (or excess loss) of the nearest.
- **The descriptor is used (Fig. 2; App. B.5 for one-hot ids)**: the trained one-layer model with the descriptor
  beats the best descriptor-free one-layer LSA (L*_without) on the same fresh prompts (paired 95 % interval of
  the difference below 0). That the optimum with μ is at most the one without is a tautology (the family with μ
  contains the one without), so the optimum's strict advantage is not a reproduction.
- **n → ∞ (Thm 3.1)** and **gradient flow from the balanced init (Thm 3.1, 4.1, Lemma 3.3)**: theory checks,
  controlled by the descriptor-free limit and by the flow from the zero init (a stationary point).
- **Depth (Fig. 2)**: at every d, L trained layers beat the best one-layer LSA (its exact optimum, on the same
  prompts: beating the trained one layer is no test, untrained 2-layer models beat untrained one-layer ones);
  the with/without gap of the trained models narrows from 1 to 2 layers (the paired difference of the two gaps
  above 0); the gap widens with d (App. B.2, Table 1). All on shared prompts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from iclab.evaluate import loss_statistics, per_prompt_loss
from iclab.experiments.claims import (
    NO_DIFFERENCE,
    REPRODUCTION,
    THEORY,
    Claim,
    ClaimResult,
    Criterion,
    Estimate,
    above,
    below,
    interval_above,
    interval_below,
    mean_interval,
    reading,
    shrinks,
    trend,
    untested,
)
from iclab.experiments.grid import RunSpec
from iclab.experiments.recipe import Context, Recipe, register_recipe
from iclab.learners import from_model
from iclab.plots import caption, outside_legend, readable_log_axis, save_figure
from iclab.rundir import atomic_write_text
from iclab.runs import load_model
from iclab.seeding import make_generator
from iclab.tasks import make_task
from iclab.theory.compare import compare_with_theory
from iclab.theory.descriptors import descriptor_problem, task_problem
from iclab.theory.gradient_flow import gradient_flow, initial_weights
from iclab.theory.lsa_weights import lsa_from_bilinear
from iclab.theory.quadratic import ROUNDING, QuadraticLoss, snap_zero

WITH, WITHOUT = "with", "without"
SCALED = 0.95  # the perturbed-optimum control: B* × 0.95
PAPER = "Huang & Ge"


@dataclass(frozen=True)
class Size:
    """One size of the experiment (every run: sparse LSA, balanced init, Adam with clipping 1.0)."""

    d: int  # the main setting's dimension (loss vs n, one-hot)
    n: int  # its context length (weights, one-hot, depth at d)
    n_grid: tuple[int, ...]  # one-layer runs with and without the descriptor at these n
    depths: tuple[int, ...]  # layers of the depth study
    dims: tuple[int, ...]  # d of the depth study, each at n = n_per_d·d (the first one is d, at n)
    n_means: tuple[int, ...]  # K of the one-hot study
    steps: int  # one-layer runs
    deep_steps: int  # runs with two or more layers
    batch_size: int  # prompts per step at d (at d' > d: batch_size·(d/d')², at least 512)
    deep_batch_size: int | None = None  # the same for runs with two or more layers (None: batch_size)
    onehot_steps: int | None = None  # the one-hot study's runs (one layer; None: steps)
    onehot_batch_size: int | None = None  # and their prompts per step (None: batch_size)
    tau: float = 1.0
    lr: float = 0.03  # one-layer runs (cosine decay)
    deep_lr: float = 0.01  # runs with two or more layers
    eval_prompts: int = 20_000  # fresh prompts per group of models sharing them
    flow_t_max: float = 1e4
    flow_tolerance: float = 1e-8  # flow's L(θ(T)) − L* below this (the ODE solver's tolerances)

    @property
    def n_per_d(self) -> int:
        return self.n // self.d


FULL = Size(d=5, n=20, n_grid=(5, 10, 20, 40, 80), depths=(1, 2, 3), dims=(5, 10, 20), n_means=(4, 16), steps=1500,
            deep_steps=2000, batch_size=4096)  # fmt: skip
# quick: 2000 steps of 4096 prompts put the trained B within 0.8-1.7 % of B* (seeds 0-2; 1500 steps of 2048: 1.6-2.5 %,
# at the 2.5 % tolerance set by the B* × 0.95 control). The 2-layer models train 3000 steps of 1024: after 1000 steps
# of 2048 they were still far apart from seed to seed, and the with/without gap narrowed (+0.08 to +0.10, intervals
# above 0 on 131 072 prompts) at seeds 7-9 and not at seeds 1-2, a verdict that flipped with the seeds; trained
# 3000 steps the narrowing is −0.08 to +0.01 at seeds 0-2 and 7-9, every interval across 0.
QUICK = Size(d=3, n=12, n_grid=(12,), depths=(1, 2), dims=(3,), n_means=(4,), steps=2000, deep_steps=3000,
             batch_size=4096, deep_batch_size=1024, onehot_steps=1000, onehot_batch_size=2048,
             eval_prompts=8192)  # fmt: skip
SIZES = {"quick": QUICK, "full": FULL}


@dataclass(frozen=True)
class Run:
    """One planned run: d, n, layers, descriptor ("mean", "onehot" or "none"), K fixed means (0: Gaussian μ)."""

    d: int
    n: int
    layers: int
    descriptor: str
    n_means: int

    @property
    def run_id(self) -> str:
        means = f"_K{self.n_means}" if self.n_means else ""
        return f"d{self.d}_n{self.n}_L{self.layers}_{self.descriptor}{means}"

    @property
    def given(self) -> str:
        return WITHOUT if self.descriptor == "none" else WITH

    @property
    def group(self) -> tuple[int, int, int]:
        """The runs evaluated on the same prompts: same d, n and means."""
        return self.d, self.n, self.n_means


def runs(size: Size) -> list[Run]:
    """Every run of one seed, each once (the loss-vs-n, depth and one-hot studies share runs)."""
    planned: list[Run] = []
    for desc in ("mean", "none"):
        planned += [Run(size.d, n, 1, desc, 0) for n in size.n_grid]
        for d in size.dims:
            planned += [Run(d, size.n_per_d * d, layers, desc, 0) for layers in size.depths]
    for k in size.n_means:
        planned += [Run(size.d, size.n, 1, desc, k) for desc in ("onehot", "none")]
    return list(dict.fromkeys(planned))


def overrides(size: Size, run: Run) -> tuple[str, ...]:
    base, steps = size.batch_size, size.steps
    if run.layers > 1:
        base, steps = size.deep_batch_size or base, size.deep_steps
    elif run.n_means:
        base, steps = size.onehot_batch_size or base, size.onehot_steps or steps
    batch = max(base * size.d**2 // run.d**2, 512)  # a step's cost grows as d²·n ∝ d³
    task = [f"task.d={run.d}", f"task.n={run.n}", f"task.x_mean_std={size.tau:g}", f"task.descriptor={run.descriptor}"]
    if run.n_means:
        task.append(f"task.n_means={run.n_means}")
    return (
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


def plan(size: Size) -> list[RunSpec]:
    return [RunSpec(run.run_id, overrides(size, run)) for run in runs(size)]


@cache
def problem(d: int, n: float, descriptor: str, tau: float) -> QuadraticLoss:
    """The exact one-layer loss over B with Gaussian μ (no fixed means): independent of the seed."""
    return descriptor_problem(n, d, descriptor=descriptor, tau=tau)


def embedded(b: np.ndarray, features: int) -> np.ndarray:
    """B (F', F') of a descriptor-free predictor inside an (F, F) one: the descriptor's blocks zero (unused)."""
    out = np.zeros((features, features))
    out[: b.shape[0], : b.shape[1]] = b
    return out


def one_layer_controls(run: Run, tau: float) -> dict[str, np.ndarray]:
    """The wrong answers of a one-layer run with Gaussian μ: B* × 0.95, the other setting's optimum (with μ: the
    descriptor-free optimum, μ unused; without: absent) and the n → ∞ optimum (Thm 3.1)."""
    exact = problem(run.d, run.n, run.descriptor, tau)
    best, _ = exact.optimum()
    controls = {f"B* × {SCALED:g}": SCALED * best}
    if run.descriptor == "mean":
        free, _ = problem(run.d, run.n, "none", tau).optimum()
        controls["the descriptor-free optimum (μ unused)"] = embedded(free, exact.features)
    controls["B*(n = ∞) (Thm 3.1's form, no 11 and 21 blocks)"] = problem(
        run.d, math.inf, run.descriptor, tau
    ).optimum()[0]
    return controls


def tolerances(run: Run, tau: float) -> tuple[float, float]:
    """(weights, loss): half the nearest control's ‖B − B*‖/‖B*‖ and half its excess loss over L* (fraction)."""
    exact = problem(run.d, run.n, run.descriptor, tau)
    best, optimal = exact.optimum()
    controls = one_layer_controls(run, tau).values()
    return (min(exact.relative_error(c, best) for c in controls) / 2,
            min(exact.loss(c) / optimal - 1 for c in controls) / 2)  # fmt: skip


@dataclass(frozen=True)
class Measured:
    """One seed's measurements: ``runs`` (one row per run: its loss on fresh prompts with its interval, L* of the
    one-layer LSA on its task; one-layer runs: the exact loss of the trained weights, ‖B − B*‖/‖B*‖ and each
    control's), ``pairs`` (paired differences on shared prompts, with 95 % intervals, by name), ``flows`` and
    their ``curves``, and the one-layer weights beside the optimum (``weights``: {run_id: (B, B*, distance)})."""

    runs: pd.DataFrame
    pairs: dict[str, tuple[float, float, float]]
    flows: pd.DataFrame
    curves: dict
    weights: dict


def _strip(prompts, descriptor: bool):
    """The prompts as a model with or without a descriptor reads them."""
    return prompts if descriptor else dataclasses.replace(prompts, descriptor=None)


def measure_group(size: Size, group: list[Run], run_dirs: dict[str, Path], seed: int, device: str) -> tuple:
    """Every run of one group and the one-layer optima with and without the descriptor, on the same fresh prompts:
    rows of the runs table and the paired differences (uses-the-descriptor, depth, narrowing)."""
    d, n, k = group[0].group
    models = {run: load_model(run_dirs[run.run_id], device=device) for run in group}
    with_run = next(run for run in group if run.given == WITH)
    cfg = models[with_run][1]
    sampler = make_task(cfg.task, cfg.seed)
    prompts = sampler.sample_in_chunks(size.eval_prompts, make_generator(seed, f"analysis-d{d}-n{n}-K{k}"),
                                       torch.float64)  # fmt: skip
    columns = {}
    for run, (model, _, _) in models.items():
        columns[run] = per_prompt_loss(from_model(model.double()), _strip(prompts, run.given == WITH))
    optima = {}
    for descriptor in (with_run.descriptor, "none"):
        task = cfg.task.model_copy(update={"descriptor": descriptor})
        best, optimal = task_problem(task, cfg.seed).optimum()
        optima[WITH if descriptor != "none" else WITHOUT] = optimal
        columns[f"optimum {descriptor}"] = per_prompt_loss(from_model(lsa_from_bilinear(best, d)),
                                                           _strip(prompts, descriptor != "none"))  # fmt: skip
    stacked = torch.stack(list(columns.values()), dim=1)  # (B, models)
    mean, _, low, high, _ = loss_statistics(stacked, seed=seed)
    rows = []
    for i, run in enumerate(models):
        row = {**dataclasses.asdict(run), "seed": seed, "given": run.given, "run_id": run.run_id,
               "loss": float(mean[i]), "loss_low": float(low[i]), "loss_high": float(high[i]),
               "optimal_loss_1layer": optima[run.given], "exact_loss": np.nan, "gap_percent": np.nan,
               "weights_distance": np.nan, "controls": {}}  # fmt: skip
        rows.append(row)
    pairs = {}

    def pair(name: str, difference: torch.Tensor) -> None:
        pairs[name] = mean_interval(difference)

    by_key = {(run.layers, run.given): columns[run] for run in group}
    gaps = {layers: by_key[(layers, WITHOUT)] - by_key[(layers, WITH)]
            for layers, given in by_key if given == WITH and (layers, WITHOUT) in by_key}  # fmt: skip
    for (layers, given), losses in by_key.items():
        if given == WITH:
            pair(f"uses/d{d}_n{n}_K{k}_L{layers}", losses - columns["optimum none"])
        if layers > 1:
            optimum = columns[f"optimum {with_run.descriptor if given == WITH else 'none'}"]
            pair(f"depth/d{d}_n{n}_K{k}_L{layers}_{given}", losses - optimum)
    for layers, gap in gaps.items():
        pair(f"gap/d{d}_n{n}_K{k}_L{layers}", gap)
        if layers > 1 and 1 in gaps:
            pair(f"narrows/d{d}_n{n}_K{k}_L{layers}", gaps[1] - gap)
    return rows, pairs


def measure(context: Context, seed: int, run_dirs: dict[str, Path]) -> Measured:
    """Every group of runs on its shared prompts; the one-layer runs against the exact theory; the flows."""
    size = context.size
    groups: dict[tuple, list[Run]] = {}
    for run in runs(size):
        groups.setdefault(run.group, []).append(run)
    rows, pairs, weights = [], {}, {}
    for group in groups.values():
        found, paired = measure_group(size, group, run_dirs, seed, context.device)
        rows += found
        pairs |= paired
    table = pd.DataFrame(rows).set_index("run_id", drop=False)
    for run in runs(size):
        if run.layers != 1:
            continue
        model, cfg, _ = load_model(run_dirs[run.run_id], device=context.device)
        comparison = compare_with_theory(model, cfg.task, cfg.seed)
        table.at[run.run_id, "exact_loss"] = comparison.model_loss
        table.at[run.run_id, "gap_percent"] = 100 * (comparison.model_loss / comparison.optimal_loss - 1)
        table.at[run.run_id, "weights_distance"] = comparison.distance
        weights[run.run_id] = (comparison.weights, comparison.optimum, comparison.distance)
        if not run.n_means:
            exact = problem(run.d, run.n, run.descriptor, size.tau)
            best, optimal = exact.optimum()
            table.at[run.run_id, "controls"] = {
                name: (exact.relative_error(b, best), exact.loss(b) / optimal - 1)
                for name, b in one_layer_controls(run, size.tau).items()}  # fmt: skip
    flow_table, curves = flows(size, seed)
    return Measured(table, pairs, flow_table, curves, weights)


def flows(size: Size, seed: int) -> tuple[pd.DataFrame, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Gradient flow of the exact loss from the balanced init (scale 0.1, drawn from ``seed``) and from the zero
    init (a stationary point) at n and n = ∞, with and without the mean descriptor: a table and
    ``{label: (t, L(t) − L*)}`` of the balanced flows."""
    rows, curves = [], {}
    for n in (size.n, math.inf):
        for desc in ("mean", "none"):
            exact = problem(size.d, n, desc, size.tau)
            flow = gradient_flow(exact, *initial_weights(exact.features, "balanced", 0.1, seed), t_max=size.flow_t_max)
            stuck = gradient_flow(exact, *initial_weights(exact.features, "zero"), t_max=size.flow_t_max)
            given = WITH if desc == "mean" else WITHOUT
            label = f"n = {'∞' if math.isinf(n) else n}, {given} μ"
            curves[label] = (flow.t, flow.loss - flow.optimal_loss)
            rows.append({"n": n, "given": given, "seed": seed, "initial_loss": flow.loss[0],
                         "optimal_loss": snap_zero(flow.optimal_loss, exact.c), "final_gap": flow.final_gap,
                         "zero_init_final_gap": stuck.final_gap, "t_max": size.flow_t_max})  # fmt: skip
    return pd.DataFrame(rows), curves


def _pair(name: str):
    def measure_it(data: Measured) -> Estimate:
        value, low, high = data.pairs[name]
        return Estimate(value, low, high, text=f"{value:+.4g} [{low:+.4g}, {high:+.4g}]")

    return measure_it


def claims(size: Size) -> list[Claim]:
    """The paper's claims at this size, each with its controls (see the module docstring)."""
    found: list[Claim] = []
    for run in runs(size):
        if run.layers != 1 or run.n_means or run.d != size.d:
            continue
        weights_tol, loss_tol = tolerances(run, size.tau)
        controls = one_layer_controls(run, size.tau)
        where = f"one layer, {run.given} descriptor, n = {run.n}"

        def control(index: int, name: str, run_id: str = run.run_id, text: str = "{:.3%}"):
            return reading(lambda m: m.runs.loc[run_id, "controls"][name][index], text)

        found.append(Claim(
            f"{run.run_id}/loss", f"{where}: training reaches the global minimum L*(n)",
            "from the balanced initialisation, gradient flow reaches the global minimiser (finite n)", "Thm 4.1",
            REPRODUCTION, reading(lambda m, r=run.run_id: m.runs.loc[r, "gap_percent"] / 100, "{:+.4%}"),
            below(loss_tol, f"exact loss above L* < {loss_tol:.4%} of L* (half the nearest control's excess)"),
            {name: control(1, name, text="{:+.4%}") for name in controls},
        ))  # fmt: skip
        if run.n == size.n:
            found.append(Claim(
                f"{run.run_id}/weights", f"{where}: the trained weights are the closed-form B*",
                "the minimiser's form: with μ, two more non-zero blocks of W_KQ (the 11 and 21) than at n = ∞",
                "Thm 4.1", REPRODUCTION,
                reading(lambda m, r=run.run_id: m.runs.loc[r, "weights_distance"], "{:.3%}"),
                below(weights_tol, f"‖B − B*‖/‖B*‖ < {weights_tol:.3%} (half the distance to the nearest control)"),
                {name: control(0, name) for name in controls},
            ))  # fmt: skip
        if run.given == WITH:
            found.append(Claim(
                f"uses/d{run.d}_n{run.n}", f"one layer, n = {run.n}: the trained model uses μ: it beats every "
                "descriptor-free one-layer LSA", "descriptors help (a one-layer LSA with μ does better than "
                "without)", "Fig. 2", REPRODUCTION, _pair(f"uses/d{run.d}_n{run.n}_K0_L1"),
                interval_below(0, "paired loss difference to the descriptor-free optimum L*_without on the same "
                               "prompts: 95 % interval below 0"),
                {"the descriptor-free optimum itself": lambda _: NO_DIFFERENCE},
            ))  # fmt: skip
    found.append(Claim(
        "theory/infinite-n", "n → ∞: with the descriptor the optimum is exact (zero loss)",
        "subtract μ in the keys and take one step of preconditioned GD: ŷ = wᵀx_q; without μ no fixed Γ undoes "
        "(I + μμᵀ)", "Thm 3.1", THEORY,
        reading(lambda m: m.flows[(m.flows.n == math.inf) & (m.flows.given == WITH)]["optimal_loss"].iloc[0], "{:.3g}"),
        Criterion(f"L*(∞) = 0 (to {ROUNDING:g} × E y²)", lambda e: e.value == 0),
        {"L*(∞) without the descriptor":
         reading(lambda m: m.flows[(m.flows.n == math.inf) & (m.flows.given == WITHOUT)]["optimal_loss"].iloc[0],
                 "{:.3g}")},
    ))  # fmt: skip
    if len(size.n_grid) > 1:
        ends = (size.n_grid[0], size.n_grid[-1])
        falls = {given: problem(size.d, ends[1], desc, size.tau).optimum()[1]
                 / problem(size.d, ends[0], desc, size.tau).optimum()[1]
                 for given, desc in ((WITH, "mean"), (WITHOUT, "none"))}  # fmt: skip
        midpoint = (falls[WITH] + falls[WITHOUT]) / 2

        def along_n(given: str):
            return trend(lambda m: m.runs[(m.runs.layers == 1) & (m.runs.n_means == 0) & (m.runs.d == size.d)
                                              & (m.runs.given == given)].sort_values("n")["exact_loss"])  # fmt: skip

        found.append(Claim(
            "with/falls-to-zero", "with the descriptor the trained one-layer loss falls towards 0 as n grows",
            "L*(n) → 0 as n → ∞ with μ (and stays above L*(∞) > 0 without)", "Thm 3.1, 4.1", REPRODUCTION,
            along_n(WITH), shrinks(midpoint, f"midway between L*(n)'s fall with μ, {falls[WITH]:.3g}, and without, "
                                   f"{falls[WITHOUT]:.3g}"),
            {"the trained models without the descriptor": along_n(WITHOUT)},
        ))  # fmt: skip
    else:
        found.append(untested("with/falls-to-zero", "with the descriptor the trained one-layer loss falls towards 0 "
                              "as n grows", "L*(n) → 0 as n → ∞ with μ", "Thm 3.1, 4.1", REPRODUCTION,
                              "one n at this size"))  # fmt: skip
    for n in (size.n, math.inf):
        for given in (WITH, WITHOUT):
            label = "∞" if math.isinf(n) else f"{n}"

            def flow(column: str, n: float = n, given: str = given):
                return reading(lambda m: m.flows[(m.flows.n == n) & (m.flows.given == given)][column].iloc[0], "{:.2g}")

            found.append(Claim(
                f"theory/flow-n{label}-{given}", f"gradient flow from the balanced init, n = {label}, {given} "
                "descriptor, reaches the global minimum", "from a balanced initialisation (which the flow keeps "
                "balanced, Lemma 3.3) gradient flow converges to the global minimiser", "Thm 3.1" if label == "∞"
                else "Thm 4.1", THEORY, flow("final_gap"),
                below(size.flow_tolerance, f"L(θ(T)) − L* < {size.flow_tolerance:g} at T = {size.flow_t_max:g}"),
                {"the flow from the zero init (a stationary point)": flow("zero_init_final_gap")},
            ))  # fmt: skip
    for d in size.dims:
        n = size.n_per_d * d
        for layers in size.depths[1:]:
            for given in (WITH, WITHOUT):
                found.append(Claim(
                    f"depth/d{d}_L{layers}_{given}", f"d = {d}, {given} descriptor: {layers} trained layers beat "
                    "the best one-layer LSA", "deeper models do better", "Fig. 2", REPRODUCTION,
                    _pair(f"depth/d{d}_n{n}_K0_L{layers}_{given}"),
                    interval_below(0, "paired loss difference to the one-layer optimum L* on the same prompts: 95 % "
                                   "interval below 0"),
                    {"the one-layer optimum itself": lambda _: NO_DIFFERENCE},
                ))  # fmt: skip
            if layers == 2:
                found.append(Claim(
                    f"narrows/d{d}", f"d = {d}: the with/without gap narrows from 1 to 2 layers (trained models)",
                    "the gap between models with and without descriptors narrows from 1 to 2 layers", "Fig. 2",
                    REPRODUCTION, _pair(f"narrows/d{d}_n{n}_K0_L2"),
                    interval_above(0, "(gap at 1 layer) − (gap at 2 layers), paired on the same prompts: 95 % "
                                   "interval above 0"),
                    {"an unchanged gap": lambda _: NO_DIFFERENCE},
                ))  # fmt: skip
    if len(size.dims) > 1:

        def gaps(m: Measured) -> list[float]:
            return [m.pairs[f"gap/d{d}_n{size.n_per_d * d}_K0_L1"][0] for d in size.dims]

        found.append(Claim(
            "gap/widens-with-d", "the one-layer with/without gap (trained models) widens with d",
            "as d grows the gap between transformers trained with and without descriptors widens", "App. B.2, Table 1",
            REPRODUCTION, lambda m: Estimate(float(np.min(np.diff(gaps(m)))), values=tuple(gaps(m)),
                                             text=" → ".join(f"{v:.3g}" for v in gaps(m))),
            above(0, "increasing at every d of the grid"),
            {"a gap that stays as at the smallest d": lambda m: Estimate(0.0, text=f"{gaps(m)[0]:.3g} (every d)")},
        ))  # fmt: skip
    else:
        found.append(untested("gap/widens-with-d", "the one-layer with/without gap widens with d", "the gap widens "
                              "with d", "App. B.2, Table 1", REPRODUCTION, "one d at this size"))  # fmt: skip
    for k in size.n_means:
        found.append(Claim(
            f"onehot/K{k}", f"K = {k} fixed means: with the one-hot task id the trained one-layer model beats every "
            "descriptor-free one-layer LSA", "one-hot task descriptors also improve ICL", "App. B.5", REPRODUCTION,
            _pair(f"uses/d{size.d}_n{size.n}_K{k}_L1"),
            interval_below(0, "paired loss difference to the descriptor-free optimum on the same prompts: 95 % "
                           "interval below 0"),
            {"the descriptor-free optimum itself": lambda _: NO_DIFFERENCE},
        ))  # fmt: skip
    found.append(untested(
        "descriptor-use-vs-n", "fewer examples → the descriptor is used more (the 11/21 blocks of W_KQ relative to "
        "the main block)", "when there are fewer in-context examples, transformers leverage descriptors more",
        "Sec. 4", REPRODUCTION, "not yet measured (issue 23)"))  # fmt: skip
    return found


def gap_table(size: Size, results: pd.DataFrame) -> pd.DataFrame:
    """The with/without gap per seed, d and depth (trained models on fresh prompts), absolute and relative to the
    loss without."""
    deep = results[(results.n_means == 0) & (results.n == size.n_per_d * results.d)]
    means = deep.pivot_table(index=["seed", "d", "layers"], columns="given", values="loss").reset_index()
    means["gap"] = means[WITHOUT] - means[WITH]
    means["relative_gap"] = means["gap"] / means[WITHOUT]
    return means


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
    """depth.png: one panel per d (loss vs layers with and without, means over seeds with the mean 95 % interval,
    the one-layer optima dashed) and a last panel with the relative gap vs layers, a line per d (dots: each
    seed)."""
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
        mean = group.groupby("layers")["relative_gap"].mean()
        ax.plot(mean.index, 100 * mean, marker="o", label=f"d = {d} (mean over seeds)")
        ax.scatter(group["layers"], 100 * group["relative_gap"], color=ax.lines[-1].get_color(), s=10, alpha=0.6)
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


def write(context: Context, measurements: dict[int, Measured], results: list[ClaimResult]) -> dict:
    """results.csv, flow.csv and gaps.csv (every seed) and the five figures; the report's tables."""
    size = context.size
    table = pd.concat([m.runs for m in measurements.values()], ignore_index=True).drop(columns="controls")
    flow_table = pd.concat([m.flows for m in measurements.values()], ignore_index=True)
    gaps = gap_table(size, table)
    for name, frame in (("results.csv", table), ("flow.csv", flow_table), ("gaps.csv", gaps)):
        atomic_write_text(context.out / name, frame.to_csv(index=False))
    first = measurements[context.seeds[0]]
    figures, text = context.out / "figures", context.caption
    plot_loss_vs_n(size, table, figures / "loss_vs_n.png", text)
    plot_flows(first.curves, size.flow_tolerance, figures / "flow.png", text)
    pairs, distances = {}, {}
    for desc, given in (("mean", WITH), ("none", WITHOUT)):
        weights, optimum, distance = first.weights[Run(size.d, size.n, 1, desc, 0).run_id]
        pairs[given], distances[given] = (weights, optimum), distance
    plot_weights(size, pairs, distances, figures / "weights.png", text)
    plot_depth(size, table, gaps, figures / "depth.png", text)
    plot_onehot(size, table, figures / "onehot.png", text)
    return {"Gap per seed, d and depth (trained models, losses on fresh prompts)": gaps,
            "Gradient flow from the balanced and the zero initialisation": flow_table,
            "Every run": table.drop(columns=["given"])}  # fmt: skip


def setting(size: Size) -> str:
    return (
        f"x ~ N(μ, I), μ ~ N(0, {size.tau:g}² I) per prompt (or one of K fixed means), w ~ N(0, I), y = wᵀx; "
        "sparse LSA (the paper's model), balanced init, Adam, clipping 1.0"
    )


RECIPE = register_recipe(Recipe(
    name="task_descriptors",
    paper="Huang & Ge, ICLR 2025",
    claim="a task descriptor (μ or a one-hot id) helps a one-layer LSA, which reaches the exact optimum from the "
    "balanced init; deeper models do better",
    title="Huang & Ge: task descriptors in one-layer and deeper LSAs",
    sizes=SIZES,
    plan=plan,
    measure=measure,
    claims=claims,
    write=write,
    setting=setting,
))  # fmt: skip

"""Fu et al. (2024): on ill-conditioned data, which iteration of Newton's method does each layer match?

Setting (PAPERS.md): noiseless y = wᵀx, w ~ N(0, I); x ~ N(0, QΣQᵀ) with half of Σ's eigenvalues 1 and half
0.01 (κ = 100, Fu et al.'s 100 and 1 scaled by 1/100) and a fresh rotation Q per prompt; d = 6, n = 20.
Models: LSAs of depth 1..L in the block form (key-query on x; the value writes x from x and the label from
the label: von Oswald et al.'s GD++), which can precondition with the data and trains stably where the full
form diverges beyond two layers. Each model is probed (:mod:`iclab.probe`) on the full context with 10 queries
per prompt against GD-k, Newton–Schulz-k, ridge and least squares; the report gives the layer → iteration
maps of Newton–Schulz and GD for every depth.

Claims (Fu et al.), for every depth of two or more layers: the Newton–Schulz iterations matched never fall with
the layer and grow overall (control: no growth); at the last layer Newton–Schulz matches better than GD at any
step count and step size tried (control: the L-layer GD construction, probed the same way, whose last layer is
GD-L exactly); and the last layer matches more GD steps than the model has layers, as a higher-order method
would (same control). Fu et al. made these observations on GPT-2 (``newton_gpt2``); here they are tested on
LSAs, where GD at a fitted step has matched every layer a little better than Newton–Schulz: that claim is then
counted "not reproduced".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from iclab.config import parse_config
from iclab.constructions import gd_model
from iclab.experiments.claims import REPRODUCTION, Claim, ClaimResult, Criterion, Estimate, above, reading
from iclab.experiments.grid import RunSpec, load_finished, training_overrides
from iclab.experiments.recipe import Context, Recipe, register_recipe
from iclab.plots import caption, count_axis, outside_legend, save_figure
from iclab.probe import ProbeResult, ProbeSettings, probe_model, write_probe
from iclab.rundir import atomic_write_text
from iclab.tasks import make_task

PLACE = "Fu et al., layer-wise probing"
GD_LR = 0.5  # the GD construction's step (stable on this data: the largest eigenvalue of XᵀX/n stays below 4)


@dataclass(frozen=True)
class Size:
    """One size of the experiment."""

    layers: tuple[int, ...]
    d: int = 6
    n: int = 20
    steps: int = 6000
    batch_size: int = 1024
    lr: float = 1e-3
    warmup_steps: int = 300
    probe_prompts: int = 500
    max_iterations: int = 24


FULL = Size(layers=(1, 2, 3, 4))
QUICK = Size(layers=(1, 2), d=4, n=12, steps=2000, batch_size=256, lr=3e-3, warmup_steps=50, probe_prompts=100,
             max_iterations=8)  # fmt: skip
SIZES = {"quick": QUICK, "full": FULL}


def ill_conditioned_task(d: int, n: int) -> list[str]:
    """Fu et al.'s ill-conditioned data (κ = 100): Σ with ⌈d/2⌉ eigenvalues 1 and ⌊d/2⌋ eigenvalues 0.01, rotated
    per prompt; noiseless y = wᵀx."""
    small = d // 2
    spectrum = ",".join(["1"] * (d - small) + ["0.01"] * small)
    return [f"task.d={d}", f"task.n={n}", f"task.x_cov_diag={spectrum}", "task.rotation=per_prompt"]


def task_overrides(size: Size) -> list[str]:
    return ill_conditioned_task(size.d, size.n)


def plan(size: Size) -> list[RunSpec]:
    """One block-form LSA per depth."""
    return [
        RunSpec(
            f"L{layers}",
            (
                *task_overrides(size),
                "model.param=block",
                "model.init=zero_block",
                "model.init_scale=0.02",
                f"model.layers={layers}",
                *training_overrides(size.steps, size.batch_size, size.lr, grad_clip=0.5),
                f"train.warmup_steps={size.warmup_steps}",
            ),
        )
        for layers in size.layers
    ]


def map_rows(result: ProbeResult, depth: int) -> list[dict]:
    """One row per layer of a probed model: the best Newton–Schulz and GD matches and the best overall."""
    candidates = result.candidates.set_index(["layer", "family"])
    rows = []
    for layer in result.layers.itertuples():
        newton, gd = candidates.loc[(layer.layer, "newton")], candidates.loc[(layer.layer, "gd")]
        rows.append({"depth": depth, "layer": layer.layer, "readout_loss": layer.readout_loss,
                     "best": layer.best, "newton_k": layer.newton_k, "newton_difference": newton["difference"],
                     "newton_sime": newton["sime"], "gd_k": layer.gd_k, "gd_lr": gd["value"],
                     "gd_difference": gd["difference"], "gd_sime": gd["sime"]})  # fmt: skip
    return rows


@dataclass(frozen=True)
class Measured:
    """One seed's layer → iteration maps of every trained depth (``maps``) and of the GD construction of every
    depth (``constructions``)."""

    maps: pd.DataFrame
    constructions: pd.DataFrame


def measure(context: Context, seed: int, runs: dict[str, Path]) -> Measured:
    """Probe each trained depth of this seed (a diverged one is missing and skipped; its full probe goes to
    probes/seed<S>/L<depth>/) and the GD construction of each depth, on the same prompts."""
    size = context.size
    models = load_finished(runs, context.device)
    task = make_task(parse_config({}, task_overrides(size)).task)
    settings = ProbeSettings(prompts=size.probe_prompts, probe_prompts=4 * size.probe_prompts,
                             max_iterations=size.max_iterations, sweeps=2, seed=seed)  # fmt: skip
    rows, constructions = [], []
    for run_id, model in models.items():
        result = probe_model(model, task, settings, device=context.device, progress=False)
        write_probe(result, context.out / "probes" / f"seed{seed}" / run_id, f"{run_id} on κ = 100 data, seed {seed}")
        rows += map_rows(result, model.num_layers)
    for depth in size.layers[1:]:
        result = probe_model(gd_model(size.d, depth, GD_LR), task, settings, device=context.device, progress=False)
        constructions += map_rows(result, depth)
    return Measured(pd.DataFrame(rows).assign(seed=seed), pd.DataFrame(constructions).assign(seed=seed))


def _last(table: str, depth: int, column: str):
    """The last layer's ``column`` of a depth's map (``table``: maps or constructions)."""

    def last(m: Measured) -> float:
        rows = getattr(m, table)
        return rows[rows.depth == depth].sort_values("layer")[column].iloc[-1]

    return reading(last)


def _margin(table: str, depth: int):
    """GD's difference over Newton–Schulz's at the last layer (> 1: Newton matches better)."""

    def read(m: Measured) -> Estimate:
        rows = getattr(m, table)
        last = rows[rows.depth == depth].sort_values("layer").iloc[-1]
        ratio = float(last["gd_difference"] / last["newton_difference"])
        gd = f"GD {last['gd_difference']:.3g} (k = {int(last['gd_k'])})"
        newton = f"Newton–Schulz {last['newton_difference']:.3g} (k = {int(last['newton_k'])})"
        return Estimate(ratio, text=f"{gd} / {newton} = {ratio:.3g}")

    return read


def _growth(table: str, depth: int):
    def read(m: Measured) -> Estimate:
        rows = getattr(m, table)
        ks = tuple(float(k) for k in rows[rows.depth == depth].sort_values("layer")["newton_k"])
        return Estimate(ks[-1] - ks[0], values=ks, text=" → ".join(str(int(k)) for k in ks))

    return read


def claims(size: Size) -> list[Claim]:
    """For every depth of two or more layers: Newton iterations grow with the layer; at the last layer
    Newton–Schulz matches better than GD; the last layer matches more GD steps than the model has layers."""
    found = []
    for depth in size.layers:
        if depth == 1:
            continue
        construction = f"the {depth}-layer GD construction (η = {GD_LR:g})"
        found += [
            Claim(f"L{depth}/newton-grows", f"L = {depth}: the Newton–Schulz iterations matched never fall with the "
                  "layer and grow overall", "layer after layer, the model matches more Newton iterations (about "
                  "one more per layer)", PLACE, REPRODUCTION, _growth("maps", depth),
                  Criterion("non-decreasing, and the last layer's above the first's",
                            lambda e: bool((np.diff(e.values) >= 0).all()) and e.value > 0),
                  {"no growth (the same iteration count at every layer)":
                   lambda _, depth=depth: Estimate(0.0, values=(1.0,) * depth, text=" → ".join(["1"] * depth))}),
            Claim(f"L{depth}/newton-beats-gd", f"L = {depth}: at the last layer Newton–Schulz matches better than GD",
                  "the later layers match Newton's method better than GD (SimE 0.991 vs 0.957 on GPT-2)", PLACE,
                  REPRODUCTION, _margin("maps", depth),
                  above(1, "GD's best relative difference over Newton–Schulz's > 1"),
                  {construction: _margin("constructions", depth)},
                  note="GD at a fitted step size matches the block-form LSA's layers a little better than "
                  "Newton–Schulz at these sizes (Fu et al. observed the opposite on GPT-2: see newton_gpt2)"),
            Claim(f"L{depth}/gd-steps", f"L = {depth}: the last layer matches more than {depth} GD steps",
                  "Newton's method converges far faster than GD on ill-conditioned data (κ = 100)", PLACE,
                  REPRODUCTION, _last("maps", depth, "gd_k"), above(depth, f"GD steps matched > {depth}"),
                  {construction: _last("constructions", depth, "gd_k")}),
        ]  # fmt: skip
    return found


def plot_maps(maps: pd.DataFrame, path: Path, caption_text: str = "") -> None:
    """newton_map.png: matched Newton–Schulz iterations and GD steps against the layer, one line per depth
    (integer ticks: both are counts; the legend outside the axes)."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for depth, rows in maps.groupby("depth"):
        axes[0].plot(rows["layer"], rows["newton_k"], "o-", label=f"{depth}-layer model")
        axes[1].plot(rows["layer"], rows["gd_k"], "o-", label=f"{depth}-layer model")
    for ax, what in zip(axes, ("Newton–Schulz iterations", "GD steps"), strict=True):
        ax.set_xlabel("layer")
        ax.set_ylabel(f"best-matching {what}")
        ax.set_xticks(sorted(maps["layer"].unique()))
        ax.grid(alpha=0.3)
    count_axis(axes[0].yaxis)
    axes[1].set_yscale("log", base=2)
    powers = [2**i for i in range(max(math.ceil(math.log2(max(float(maps["gd_k"].max()), 1.0))), 1) + 1)]
    axes[1].set_ylim(0.8, powers[-1] * 1.25)
    axes[1].yaxis.set_major_locator(FixedLocator(powers))  # 1, 2, 4, 8 steps: counts
    axes[1].yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes[1].yaxis.set_minor_formatter(NullFormatter())
    outside_legend(axes[1])
    if caption_text:
        caption(fig, caption_text)
    save_figure(fig, path)


def write(context: Context, measurements: dict[int, Measured], results: list[ClaimResult]) -> dict:
    """maps.csv and constructions.csv (every seed), figures/newton_map.png (the first seed); the report's tables."""
    maps = pd.concat([m.maps for m in measurements.values()], ignore_index=True)
    constructions = pd.concat([m.constructions for m in measurements.values()], ignore_index=True)
    atomic_write_text(context.out / "maps.csv", maps.to_csv(index=False))
    atomic_write_text(context.out / "constructions.csv", constructions.to_csv(index=False))
    first = measurements[context.seeds[0]].maps
    if len(first):
        plot_maps(first, context.out / "figures" / "newton_map.png", context.caption)
    return {
        "Layer → best-matching iterations (newton_k, gd_k) for each depth and seed": maps,
        "The GD construction of each depth, probed the same way (the control)": constructions,
    }


def setting(size: Size) -> str:
    return "x ~ N(0, QΣQᵀ), Σ half 1 and half 0.01, Q per prompt; noiseless; block-form LSA"


RECIPE = register_recipe(Recipe(
    name="newton",
    paper="Fu et al., 2024",
    claim="on ill-conditioned data, layer after layer matches more Newton iterations, far more than one GD step each",
    title="Newton iterations per layer",
    sizes=SIZES,
    plan=plan,
    measure=measure,
    claims=claims,
    write=write,
    setting=setting,
    allow_diverged=True,
))  # fmt: skip

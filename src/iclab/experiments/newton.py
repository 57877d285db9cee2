"""Fu et al. (2024): on ill-conditioned data, which iteration of Newton's method does each layer match?

Setting (PAPERS.md): noiseless y = wᵀx, w ~ N(0, I); x ~ N(0, QΣQᵀ) with half of Σ's eigenvalues 1 and half
0.01 (κ = 100, Fu et al.'s 100 and 1 scaled by 1/100) and a fresh rotation Q per prompt; d = 6, n = 20.
Models: LSAs of depth 1..L in the block form (key-query on x; the value writes x from x and the label from
the label: von Oswald et al.'s GD++), which can precondition with the data and trains stably where the full
form diverges beyond two layers. Each model is probed (:mod:`iclab.probe`) on the full context with 10 queries
per prompt against GD-k, Newton–Schulz-k, ridge and least squares; the report gives the layer → iteration
maps of Newton–Schulz and GD for every depth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from iclab.config import parse_config
from iclab.experiments.grid import claims_report, load_finished, training_overrides
from iclab.experiments.recipe import Claim, Recipe, RunSpec, claim_checks, claims_frame
from iclab.plots import caption, count_axis, outside_legend, recipe_caption, save_figure
from iclab.probe import ProbeSettings, probe_model, write_probe
from iclab.rundir import atomic_write_text
from iclab.tasks import make_task


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


def task_overrides(size: Size) -> list[str]:
    small = size.d // 2
    spectrum = ",".join(["1"] * (size.d - small) + ["0.01"] * small)
    return [f"task.d={size.d}", f"task.n={size.n}", f"task.x_cov_diag={spectrum}", "task.rotation=per_prompt"]


def plan(size_name: str) -> list[RunSpec]:
    """One block-form LSA per depth."""
    size = SIZES[size_name]
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


def claims(maps: pd.DataFrame) -> list[Claim]:
    """On the deepest model that trained: do the matched Newton iterations grow with the layer, and does its
    last layer match more GD steps than it has layers (a higher-order method than one GD step per layer)?"""
    paper = "GPT-2's layers match more and more Newton iterations, each layer about one (Fu et al.)"
    if maps.empty:
        return [Claim("a model trained", paper, "every depth diverged", "at least one depth trains", False)]
    deepest = maps[maps["depth"] == maps["depth"].max()].sort_values("layer")
    depth = int(deepest["depth"].iloc[0])
    newton, gd = deepest["newton_k"].to_numpy(), deepest["gd_k"].to_numpy()
    sime = ", ".join(f"{v:.4f}" for v in deepest["newton_sime"])
    return [
        Claim(f"L={depth}: matched Newton iterations never fall with the layer and grow overall", paper,
              f"Newton–Schulz iterations by layer: {' → '.join(map(str, newton))} (SimE {sime})",
              "non-decreasing, last > first", bool((newton[1:] >= newton[:-1]).all() and newton[-1] > newton[0])),
        Claim(f"L={depth}: the last layer matches more than {depth} GD steps",
              "Newton's method converges far faster than GD on ill-conditioned data (κ = 100)",
              f"GD steps by layer: {' → '.join(map(str, gd))}", f"> {depth}", bool(gd[-1] > depth)),
    ]  # fmt: skip


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


def analyse(out: Path, size_name: str, runs: dict[str, Path], device: str, progress: bool) -> dict:
    """Probe each trained depth (a diverged one, missing from ``runs``, is reported and skipped); write maps.csv,
    figures/newton_map.png, probes/L*/ (each model's full probe) and report.md into ``out``."""
    size = SIZES[size_name]
    models = load_finished(runs, device)
    task = make_task(parse_config({}, task_overrides(size)).task)
    settings = ProbeSettings(prompts=size.probe_prompts, probe_prompts=4 * size.probe_prompts,
                             max_iterations=size.max_iterations, sweeps=2)  # fmt: skip
    rows = []
    for run_id, model in models.items():
        result = probe_model(model, task, settings, device=device, progress=False)
        write_probe(result, out / "probes" / run_id, f"{run_id} on κ = 100 data")
        candidates = result.candidates.set_index(["layer", "family"])
        for layer in result.layers.itertuples():
            newton, gd = candidates.loc[(layer.layer, "newton")], candidates.loc[(layer.layer, "gd")]
            rows.append({"depth": model.num_layers, "layer": layer.layer, "readout_loss": layer.readout_loss,
                         "best": layer.best, "newton_k": layer.newton_k, "newton_difference": newton["difference"],
                         "newton_sime": newton["sime"], "gd_k": layer.gd_k, "gd_lr": gd["value"],
                         "gd_difference": gd["difference"], "gd_sime": gd["sime"]})  # fmt: skip
    maps = pd.DataFrame(rows)
    found = claims(maps)
    atomic_write_text(out / "maps.csv", maps.to_csv(index=False))
    atomic_write_text(out / "claims.csv", claims_frame(found).to_csv(index=False))
    diverged = sorted({spec.run_id for spec in plan(size_name)} - set(runs))
    setting = (f"x ~ N(0, QΣQᵀ), Σ half 1 and half 0.01, Q per prompt; noiseless; block-form LSA; diverged and "
               f"left out: {', '.join(diverged) or 'none'}")  # fmt: skip
    if not maps.empty:
        plot_maps(maps, out / "figures" / "newton_map.png", recipe_caption("newton", size_name, out, size, setting))
    tables = {"Layer → best-matching iterations (newton_k, gd_k) for each depth": maps}
    report = claims_report("Newton iterations per layer", size_name, size, setting, found, tables)
    atomic_write_text(out / "report.md", report)
    return {"maps": maps, "checks": claim_checks(found)}


RECIPE = Recipe(
    name="newton",
    paper="Fu et al., 2024",
    claim="on ill-conditioned data, layer after layer matches more Newton iterations, far more than one GD step each",
    plan=plan,
    analyse=analyse,
    sizes=tuple(SIZES),
    allow_diverged=True,
)

"""Fu et al. (2024) on GPT-2: a GPT-2 trained on ill-conditioned linear regression matches, layer after layer,
more iterations of Newton's method (Newton–Schulz for (XᵀX)⁻¹), and it matches them better than GD, which would
need about 2000 steps to match its last layers.

Setting (PAPERS.md): noiseless y = wᵀx, w ~ N(0, I); x ~ N(0, QΣQᵀ) with half of Σ's eigenvalues 1 and half 0.01
(κ = 100, Fu et al.'s 100 and 1 scaled by 1/100) and a fresh rotation Q per prompt. A GPT-2 on interleaved
tokens is trained on Garg et al.'s loss (each next example's label from the ones before it,
``train.objective=next_example``), Adam with warm-up and a cosine decay. Probing as Fu et al. do, on fresh prompts
of each seed: the model is frozen and a linear read-out is fitted on each layer's residual stream at the query
(``ProbeSettings.readout="probe"``, shared by every prefix), and each layer's errors at every prefix k = 1..n are
matched by the similarity of errors (SimE, the cosine of the error vectors over the prefixes, averaged over
prompts) against Newton–Schulz-k (k = 0..``max_iterations``), GD-k with its step fitted per layer and k, ridge
and least squares. GD is tried over Fu et al.'s range of steps: :data:`GD_STEPS`, a log grid from 0 to 16 384
(its iterates in closed form, :func:`iclab.learners.algorithms.gradient_descent_at`, so thousands of steps cost
what one does).

The claims and their tests (each decided per seed, with the same test applied to its controls):

- *Newton iterations grow with the layer* (Fu et al.: about 3 more per layer from layer 3 to 9): the slope of the
  least-squares line through (layer, Newton–Schulz iterations matched) is above 1.5 per layer, half-way between
  Fu et al.'s 3 and no growth. Control: every layer read out like the first (no growth).
- *At the last layer Newton matches better than GD* (SimE 0.991 vs 0.957): the paired 90 % bootstrap interval
  over prompts of Newton's cosine minus GD's (each family's best match, GD over every count of the grid and every
  step) lies above 0. Control: the first layer in place of the last.
- *GD needs about 2000 steps to match the last layers*: the GD step count that matches the last layer best is
  above √(L·2000), the geometric mid-point between one GD step per layer (von Oswald et al.'s construction, the
  nearest wrong answer) and Fu et al.'s 2000. Control: the first layer's count.
- Fu et al.'s "a hidden size ≥ 32 is needed to reach least squares" needs models of several widths: not tested.

SimE is blind to scale, so the best GD may be one whose step diverges on some prompts; layers.csv gives the
prediction difference beside it.

Sizes: ``quick`` (CI: d = 3, n = 9, a 4-layer width-32 GPT-2, 1500 steps of 128 prompts, the training the recipe
had; 2000 steps of 64 prompts, tried to save time, left the Newton growth under its threshold at seed 0, slope
1.4), ``scaled`` (d = 5,
n = 15, a 6-layer width-64 GPT-2, 12 000 steps: about 11 min of training and 2 of probing per seed on this 2-core
machine), ``full`` (Fu et al.'s d = 20, up to 40 examples, the standard 12-layer GPT-2, 500k steps: a GPU, days;
not run here). No curriculum: the per-prompt rotation mixes the coordinates a curriculum would zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.lines import Line2D

from iclab.config import parse_config
from iclab.experiments.claims import (
    REPRODUCTION,
    Claim,
    ClaimResult,
    Criterion,
    Estimate,
    Measure,
    interval_above,
    mean_interval,
    untested,
)
from iclab.experiments.grid import RunSpec, load_finished, next_example_overrides
from iclab.experiments.newton import ill_conditioned_task
from iclab.experiments.recipe import Context, Recipe, register_recipe
from iclab.plots import caption, count_axis, save_figure
from iclab.probe import ProbeResult, ProbeSettings, probe_model, write_probe
from iclab.rundir import atomic_write_text
from iclab.tasks import make_task

FAMILIES = ("newton", "gd", "ridge", "ols")  # the candidates whose SimE per layer the report and figure give
NAMES = {"newton": "Newton–Schulz", "gd": "GD", "ridge": "ridge", "ols": "least squares"}
GD_STEPS = (
    0,
    1,
    *sorted(c for e in range(1, 15) for c in (2**e, 3 * 2 ** (e - 1)) if c <= 2**14),
)  # 0, 1, 2, 3, 4, 6, …
FU_GD_STEPS = 2000  # GD steps Fu et al. find would match the last layers
FU_RATE = 3.0  # Newton iterations Fu et al. find each layer adds (layers 3 to 9)
CONFIDENCE = 0.9


@dataclass(frozen=True)
class Size:
    """One size of the experiment."""

    d: int
    n: int
    model: tuple[str, ...]
    steps: int
    lr: float
    warmup_steps: int
    batch_size: int = 64
    probe_prompts: int = 500
    max_iterations: int = 40  # Newton–Schulz iterations tried: 0..max_iterations (GD: GD_STEPS)


QUICK = Size(d=3, n=9, model=("model.layers=4", "model.heads=2", "model.width=32"), steps=1500, lr=3e-3,
             warmup_steps=200, batch_size=128, probe_prompts=200, max_iterations=20)  # fmt: skip
SCALED = Size(d=5, n=15, model=("model.layers=6", "model.heads=2", "model.width=64"), steps=12_000, lr=1e-3,
              warmup_steps=500)  # fmt: skip
FULL = Size(d=20, n=40, model=("model.size=standard",), steps=500_000, lr=1e-4, warmup_steps=5000)
SIZES = {"quick": QUICK, "scaled": SCALED, "full": FULL}


def task_overrides(size: Size) -> list[str]:
    return ill_conditioned_task(size.d, size.n)


def plan(size: Size) -> list[RunSpec]:
    """One GPT-2."""
    return [
        RunSpec(
            "gpt2",
            (
                *task_overrides(size),
                "model.name=gpt2",
                *size.model,
                *next_example_overrides(
                    size.steps, size.batch_size, size.lr, "cosine", size.warmup_steps, evaluations=5
                ),
            ),
        )
    ]


@dataclass
class Measured:
    """One seed's probe: the layer table (:func:`layer_table`) and every prompt's cosine of errors with each
    family's best match per layer ``{(layer, family): (B,)}``."""

    layers: pd.DataFrame
    cosines: dict[tuple[int, str], np.ndarray]


def layer_table(result: ProbeResult) -> pd.DataFrame:
    """One row per layer: its probe's loss, the best match, and for each of :data:`FAMILIES` the SimE of its
    best member (with the iteration count of Newton–Schulz and GD, GD's step and prediction difference)."""
    best = result.candidates.set_index(["layer", "family"])
    rows = []
    for layer in result.layers.itertuples():
        row = {"layer": layer.layer, "probe_loss": layer.readout_loss, "best": layer.best}
        for family in FAMILIES:
            row[f"{family}_sime"] = best.loc[(layer.layer, family), "sime"]
        row["newton_k"], row["gd_k"] = layer.newton_k, layer.gd_k
        row["gd_lr"] = best.loc[(layer.layer, "gd"), "value"]
        row["gd_difference"] = best.loc[(layer.layer, "gd"), "difference"]
        row["newton_difference"] = best.loc[(layer.layer, "newton"), "difference"]
        rows.append(row)
    return pd.DataFrame(rows)


def probe_settings(size: Size, seed: int) -> ProbeSettings:
    """Fu et al.'s probe: fitted read-outs, every prefix, SimE; GD over :data:`GD_STEPS`; prompts of ``seed``."""
    return ProbeSettings(prompts=size.probe_prompts, probe_prompts=4 * size.probe_prompts, first_prefix=1,
                         max_iterations=size.max_iterations, metric="sime", readout="probe", sweeps=2, seed=seed,
                         gd_steps=GD_STEPS)  # fmt: skip


def measure(context: Context, seed: int, runs: dict[str, Path]) -> Measured:
    """Probe this seed's GPT-2 layer by layer on prompts of its own (probe/seed<S>/ holds the full probe)."""
    size = context.size
    model = load_finished(runs, context.device)["gpt2"]
    task = make_task(parse_config({}, task_overrides(size)).task)
    result = probe_model(model, task, probe_settings(size, seed), device=context.device, progress=context.progress)
    write_probe(result, context.out / "probe" / f"seed{seed}", f"GPT-2 on κ = 100 data, seed {seed}")
    return Measured(layer_table(result).assign(seed=seed), result.cosines)


# --------------------------------------------------------------------------- claims


def slope(values: np.ndarray) -> float:
    """The slope of the least-squares line through (layer, value), layers 1..L."""
    return float(np.polyfit(np.arange(1, len(values) + 1), values, 1)[0])


def growth(first_only: bool = False) -> Measure:
    """A measure: the slope of Newton–Schulz iterations matched against the layer (``first_only``: every layer
    read out like the first, the control with no growth)."""

    def read(data: Measured) -> Estimate:
        counts = data.layers["newton_k"].to_numpy(dtype=float)
        if first_only:
            counts = np.full_like(counts, counts[0])
        text = " → ".join(f"{c:g}" for c in counts)
        return Estimate(slope(counts), values=tuple(counts), text=f"{text} (slope {slope(counts):.2f} per layer)")

    return read


def newton_over_gd(first: bool = False) -> Measure:
    """A measure: the paired mean over prompts of Newton's cosine of errors minus GD's at the last layer (the
    first with ``first``), each family's best match, with its 90 % bootstrap interval."""

    def read(data: Measured) -> Estimate:
        layer = 1 if first else int(data.layers["layer"].max())
        newton, gd = (torch.as_tensor(data.cosines[(layer, family)]) for family in ("newton", "gd"))
        mean, low, high = mean_interval(newton - gd, CONFIDENCE)
        row = data.layers.set_index("layer").loc[layer]
        text = (f"layer {layer}: SimE {row.newton_sime:.3f} (Newton–Schulz, k = {row.newton_k}) vs {row.gd_sime:.3f} "
                f"(GD, k = {row.gd_k}, η = {row.gd_lr:.3g}): {mean:+.3f} [{low:+.3f}, {high:+.3f}]")  # fmt: skip
        return Estimate(mean, low, high, text=text)

    return read


def gd_steps(first: bool = False) -> Measure:
    """A measure: the GD step count that matches the last layer (the first with ``first``) best."""

    def read(data: Measured) -> Estimate:
        row = data.layers.iloc[0 if first else -1]
        return Estimate(float(row.gd_k), text=f"layer {row.layer}: GD-{row.gd_k} (SimE {row.gd_sime:.3f})")

    return read


def claims(size: Size) -> list[Claim]:
    """The iterations matched grow with the layer; at the last layer Newton–Schulz matches better than GD; GD
    needs many steps to match the last layer; the width needed to reach least squares (not tested)."""
    layers = _layers(size)
    needed = math.sqrt(layers * FU_GD_STEPS)
    place = "Fu et al. 2024, probing a 12-layer GPT-2 layer by layer"
    return [
        Claim("iterations-grow", "the Newton–Schulz iterations matched grow with the layer",
              "from layer 3 to 9 each layer adds about 3 Newton iterations; the last layers match about 21 (d = 20)",
              place, REPRODUCTION, growth(),
              Criterion(f"least-squares slope of iterations against the layer above {FU_RATE / 2:g} per layer (half "
                        "Fu et al.'s 3: half-way to no growth)", lambda e: e.value > FU_RATE / 2),
              {"every layer read out like the first": growth(first_only=True)}),
        Claim("newton-beats-gd", "at the last layer Newton–Schulz matches better than GD (every step count "
              f"0..{GD_STEPS[-1]}, every step size)", "SimE with Newton 0.991 vs GD 0.957", place, REPRODUCTION,
              newton_over_gd(),
              interval_above(0, "paired 90 % bootstrap interval over prompts of Newton's cosine of errors minus GD's "
                                "above 0"),
              {"the first layer in place of the last": newton_over_gd(first=True)},
              note="GD run for about 2000 steps (the count Fu et al. give) matches the last layer as well as "
              "Newton–Schulz does: at the quick size their SimE differ by less than 0.01 (the recipe's earlier GD, "
              "capped at 40 steps, made Newton look better)."),
        Claim("gd-needs-many-steps", "the GD step count that matches the last layer best is closer (on a log scale) "
              "to Fu et al.'s 2000 than to one step per layer", "GD would need about 2000 steps to match the last "
              "layers (where Newton needs about 21 iterations)", place, REPRODUCTION, gd_steps(),
              Criterion(f"best GD steps above √(L·2000) = {needed:.0f} (L = {layers} layers: the geometric mid-point "
                        "between one step per layer and 2000)", lambda e: e.value > needed),
              {"the first layer in place of the last": gd_steps(first=True)}),
        untested("width-to-reach-ols", "a hidden size of at least 32 is needed to reach least squares",
                 "hidden size ≥ 32 is needed to reach OLS", place, REPRODUCTION,
                 "one model width per size: the claim needs several"),
    ]  # fmt: skip


def _layers(size: Size) -> int:
    """The model's number of layers (from its overrides, else the size of model.size)."""
    return parse_config({}, ["model.name=gpt2", *size.model]).model.shape()[0]


# --------------------------------------------------------------------------- files


def plot_layers(table: pd.DataFrame, max_iterations: int, path: Path, caption_text: str = "") -> None:
    """newton_gpt2.png: left, each candidate family's best SimE against the layer (a colour per family, a line
    style per seed); middle, the Newton–Schulz iterations matched under the largest count tried; right, the GD
    steps matched (log axis, k + 1) under the largest count tried and Fu et al.'s 2000."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
    styles = ("-", "--", ":", "-.")
    seeds = []
    for index, (seed, rows) in enumerate(table.groupby("seed")):
        style = styles[index % len(styles)]
        seeds.append(Line2D([], [], color="0.3", ls=style, label=f"seed {seed}"))
        for colour, family in enumerate(FAMILIES):
            axes[0].plot(rows["layer"], rows[f"{family}_sime"], marker="o", ls=style, color=f"C{colour}")
        axes[1].plot(rows["layer"], rows["newton_k"], marker="o", ls=style, color="C0")
        axes[2].plot(rows["layer"], rows["gd_k"] + 1, marker="s", ls=style, color="C1")
    families = [Line2D([], [], color=f"C{c}", marker="o", label=NAMES[f]) for c, f in enumerate(FAMILIES)]
    axes[0].legend(handles=families + seeds, fontsize=7)
    axes[0].set_ylabel("best SimE with the layer's errors")
    limits = Line2D([], [], color="grey", ls=":", label="largest count tried")
    axes[1].axhline(max_iterations, color="grey", linestyle=":")
    axes[1].set_ylabel("Newton–Schulz iterations matched")
    axes[1].legend(handles=[*seeds, limits], fontsize=7)
    count_axis(axes[1].yaxis)
    axes[2].axhline(GD_STEPS[-1] + 1, color="grey", linestyle=":")
    axes[2].axhline(FU_GD_STEPS + 1, color="C3", linestyle="--")
    fu = Line2D([], [], color="C3", ls="--", label="Fu et al.'s ≈ 2000 (d = 20)")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("GD steps matched + 1 (log)")
    axes[2].legend(handles=[*seeds, limits, fu], fontsize=7)
    for ax in axes:
        ax.set_xlabel("layer (linear read-out fitted after it)")
        ax.set_xticks(sorted(table["layer"].unique()))
        ax.grid(alpha=0.3)
    if caption_text:
        caption(fig, caption_text)
    save_figure(fig, path)


def write(context: Context, measurements: dict[int, Measured], results: list[ClaimResult]) -> dict:
    """layers.csv (one row per seed and layer) and figures/newton_gpt2.png (the probes are in probe/seed<S>/);
    the report's table."""
    table = pd.concat([data.layers for data in measurements.values()], ignore_index=True)
    table = table[["seed", *[c for c in table.columns if c != "seed"]]]
    atomic_write_text(context.out / "layers.csv", table.to_csv(index=False))
    plot_layers(table, context.size.max_iterations, context.out / "figures" / "newton_gpt2.png", context.caption)
    return {"Layer → best SimE per family, iterations matched (every seed)": table}


def setting(size: Size) -> str:
    return ("x ~ N(0, QΣQᵀ), Σ half 1 and half 0.01, Q per prompt; noiseless; GPT-2 trained on the next-example "
            f"loss; linear read-outs fitted per layer, every prefix, SimE; GD at 0..{GD_STEPS[-1]} steps (closed "
            "form)")  # fmt: skip


RECIPE = register_recipe(Recipe(
    name="newton_gpt2",
    paper="Fu, Chen, Jia, Sharan, 2024",
    claim="a GPT-2's layers match more and more Newton iterations on ill-conditioned data, better than GD",
    title="Fu et al. on GPT-2: Newton iterations per layer",
    sizes=SIZES,
    plan=plan,
    measure=measure,
    claims=claims,
    write=write,
    setting=setting,
))  # fmt: skip

"""Fu et al. (2024) on GPT-2: a GPT-2 trained on ill-conditioned linear regression matches, layer after layer,
more iterations of Newton's method (Newton–Schulz for (XᵀX)⁻¹), and it matches them better than GD.

Setting (PAPERS.md): noiseless y = wᵀx, w ~ N(0, I); x ~ N(0, QΣQᵀ) with half of Σ's eigenvalues 1 and half 0.01
(κ = 100, Fu et al.'s 100 and 1 scaled by 1/100) and a fresh rotation Q per prompt. A GPT-2 on interleaved
tokens is trained on Garg et al.'s loss (each next example's label from the ones before it,
``train.objective=next_example``), Adam with warm-up and a cosine decay, 64 fresh prompts a step. Probing as Fu
et al. do: the model is frozen and a linear read-out is fitted on each layer's residual stream at the query
(``ProbeSettings.readout="probe"``, shared by every prefix), and each layer's errors at every prefix
k = 1..n are matched by the similarity of errors (SimE, the cosine of the error vectors over the prefixes,
averaged over prompts) against GD-k (step fitted per layer and k), Newton–Schulz-k, ridge and least squares.

Claims: (1) the Newton–Schulz iterations matched never fall with the layer and grow overall; (2) at the last
layer Newton–Schulz matches better than GD at any of the step counts and sizes tried (Fu et al.: SimE 0.991 vs
0.957). SimE is blind to scale, so its best GD may be one whose step diverges on some prompts; the report gives
the prediction difference beside it.

Sizes: ``quick`` (CI: d = 3, n = 9, a 4-layer width-32 GPT-2, 1500 steps of 128 prompts: about 55 s),
``scaled`` (d = 5, n = 15, a 6-layer width-64 GPT-2, 12 000 steps: 10.8 min of training and 1.6 min of probing
on this 2-core machine), ``full`` (Fu et al.'s d = 20, up to 40 examples, the standard 12-layer GPT-2, 500k
steps: a GPU, days; not run here). No curriculum: the per-prompt rotation mixes the coordinates a curriculum
would zero.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from iclab.config import parse_config
from iclab.experiments.grid import claims_report, load_finished, next_example_overrides
from iclab.experiments.newton import task_overrides
from iclab.experiments.recipe import Claim, Recipe, RunSpec, claim_checks, claims_frame
from iclab.plots import caption, count_axis, outside_legend, recipe_caption, save_figure
from iclab.probe import ProbeSettings, probe_model, write_probe
from iclab.rundir import atomic_write_text
from iclab.tasks import make_task

FAMILIES = ("newton", "gd", "ridge", "ols")  # the candidates whose SimE per layer the report and figure give


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
    max_iterations: int = 40


QUICK = Size(d=3, n=9, model=("model.layers=4", "model.heads=2", "model.width=32"), steps=1500, lr=3e-3,
             warmup_steps=200, batch_size=128, probe_prompts=200, max_iterations=20)  # fmt: skip
SCALED = Size(d=5, n=15, model=("model.layers=6", "model.heads=2", "model.width=64"), steps=12_000, lr=1e-3,
              warmup_steps=500)  # fmt: skip
FULL = Size(d=20, n=40, model=("model.size=standard",), steps=500_000, lr=1e-4, warmup_steps=5000)
SIZES = {"quick": QUICK, "scaled": SCALED, "full": FULL}


def plan(size_name: str) -> list[RunSpec]:
    """One GPT-2."""
    size = SIZES[size_name]
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


def layer_table(candidates: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """One row per layer: its probe's loss, the best match, and for each of :data:`FAMILIES` the SimE of its
    best member (with the iteration count of Newton–Schulz and GD, GD's step and prediction difference)."""
    best = candidates.set_index(["layer", "family"])
    rows = []
    for layer in layers.itertuples():
        row = {"layer": layer.layer, "probe_loss": layer.readout_loss, "best": layer.best}
        for family in FAMILIES:
            row[f"{family}_sime"] = best.loc[(layer.layer, family), "sime"]
        row["newton_k"], row["gd_k"] = layer.newton_k, layer.gd_k
        row["gd_lr"] = best.loc[(layer.layer, "gd"), "value"]
        row["gd_difference"] = best.loc[(layer.layer, "gd"), "difference"]
        row["newton_difference"] = best.loc[(layer.layer, "newton"), "difference"]
        rows.append(row)
    return pd.DataFrame(rows)


def claims(table: pd.DataFrame) -> list[Claim]:
    """Newton iterations growing with the layer; Newton–Schulz above GD by SimE at the last layer."""
    newton = table["newton_k"].to_numpy()
    last = table.iloc[-1]
    sime = ", ".join(f"{v:.3f}" for v in table["newton_sime"])
    return [
        Claim("the Newton–Schulz iterations matched never fall with the layer and grow overall",
              "from layer 3 to 9 each layer adds about 3 Newton iterations (Fu et al.)",
              f"Newton–Schulz iterations by layer: {' → '.join(map(str, newton))} (SimE {sime})",
              "non-decreasing, last > first", bool((newton[1:] >= newton[:-1]).all() and newton[-1] > newton[0])),
        Claim("at the last layer Newton–Schulz matches better than GD",
              "SimE with Newton 0.991 vs GD 0.957 (Fu et al.)",
              f"SimE {last['newton_sime']:.3f} (Newton–Schulz, k = {last['newton_k']}) vs {last['gd_sime']:.3f} "
              f"(GD, k = {last['gd_k']}, η = {last['gd_lr']:.3g})",
              "Newton's SimE > GD's", bool(last["newton_sime"] > last["gd_sime"])),
    ]  # fmt: skip


def plot_layers(table: pd.DataFrame, max_iterations: int, path: Path, caption_text: str = "") -> None:
    """newton_gpt2.png: left, each candidate family's best SimE against the layer; right, the Newton–Schulz
    iterations and GD steps matched (integer axes: counts) under the largest count tried."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"wspace": 0.25})
    names = {"newton": "Newton–Schulz", "gd": "GD", "ridge": "ridge", "ols": "least squares"}
    for family in FAMILIES:
        axes[0].plot(table["layer"], table[f"{family}_sime"], "o-", label=names[family])
    axes[0].set_ylabel("best SimE with the layer's errors")
    axes[0].legend(loc="lower right", fontsize=8)
    axes[1].plot(table["layer"], table["newton_k"], "o-", label="Newton–Schulz iterations")
    axes[1].plot(table["layer"], table["gd_k"], "s--", label="GD steps")
    axes[1].axhline(max_iterations, color="grey", linestyle=":", label="largest count tried")
    axes[1].set_ylabel("iterations matched")
    count_axis(axes[1].yaxis)
    outside_legend(axes[1])
    for ax in axes:
        ax.set_xlabel("layer (linear read-out fitted after it)")
        ax.set_xticks(table["layer"].tolist())
        ax.grid(alpha=0.3)
    if caption_text:
        caption(fig, caption_text)
    save_figure(fig, path)


def analyse(out: Path, size_name: str, runs: dict[str, Path], device: str, progress: bool) -> dict:
    """Probe the trained GPT-2 layer by layer (fitted read-outs, every prefix, SimE); write layers.csv,
    claims.csv, figures/newton_gpt2.png, probe/ (the full probe) and report.md into ``out``."""
    size = SIZES[size_name]
    model = load_finished(runs, device)["gpt2"]
    task = make_task(parse_config({}, task_overrides(size)).task)
    settings = ProbeSettings(prompts=size.probe_prompts, probe_prompts=4 * size.probe_prompts, first_prefix=1,
                             max_iterations=size.max_iterations, metric="sime", readout="probe", sweeps=2)  # fmt: skip
    result = probe_model(model, task, settings, device=device, progress=progress)
    write_probe(result, out / "probe", "GPT-2 on κ = 100 data")
    table = layer_table(result.candidates, result.layers)
    found = claims(table)
    atomic_write_text(out / "layers.csv", table.to_csv(index=False))
    atomic_write_text(out / "claims.csv", claims_frame(found).to_csv(index=False))
    setting = ("x ~ N(0, QΣQᵀ), Σ half 1 and half 0.01, Q per prompt; noiseless; GPT-2 trained on the next-example "
               "loss; linear read-outs fitted per layer, every prefix, SimE")  # fmt: skip
    caption_text = recipe_caption("newton_gpt2", size_name, out, size, setting)
    plot_layers(table, size.max_iterations, out / "figures" / "newton_gpt2.png", caption_text)
    tables = {"Layer → best SimE per family, iterations matched": table}
    report = claims_report("Newton iterations per layer of a GPT-2", size_name, size, setting, found, tables)
    atomic_write_text(out / "report.md", report)
    return {"layers": table, "checks": claim_checks(found)}


RECIPE = Recipe(
    name="newton_gpt2",
    paper="Fu et al., 2024",
    claim="a GPT-2's layers match more and more Newton iterations on ill-conditioned data, better than GD",
    plan=plan,
    analyse=analyse,
    sizes=tuple(SIZES),
)

"""Cheng, Chen, Sra (ICML 2024): attention with activation h runs functional GD in the RKHS of h(xᵀx');
the activation matching the data's kernel wins and approaches the Bayes loss with depth.

Setting (PAPERS.md; n and the exp scale are our choices, stated in the report): x uniform on the sphere in
d = 5, noise-free GP labels with kernels linear ⟨u,v⟩, relu(⟨u,v⟩), exp(⟨u,v⟩) (scale 1), n = 8 context
points (the released run's length: for d = 5 the ReLU Gram matrix of 15 points is never PSD, of 9 points
nearly so); kernel attention in the sparse form (key-query on x, value label → label), read-out minus the
query's label slot, Adam with gradient clipping. Baselines on the same prompts: functional GD with the
matching kernel and L steps (step size tuned on separate prompts) and the Bayes-optimal GP posterior.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from iclab.config import parse_config
from iclab.evaluate import error_curve, query_loss
from iclab.experiments.grid import claims_report, load_finished, training_overrides
from iclab.experiments.recipe import Claim, Recipe, RunSpec, claim_checks, claims_frame
from iclab.kernels import Kernel
from iclab.learners import FunctionalGD, GPPosterior, from_model
from iclab.plots import below_legend, caption, count_axis, recipe_caption, save_figure
from iclab.probe.matching import relative_difference
from iclab.probe.readout import LayerReadout
from iclab.prompts import Prompts
from iclab.rundir import atomic_write_text
from iclab.seeding import make_generator
from iclab.tasks import make_task

STEP_SIZES = tuple(float(v) for v in np.geomspace(0.1, 20.0, 16))  # functional-GD step sizes tried


@dataclass(frozen=True)
class Size:
    """One size of the experiment."""

    kernels: tuple[str, ...]
    activations: tuple[str, ...]
    layers: tuple[int, ...]
    d: int = 5
    n: int = 8
    steps: int = 2000
    batch_size: int = 512
    lr: float = 0.01
    eval_prompts: int = 10000


FULL = Size(kernels=("linear", "relu", "exp"), activations=("linear", "relu", "exp", "softmax"), layers=(1, 2, 3, 4))
QUICK = Size(kernels=("linear", "relu"), activations=("linear", "relu"), layers=(1,), steps=300, batch_size=256,
             eval_prompts=3000)  # fmt: skip
SIZES = {"quick": QUICK, "full": FULL}


def task_overrides(size: Size, kernel: str) -> list[str]:
    return ["task.name=gp", f"task.kernel={kernel}", "task.x_dist=sphere", f"task.d={size.d}", f"task.n={size.n}"]


def plan(size_name: str) -> list[RunSpec]:
    """One run for every kernel × activation × depth."""
    size = SIZES[size_name]
    return [
        RunSpec(
            f"{kernel}-data_{activation}-attn_L{layers}",
            (
                *task_overrides(size, kernel),
                "model.name=kernel_attention",
                f"model.activation={activation}",
                "model.param=sparse",
                f"model.layers={layers}",
                *training_overrides(size.steps, size.batch_size, size.lr),
            ),
        )
        for kernel in size.kernels
        for activation in size.activations
        for layers in size.layers
    ]


def tuned_functional_gd(kernel: Kernel, steps: int, validation: Prompts) -> FunctionalGD:
    """Functional GD with the step size (from STEP_SIZES) that does best on ``validation``."""
    losses = {}
    for lr in STEP_SIZES:
        loss = query_loss(FunctionalGD(kernel, steps, lr), validation)[0]
        losses[lr] = loss if math.isfinite(loss) else math.inf
    return FunctionalGD(kernel, steps, min(losses, key=losses.get))


def layer_match(model: torch.nn.Module, kernel: Kernel, prompts: Prompts) -> list[dict]:
    """Per layer ℓ: the functional-GD step size (from STEP_SIZES) whose ℓ-step prediction f_ℓ is closest to
    the model's layer-ℓ read-out ŷ_ℓ, and the relative difference ‖ŷ_ℓ − f_ℓ‖² / ‖f_ℓ‖² over the prompts and
    queries, relative to functional GD (:func:`iclab.probe.matching.relative_difference`; inf where f_ℓ is
    not finite)."""
    rows = []
    for layer in range(1, model.num_layers + 1):
        readout = LayerReadout(model, layer).predict(prompts.xs, prompts.ys, prompts.xq)  # (B, m)
        references = torch.stack(
            [FunctionalGD(kernel, layer, lr).predict(prompts.xs, prompts.ys, prompts.xq) for lr in STEP_SIZES]
        )  # (len(STEP_SIZES), B, m)
        differences = relative_difference(readout.unsqueeze(-2), references.unsqueeze(-2))  # one prefix: n = 1
        best = int(differences.argmin())
        rows.append({"layer": layer, "fgd_lr": STEP_SIZES[best], "relative_difference": float(differences[best])})
    return rows


def evaluate(size: Size, models: dict[str, torch.nn.Module], seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Losses of every model beside functional GD and the Bayes posterior; layer matches; error curves."""
    rows, matches, curves = [], [], {}
    for kernel_name in size.kernels:
        task = make_task(parse_config({}, task_overrides(size, kernel_name)).task)
        test = task.sample(size.eval_prompts, make_generator(seed, f"fgd-test-{kernel_name}"), dtype=torch.float64)
        validation = task.sample(2000, make_generator(seed, f"fgd-validation-{kernel_name}"), dtype=torch.float64)
        bayes = query_loss(GPPosterior(task.kernel), test)[0]
        zero = float((test.yq**2).mean())
        for layers in size.layers:
            fgd = tuned_functional_gd(task.kernel, layers, validation)
            fgd_loss = query_loss(fgd, test)[0]
            for activation in size.activations:
                run_id = f"{kernel_name}-data_{activation}-attn_L{layers}"
                model = models[run_id]
                loss, sem = query_loss(from_model(model), test)
                rows.append({"kernel": kernel_name, "activation": activation, "layers": layers, "loss": loss,
                             "sem": sem, "fgd_loss": fgd_loss, "fgd_lr": fgd.lr, "bayes_loss": bayes,
                             "zero_loss": zero})  # fmt: skip
                if activation in ("linear", "relu", "exp"):
                    for match in layer_match(model, Kernel(activation), test.slice(0, 2000)):
                        matches.append({"kernel": kernel_name, "activation": activation, "layers": layers, **match})
                if layers == max(size.layers):
                    curves[(kernel_name, activation)] = error_curve(from_model(model, activation), test.slice(0, 2000))
        curves[(kernel_name, "bayes")] = error_curve(GPPosterior(task.kernel), test.slice(0, 2000))
    return pd.DataFrame(rows), pd.DataFrame(matches), curves


def claims(results: pd.DataFrame) -> list[Claim]:
    """For each kernel: does the matching activation beat every other activation at the deepest model, and
    (with several depths) does its gap to the Bayes loss shrink with every added layer?"""
    found = []
    for kernel, group in results.groupby("kernel"):
        if kernel not in set(group["activation"]):
            continue
        depth = int(group["layers"].max())
        deepest = group[group["layers"] == depth].set_index("activation")
        losses = ", ".join(f"{a} {r.loss:.4g} ± {r['sem']:.2g}" for a, r in deepest.iterrows())
        found.append(Claim(
            f"{kernel}-kernel data, {depth} layer(s): {kernel} attention is the best activation",
            "the best activation is the one whose kernel matches the data's (Cheng et al.)",
            f"query MSE (± s.e.): {losses}", "lowest mean of the activations",
            bool(deepest["loss"].idxmin() == kernel)))  # fmt: skip
        matching = group[group["activation"] == kernel].sort_values("layers")
        if len(matching) > 1:
            gaps = (matching["loss"] - matching["bayes_loss"]).to_numpy()
            found.append(Claim(
                f"{kernel}-kernel data: {kernel} attention's gap to the Bayes loss shrinks with every layer",
                "depth helps: more layers, more steps of functional GD towards the GP posterior mean",
                " → ".join(f"{gap:.3g}" for gap in gaps) + f" (layers {', '.join(map(str, matching['layers']))})",
                "decreasing with every layer", bool((np.diff(gaps) < 0).all())))  # fmt: skip
    return found


def plot_results(size: Size, results: pd.DataFrame, curves: dict, figures: Path, caption_text: str = "") -> None:
    """heatmap.png (loss / zero-predictor loss, deepest models), layers.png, context.png; legends under the
    panels, integer ticks on the layer and example axes, ``caption_text`` under each figure."""
    deepest = results[results["layers"] == max(size.layers)]
    table = (
        deepest.pivot(index="activation", columns="kernel", values="loss")
        / deepest.groupby("kernel")["zero_loss"].first()
    )
    table = table.loc[list(size.activations), list(size.kernels)]
    fig, ax = plt.subplots(figsize=(1.6 * len(size.kernels) + 2, 1.0 * len(size.activations) + 1.5))
    image = ax.imshow(table.to_numpy(), cmap="viridis_r")
    for (i, j), value in np.ndenumerate(table.to_numpy()):
        ax.text(j, i, f"{value:.3f}", ha="center", va="center", color="w" if value > table.to_numpy().mean() else "k")
    ax.set_xticks(range(len(size.kernels)), [f"{k} kernel" for k in size.kernels])
    ax.set_yticks(range(len(size.activations)), [f"{a} attention" for a in size.activations])
    ax.set_title(f"loss / zero-predictor loss, {max(size.layers)} layer(s), n={size.n}")
    fig.colorbar(image, ax=ax)
    if caption_text:
        caption(fig, caption_text)
    save_figure(fig, figures / "heatmap.png")

    fig, axes = plt.subplots(1, len(size.kernels), figsize=(4.2 * len(size.kernels), 3.6), squeeze=False)
    for ax, kernel in zip(axes[0], size.kernels, strict=True):
        group = results[results["kernel"] == kernel]
        for activation, rows in group.groupby("activation"):
            ax.plot(rows["layers"], rows["loss"], "o-", label=f"{activation} attention")
        first = group.drop_duplicates("layers")
        ax.plot(first["layers"], first["fgd_loss"], "k--", label=f"functional GD ({kernel})")
        ax.axhline(first["bayes_loss"].iloc[0], color="gray", ls=":", label="Bayes (GP posterior)")
        ax.set_title(f"{kernel}-kernel data")
        ax.set_xlabel("layers")
        ax.set_ylabel("query MSE")
        ax.set_xticks(list(size.layers))
        below_legend(ax)
    if caption_text:
        caption(fig, caption_text)
    save_figure(fig, figures / "layers.png")

    fig, axes = plt.subplots(1, len(size.kernels), figsize=(4.2 * len(size.kernels), 3.6), squeeze=False)
    for ax, kernel in zip(axes[0], size.kernels, strict=True):
        for (curve_kernel, label), curve in curves.items():
            if curve_kernel == kernel:
                style = {"color": "gray", "ls": ":"} if label == "bayes" else {}
                ax.plot(curve.ks.numpy(), curve.mse.numpy(), label=label, **style)
        ax.set_title(f"{kernel}-kernel data, {max(size.layers)} layer(s)")
        ax.set_xlabel("number of in-context examples")
        ax.set_ylabel("query MSE")
        count_axis(ax.xaxis)
        below_legend(ax)
    if caption_text:
        caption(fig, caption_text)
    save_figure(fig, figures / "context.png")


def analyse(out: Path, size_name: str, runs: dict[str, Path], device: str, progress: bool) -> dict:
    """Evaluate the trained grid; write results.csv, layer_match.csv, figures/ and report.md into ``out``."""
    size = SIZES[size_name]
    results, matches, curves = evaluate(size, load_finished(runs, device))
    found = claims(results)
    atomic_write_text(out / "results.csv", results.to_csv(index=False))
    atomic_write_text(out / "claims.csv", claims_frame(found).to_csv(index=False))
    atomic_write_text(out / "layer_match.csv", matches.to_csv(index=False))
    setting = "x uniform on the sphere; noise-free GP labels; exp kernel scale 1; kernel attention, sparse form"
    plot_results(size, results, curves, out / "figures", recipe_caption("functional_gd", size_name, out, size, setting))
    tables = {"Query MSE (mean over test prompts)": results}
    if len(matches):
        tables["Layer ℓ read-out vs ℓ steps of functional GD (best step size per layer)"] = matches
    report = claims_report("Functional GD reproduction", size_name, size, setting, found, tables)
    atomic_write_text(out / "report.md", report)
    return {"results": results, "layer_match": matches, "checks": claim_checks(found)}


RECIPE = Recipe(
    name="functional_gd",
    paper="Cheng, Chen, Sra, ICML 2024",
    claim="attention with activation h runs functional GD in h's RKHS; the data's own kernel wins",
    plan=plan,
    analyse=analyse,
    sizes=tuple(SIZES),
)

"""Kim & Suzuki (2024): an MLP feature layer before linear attention lets the model learn in context tasks
whose labels are non-linear in x, where plain linear self-attention cannot.

Tasks: single-index y = g(wᵀx) with w ~ N(0, I/d) drawn per prompt and g = identity, square or relu
(times a random sign per prompt, so that no fixed function of x predicts y). A one-layer LSA predicts a
linear function of x_q, which carries no information about y = (wᵀx_q)² for symmetric x; MLP + LSA runs
linear regression in context on learned features φ(x) and can. The table reports each trained model's
query MSE divided by the zero predictor's E[y_q²], beside the mean of the context labels as a predictor
(what a model that only learned the label scale would reach).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from iclab.config import parse_config
from iclab.evaluate import query_loss
from iclab.experiments.grid import claims_report, load_finished, training_overrides
from iclab.experiments.recipe import Claim, Recipe, RunSpec, claim_checks, claims_frame
from iclab.learners import from_model
from iclab.plots import caption, outside_legend, recipe_caption, save_figure
from iclab.rundir import atomic_write_text
from iclab.seeding import make_generator
from iclab.tasks import make_task

MODELS = {"lsa": ["model.name=lsa"], "mlp_lsa": ["model.name=mlp_lsa"]}
RESPONSES = ("identity", "square", "relu")


@dataclass(frozen=True)
class Size:
    d: int
    n: int
    steps: int
    batch_size: int
    mlp_hidden: int
    feature_dim: int
    eval_prompts: int
    lr: float = 0.003


FULL = Size(d=5, n=40, steps=3000, batch_size=512, mlp_hidden=128, feature_dim=32, eval_prompts=20000)
QUICK = Size(d=3, n=30, steps=600, batch_size=256, mlp_hidden=48, feature_dim=12, eval_prompts=4000)
SIZES = {"quick": QUICK, "full": FULL}


def task_overrides(size: Size, response: str) -> list[str]:
    sign = "true" if response == "relu" else "false"
    return [f"task.d={size.d}", f"task.n={size.n}", f"task.response={response}", f"task.random_sign={sign}",
            "task.w_cov=diag", "task.w_cov_diag=" + ",".join([f"{1 / size.d:.6g}"] * size.d)]  # fmt: skip


def plan(size_name: str) -> list[RunSpec]:
    """One run for every response × model."""
    size = SIZES[size_name]
    extra = [f"model.mlp_hidden={size.mlp_hidden}", f"model.feature_dim={size.feature_dim}"]
    return [
        RunSpec(
            f"{response}_{model}",
            (
                *task_overrides(size, response),
                *model_overrides,
                *(extra if model == "mlp_lsa" else []),
                *training_overrides(size.steps, size.batch_size, size.lr),
            ),
        )
        for response in RESPONSES
        for model, model_overrides in MODELS.items()
    ]


def plot_relative_losses(results: pd.DataFrame, path: Path, caption_text: str = "") -> None:
    """Bars of loss / E[y_q²] per response and model, with the context-mean predictor as a tick (legend outside
    the axes)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    width = 0.8 / len(MODELS)
    for i, model in enumerate(MODELS):
        rows = results[results["model"] == model]
        ax.bar([j + i * width for j in range(len(rows))], rows["relative_loss"], width, label=model)
    means = results.drop_duplicates("response")
    ax.scatter(
        [j + 0.4 - width / 2 for j in range(len(means))],
        means["context_mean_loss"] / means["zero_loss"],
        marker="_",
        s=600,
        color="k",
        label="context mean",
    )
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(means))], [f"y = {r}(wᵀx)" for r in means["response"]])
    ax.set_ylabel("query MSE / E[y_q²]")
    outside_legend(ax, fontsize=8)
    if caption_text:
        caption(fig, caption_text)
    save_figure(fig, path)


def claims(results: pd.DataFrame) -> list[Claim]:
    """Kim & Suzuki's claim at this size: the MLP + LSA learns y = (wᵀx)² in context, plain LSA does not, both
    learn the linear task (relative loss = query MSE / E y_q², ± its standard error)."""
    rows = results.set_index(["response", "model"])

    def relative(response: str, model: str) -> str:
        r = rows.loc[(response, model)]
        return f"{r.relative_loss:.3g} ± {r['sem'] / r.zero_loss:.2g}"

    square = rows.loc[("square", "mlp_lsa")]
    paper = "an MLP feature layer before linear attention learns non-linear feature tasks in context (Kim & Suzuki)"
    return [
        Claim("MLP + LSA learns y = (wᵀx)² in context", paper, f"relative loss {relative('square', 'mlp_lsa')}",
              "< 0.8", bool(square.relative_loss < 0.8)),
        Claim("... better than predicting the context's mean label", paper,
              f"query MSE {square.loss:.4g} vs {square.context_mean_loss:.4g} for the context mean",
              "below the context mean's", bool(square.loss < square.context_mean_loss)),
        Claim("plain LSA does not learn y = (wᵀx)²", "linear attention alone cannot: its prediction is linear in x_q",
              f"relative loss {relative('square', 'lsa')}", "> 0.95",
              bool(rows.loc[("square", "lsa"), "relative_loss"] > 0.95)),
        Claim("both learn the linear task", "one LSA layer is a GD step on linear data",
              f"relative loss: LSA {relative('identity', 'lsa')}, MLP + LSA {relative('identity', 'mlp_lsa')}",
              "< 0.5 both", bool(rows.loc["identity"]["relative_loss"].max() < 0.5)),
    ]  # fmt: skip


def analyse(out: Path, size_name: str, runs: dict[str, Path], device: str, progress: bool) -> dict:
    """Evaluate the trained LSA and MLP+LSA on each response; write results.csv and report.md into ``out``."""
    size = SIZES[size_name]
    models = load_finished(runs, device)
    rows = []
    for response in RESPONSES:
        task = make_task(parse_config({}, task_overrides(size, response)).task)
        test = task.sample(size.eval_prompts, make_generator(0, f"mlp-lsa-test-{response}"), dtype=torch.float64)
        zero = float((test.yq**2).mean())
        context_mean = float(((test.yq - test.ys.mean(1, keepdim=True)) ** 2).mean())  # ŷ = (1/n) Σ y_i
        for model in MODELS:
            loss, sem = query_loss(from_model(models[f"{response}_{model}"]), test)
            rows.append({"response": response, "model": model, "loss": loss, "sem": sem, "zero_loss": zero,
                         "context_mean_loss": context_mean, "relative_loss": loss / zero})  # fmt: skip
    results = pd.DataFrame(rows)
    found = claims(results)
    atomic_write_text(out / "results.csv", results.to_csv(index=False))
    setting = "w ~ N(0, I/d); relu labels carry a random sign per prompt; one LSA layer in both models"
    plot_relative_losses(results, out / "figures" / "relative_loss.png",
                         recipe_caption("mlp_lsa", size_name, out, size, setting))  # fmt: skip
    tables = {"Query MSE (relative_loss = loss / E[y_q²])": results}
    atomic_write_text(out / "claims.csv", claims_frame(found).to_csv(index=False))
    report = claims_report("MLP + LSA reproduction", size_name, size, setting, found, tables)
    atomic_write_text(out / "report.md", report)
    return {"results": results, "checks": claim_checks(found)}


RECIPE = Recipe(
    name="mlp_lsa",
    paper="Kim & Suzuki, 2024",
    claim="an MLP feature layer before linear attention learns in context labels non-linear in x; plain LSA cannot",
    plan=plan,
    analyse=analyse,
    sizes=tuple(SIZES),
)

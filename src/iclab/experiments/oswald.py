"""von Oswald et al. (ICML 2023), "Transformers learn in-context by gradient descent": a trained linear
self-attention (LSA) is gradient descent, layer by layer.

Setting (PAPERS.md): y = wᵀx, x, w ~ N(0, I), no noise; LSAs of 1..L layers trained by
Adam on fresh prompts (the paper: d = 10, n = 10, the full size here). Each model is probed
(:mod:`iclab.probe`) on the full context against GD-k (step fitted per layer and k), Newton–Schulz-k, ridge and
least squares, with von Oswald et al.'s measures: the relative prediction difference ‖ŷ_layer − ŷ_GD‖²/‖ŷ_layer‖²,
the cosine of the input sensitivities ∂ŷ/∂x_q, and the weights' cosine with the GD construction
(:func:`iclab.constructions.gd_model`: W_KQ = I on x, W_PV = −η on the label;
:func:`iclab.probe.weights.compare_with_gd_construction`).

Claims checked:

- **One layer = one GD step with the optimal step**: difference to GD-1 tiny, sensitivity cosine ≈ 1, the fitted
  step η within a few % of η* = n/(n + d + 1) (the best single step on N(0, I) data), W_KQ ∝ I on x and
  W_PV's label row ∝ e_y (cosine ≈ 1).
- **Deeper models**: layer 1's read-out is again one GD step; the GD steps each layer matches grow with the layer,
  with high sensitivity cosines; and the trained L-layer model beats L steps of GD at the best constant step on
  fresh prompts (paired), as the paper's GD++ (GD with a data transformation x ← (I − γXᵀX/n)x per layer, which
  the x → x block of W_PV can implement) does. GD++ itself is not a probe candidate: the deep layers are matched
  to plain GD-k, which they approximate (difference ~1e-2) rather than equal; results.csv gives the cosine of
  each layer's W_PV x block with GD++'s −I.

The deep models' losses are heavy-tailed: a prompt whose XᵀX/n has a large eigenvalue is amplified in every layer
(the block form's x-update is cubic in x), so a 3-layer model that is far better than GD-3 on a typical prompt
(median loss ~10× lower) can lose ~10⁵ on one prompt in 10⁴ and its mean over a few thousand prompts swings with
that one. The comparison with GD is therefore made on the median and on the paired fraction of prompts where the
trained model does better; the mean (with its bootstrap interval and tail share) is reported beside it.

Parameterisation per depth (measured at d = 5, n = 10, zero_block init 0.1, Adam 1e-2, clipping 1.0): the full
form (von Oswald's free W_KQ, W_PV) trains at 1 and 2 layers; at 3 layers it trained here too but its layer 1
matched GD-1 far less well (difference 0.03 vs 0.005), and the full form with ≥ 3 layers is known to diverge on
some data (its label-label products make the forward pass a polynomial of degree 3^L in y), so 3 and more layers
use the block form (sparse + the features → features block of W_PV: GD++'s form). A run that diverges anyway is
reported and left out (a failed claim).

At d = n = 10 one prompt with a large eigenvalue of XᵀX/n in a batch lifts the batch loss of a 3- or 4-layer
block-form model to 1e7–1e9 while the model is fine on the rest (the full size's 4-layer model: mean 1.04, median
0.19 and the largest 205 on 10⁵ fresh prompts), so a run stopped at train.diverge_loss = 1e8 (at lr 0.01, 0.003
and 0.001 alike). The full size therefore trains the block form at lr 0.003 with 250 warm-up steps and no stop on
a large batch loss (block_diverge_loss; NaN or inf still stops it): clipping bounds the step such a batch takes.

Time on 2 CPU cores: quick 15–20 s measured (3 runs of 600 steps, probes of 100 prompts; CI budget 40 s); full
3.8 min (d = n = 10, 1–4 layers, 5000 steps of 1024 prompts, probes of 500 prompts: 17 of 17 claims hold,
docs/results/oswald.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from scipy.optimize import minimize_scalar

from iclab.evaluate import loss_statistics, per_prompt_loss, query_loss
from iclab.experiments.grid import claims_report, training_overrides
from iclab.experiments.recipe import Claim, Recipe, RunSpec, claim_checks, claims_frame
from iclab.learners import GradientDescent, from_model
from iclab.plots import caption, count_axis, outside_legend, recipe_caption, save_figure
from iclab.probe import ProbeSettings, probe_model
from iclab.probe.weights import LayerWeights, plot_weights
from iclab.prompts import Prompts
from iclab.rundir import atomic_write_text
from iclab.runs import load_model
from iclab.seeding import make_generator
from iclab.tasks import make_task

GD_STEP_GRID = tuple(float(v) for v in np.geomspace(0.01, 2.0, 41))  # constant GD steps tried for GD-L's loss


@dataclass(frozen=True)
class Size:
    """One size of the experiment: one run per depth (``params[i]`` is the form of ``layers[i]`` layers)."""

    d: int
    n: int
    layers: tuple[int, ...]
    params: tuple[str, ...]
    steps: int
    batch_size: int
    lr: float = 0.01
    init_scale: float = 0.1  # zero_block init: only W_KQ's x block and W_PV's label entry non-zero
    block_lr: float = 0.01  # the block-form (3+ layer) runs: Adam's learning rate,
    block_warmup: int = 0  # its linear warm-up steps,
    block_diverge_loss: float = 1e8  # and the batch loss that stops a run (heavy-tailed losses: see the module doc)
    probe_prompts: int = 500  # matched prompts (10 queries each); linear probes on 4× as many
    max_iterations: int = 20  # GD-k and Newton-k tried for k = 0..max_iterations
    eval_prompts: int = 8192  # fresh prompts for the trained-vs-GD-L loss (and as many to tune GD-L's step)
    difference_tolerance: float = 0.01  # one layer: relative prediction difference to GD-1 below this
    cosine_tolerance: float = 0.99  # one layer: sensitivity and weight cosines above this
    step_tolerance: float = 0.05  # one layer: |η − η*|/η* below this
    first_layer_tolerance: float = 0.05  # deeper models: layer 1's difference to GD-1 below this
    deep_cosine_tolerance: float = 0.95  # deeper models: every layer's sensitivity cosine with its GD-k above this


FULL = Size(d=10, n=10, layers=(1, 2, 3, 4), params=("full", "full", "block", "block"), steps=5000, batch_size=1024,
            max_iterations=40, block_lr=0.003, block_warmup=250, block_diverge_loss=1e30)  # fmt: skip
QUICK = Size(d=5, n=10, layers=(1, 2, 3), params=("full", "full", "block"), steps=600, batch_size=256,
             probe_prompts=100, eval_prompts=4096)  # fmt: skip
SIZES = {"quick": QUICK, "full": FULL}


def run_id(layers: int, param: str) -> str:
    return f"L{layers}_{param}"


def plan(size_name: str) -> list[RunSpec]:
    """One LSA per depth, in that depth's form, from the zero_block init."""
    size = SIZES[size_name]
    return [
        RunSpec(
            run_id(layers, param),
            (
                f"task.d={size.d}",
                f"task.n={size.n}",
                f"model.layers={layers}",
                f"model.param={param}",
                "model.init=zero_block",
                f"model.init_scale={size.init_scale:g}",
                *training_overrides(size.steps, size.batch_size, size.block_lr if param == "block" else size.lr),
                *(
                    [f"train.warmup_steps={size.block_warmup}", f"train.diverge_loss={size.block_diverge_loss:g}"]
                    if param == "block"
                    else []
                ),
            ),
        )
        for layers, param in zip(size.layers, size.params, strict=True)
    ]


def optimal_step(d: int, n: int) -> float:
    """η* = n/(n + d + 1): the step of the best single GD step ŷ = (η/n) x_qᵀ Xᵀy on x, w ~ N(0, I), σ = 0
    (Mahankali et al. 2024; von Oswald et al.'s one-layer optimum)."""
    return n / (n + d + 1)


def tuned_gd(steps: int, validation: Prompts) -> GradientDescent:
    """GD with ``steps`` steps at the constant step size that does best on ``validation``: the best of
    GD_STEP_GRID, refined by a bounded Brent search on log η between its grid neighbours."""

    def loss(log_lr: float) -> float:
        value = query_loss(GradientDescent(steps, math.exp(log_lr)), validation)[0]
        return value if math.isfinite(value) else math.inf

    grid = np.log(GD_STEP_GRID)
    at = int(np.argmin([loss(v) for v in grid]))
    bounds = (grid[max(at - 1, 0)], grid[min(at + 1, len(grid) - 1)])
    refined = minimize_scalar(loss, bounds=bounds, method="bounded", options={"xatol": 1e-4})
    best = refined.x if refined.fun < loss(grid[at]) else grid[at]
    return GradientDescent(steps, math.exp(best))


def gdpp_cosine(weights: LayerWeights, d: int) -> float:
    """Cosine of W_PV's x → x block (d, d) with −I: GD++'s data transformation x ← (I − γXᵀX/n)x, γ > 0
    (von Oswald et al. Sec. 4; 0 where the block is 0, as in the sparse form and GD itself)."""
    block = weights.pv[:d, :d]
    norm = float(np.linalg.norm(block)) * math.sqrt(d)
    return float(-np.trace(block) / norm) if norm > 0 else 0.0


def measure(size: Size, runs: dict[str, Path], device: str) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Probe every trained depth: results.csv's table (one row per depth and layer: the best GD-k and its
    difference, SimE and sensitivity cosine, the best candidate overall, the weights' cosines with the GD
    construction and of W_PV's x block with GD++'s −I), losses.csv's (one row per depth: the trained model and
    GD-L at its best constant step on the same fresh prompts: mean with its 95 % bootstrap interval, the share
    of the loss the worst 0.1 % of prompts carry, median, and the fraction of prompts where the trained model's
    loss is the lower one) and ``{run_id: [LayerWeights]}``."""
    rows, losses, weights = [], [], {}
    for layers, param in zip(size.layers, size.params, strict=True):
        name = run_id(layers, param)
        if name not in runs:
            continue
        model, cfg, _ = load_model(runs[name], device=device)
        task = make_task(cfg.task, cfg.seed)
        settings = ProbeSettings(prompts=size.probe_prompts, probe_prompts=4 * size.probe_prompts,
                                 max_iterations=size.max_iterations, sweeps=2, seed=cfg.seed)  # fmt: skip
        result = probe_model(model, task, settings, device=device, progress=False)
        weights[name] = result.weights
        gd = result.candidates[result.candidates["family"] == "gd"].set_index("layer")
        for layer, w in zip(result.layers.itertuples(), result.weights, strict=True):
            rows.append({"depth": layers, "param": param, "layer": layer.layer, "readout_loss": layer.readout_loss,
                         "gd_k": int(gd.loc[layer.layer, "iterations"]), "gd_lr": gd.loc[layer.layer, "value"],
                         "gd_difference": gd.loc[layer.layer, "difference"], "gd_sime": gd.loc[layer.layer, "sime"],
                         "gd_sensitivity": gd.loc[layer.layer, "sensitivity"], "best": layer.best,
                         "best_difference": layer.difference, "kq_cosine": w.kq_cosine, "pv_cosine": w.pv_cosine,
                         "pv_label_cosine": w.pv_label_cosine, "pv_x_cosine": gdpp_cosine(w, size.d)})  # fmt: skip
        validation = task.sample_in_chunks(size.eval_prompts, make_generator(cfg.seed, "oswald-validation"),
                                           torch.float64)  # fmt: skip
        test = task.sample_in_chunks(size.eval_prompts, make_generator(cfg.seed, "oswald-test"), torch.float64)
        gd_l = tuned_gd(layers, validation)
        row = {"depth": layers, "param": param, "run_id": name, "gd_steps": layers, "gd_lr": gd_l.lr}
        per_prompt = {"trained": per_prompt_loss(from_model(model.double()), test), "gd": per_prompt_loss(gd_l, test)}
        for who, values in per_prompt.items():
            mean, _, low, high, top_share = (float(v) for v in loss_statistics(values, seed=cfg.seed))
            row |= {f"{who}_loss": mean, f"{who}_low": low, f"{who}_high": high, f"{who}_top_share": top_share,
                    f"{who}_median": float(values.median())}  # fmt: skip
        wins = float((per_prompt["trained"] < per_prompt["gd"]).double().mean())
        row |= {"win_fraction": wins, "win_sem": math.sqrt(wins * (1 - wins) / len(per_prompt["gd"]))}
        losses.append(row)
    return pd.DataFrame(rows), pd.DataFrame(losses), weights


def claims(size: Size, results: pd.DataFrame, losses: pd.DataFrame, diverged: list[str]) -> list[Claim]:
    """Every claim checked, as :class:`Claim` rows (the one-layer ones, then each deeper depth's)."""
    found = [Claim(
        "every depth trains in its form (" + ", ".join(f"{lay}: {par}" for lay, par in zip(size.layers, size.params,
                                                                                              strict=True)) + ")",
        "trained LSAs of 1..L layers (Sec. 3–4)", f"diverged: {', '.join(diverged) or 'none'}", "none diverged",
        not diverged)]  # fmt: skip
    one = results[results["depth"] == 1]
    if len(one):
        r = one.iloc[0]
        eta_star = optimal_step(size.d, size.n)
        found += [
            Claim("one layer = one GD step: the trained prediction equals GD-1's",
                  "Fig. 2: preds diff ≈ 0 between the trained 1-layer LSA and GD with the optimal η",
                  f"‖ŷ − ŷ_GD-1‖²/‖ŷ‖² = {r.gd_difference:.2e} (GD k = {r.gd_k})",
                  f"< {size.difference_tolerance:g} and k = 1",
                  bool(r.gd_difference < size.difference_tolerance and r.gd_k == 1)),
            Claim("one layer: input sensitivities equal GD-1's", "Fig. 2: model cos ≈ 1",
                  f"cos(∂ŷ/∂x_q, ∂ŷ_GD/∂x_q) = {r.gd_sensitivity:.5f}", f"> {size.cosine_tolerance:g}",
                  bool(r.gd_sensitivity > size.cosine_tolerance)),
            Claim("one layer: the step is the optimal one, η* = n/(n + d + 1)",
                  "GD with the optimal learning rate (the best single step on N(0, I) data)",
                  f"fitted η = {r.gd_lr:.4f} vs η* = {eta_star:.4f} ({r.gd_lr / eta_star - 1:+.2%})",
                  f"within {size.step_tolerance:.0%}", bool(abs(r.gd_lr / eta_star - 1) < size.step_tolerance)),
            Claim("one layer: the weights are the GD construction (W_KQ ∝ I on x, W_PV on the label)",
                  "Fig. 2 / Prop. 1: W_KQ = I on x, W_PV = −η e_y e_yᵀ",
                  f"cos W_KQ = {r.kq_cosine:.4f}, cos W_PV label row = {r.pv_label_cosine:.4f}",
                  f"both > {size.cosine_tolerance:g}",
                  bool(min(r.kq_cosine, r.pv_label_cosine) > size.cosine_tolerance)),
        ]  # fmt: skip
    for depth, rows in results[results["depth"] > 1].groupby("depth"):
        rows = rows.sort_values("layer")
        first = rows.iloc[0]
        ks = rows["gd_k"].to_numpy()
        loss = losses.set_index("depth").loc[depth]
        found += [
            Claim(f"{depth} layers: layer 1's read-out is one GD step", "Sec. 4: the first layer is GD-1 (GD++)",
                  f"‖ŷ₁ − ŷ_GD-1‖²/‖ŷ₁‖² = {first.gd_difference:.2e} (GD k = {first.gd_k})",
                  f"< {size.first_layer_tolerance:g} and k = 1",
                  bool(first.gd_difference < size.first_layer_tolerance and first.gd_k == 1)),
            Claim(f"{depth} layers: the GD steps matched grow with the layer",
                  "Sec. 4: layer ℓ of the trained model ≈ ℓ steps of GD (GD++: more)",
                  "GD k per layer: " + " → ".join(str(k) for k in ks), "never falls, grows overall",
                  bool((ks[1:] >= ks[:-1]).all() and ks[-1] > ks[0])),
            Claim(f"{depth} layers: every layer's input sensitivity matches its GD-k",
                  "Fig. 3: model cos ≈ 1 against GD / GD++",
                  "cos per layer: " + ", ".join(f"{v:.4f}" for v in rows["gd_sensitivity"]),
                  f"all > {size.deep_cosine_tolerance:g}", bool((rows["gd_sensitivity"] > size.deep_cosine_tolerance)
                                                               .all())),
            Claim(f"{depth} layers: the trained model beats {depth} GD steps at the best constant step",
                  "Fig. 3: trained Transformers outperform GD with as many steps (as GD++ does)",
                  f"median loss {loss.trained_median:.3g} vs GD-{depth}'s {loss.gd_median:.3g} (η = {loss.gd_lr:.3g}); "
                  f"lower on {loss.win_fraction:.1%} ± {loss.win_sem:.1%} of prompts (mean {loss.trained_loss:.3g} "
                  f"vs {loss.gd_loss:.3g}, heavy-tailed)", "median lower, and lower on > 50 % of prompts (2 s.e.)",
                  bool(loss.trained_median < loss.gd_median and loss.win_fraction - 2 * loss.win_sem > 0.5)),
        ]  # fmt: skip
    return found


def plot_layer_match(results: pd.DataFrame, path: Path, caption_text: str) -> None:
    """layer_match.png: per layer, one line per depth: the relative difference to the best GD-k (log), one
    minus the sensitivity cosine with it (log) and the k matched."""
    fig, axes = plt.subplots(1, 3, figsize=(13.0, 3.9), layout="constrained")
    panels = (("gd_difference", "‖ŷ_layer − ŷ_GD-k‖² / ‖ŷ_layer‖²", "prediction difference to the best GD-k"),
              ("gd_sensitivity", "1 − cos(∂ŷ/∂x_q) with the best GD-k", "input-sensitivity mismatch"),
              ("gd_k", "GD steps k matched", "GD steps matched by each layer"))  # fmt: skip
    floor = 1e-8
    for ax, (column, label, title) in zip(axes, panels, strict=True):
        for depth, rows in results.groupby("depth"):
            values = rows[column].to_numpy()
            shown = np.maximum(1 - values, floor) if column == "gd_sensitivity" else values
            ax.plot(rows["layer"], shown, "o-", label=f"{depth}-layer LSA ({rows['param'].iloc[0]} form)")
        if column != "gd_k":
            ax.set_yscale("log")
        else:
            count_axis(ax.yaxis)
            layers = np.arange(1, int(results["layer"].max()) + 1)
            ax.plot(layers, layers, color="0.5", linestyle=":", label="k = layer (one GD step per layer)")
        ax.set_xticks(sorted(results["layer"].unique()))
        ax.set_xlabel("layer ℓ (read-out after it)")
        ax.set_ylabel(label)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    outside_legend(axes[-1])
    caption(fig, caption_text)
    save_figure(fig, path)


def plot_losses(losses: pd.DataFrame, path: Path, caption_text: str) -> None:
    """losses.png: query loss on the same fresh prompts of the trained L-layer LSA and of L GD steps at the best
    constant step, against L: the mean with its 95 % bootstrap interval (solid) and the median (dashed), log y."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for who, label, colour in (("trained", "trained LSA with L layers", "C0"),
                               ("gd", "L steps of GD, best constant step", "C1")):  # fmt: skip
        mean = losses[f"{who}_loss"]
        bars = np.stack([mean - losses[f"{who}_low"], losses[f"{who}_high"] - mean])
        ax.errorbar(losses["depth"], mean, bars, fmt="o-", capsize=3, color=colour, label=f"{label}: mean")
        ax.plot(losses["depth"], losses[f"{who}_median"], "s--", color=colour, label=f"{label}: median")
    ax.set_yscale("log")
    ax.set_xticks(losses["depth"].tolist())
    ax.set_xlabel("L (layers of the LSA, steps of GD)")
    ax.set_ylabel("query MSE on fresh prompts\n(mean with 95 % bootstrap interval; median)")
    ax.set_title("trained LSA vs GD with as many steps")
    ax.grid(alpha=0.3)
    outside_legend(ax)
    caption(fig, caption_text)
    save_figure(fig, path)


def weight_rows(weights: dict[str, list[LayerWeights]]) -> list[LayerWeights]:
    """The heads shown in weights.png: the shallowest and the deepest model trained (the one-layer model and
    every layer of the deepest), ``weights`` in plan order."""
    names = list(weights)
    shown = dict.fromkeys([names[0], names[-1]]) if names else {}
    return [row for name in shown for row in weights[name]]


def analyse(out: Path, size_name: str, runs: dict[str, Path], device: str, progress: bool) -> dict:
    """Probe each trained depth (a diverged one, missing from ``runs``, is reported and skipped), compare its
    loss with GD's; write results.csv, losses.csv, claims.csv, figures/ and report.md into ``out``."""
    size = SIZES[size_name]
    diverged = [spec.run_id for spec in plan(size_name) if spec.run_id not in runs]
    results, losses, weights = measure(size, runs, device)
    found = claims(size, results, losses, diverged)
    table = claims_frame(found)
    atomic_write_text(out / "results.csv", results.to_csv(index=False))
    atomic_write_text(out / "losses.csv", losses.to_csv(index=False))
    atomic_write_text(out / "claims.csv", table.to_csv(index=False))
    setting = ("y = wᵀx, x, w ~ N(0, I), no noise; LSA forms per depth as listed, zero_block init; Adam, clipping "
               "1.0; probed on the full context against GD-k (step fitted per layer and k)")  # fmt: skip
    caption_text = recipe_caption("oswald", size_name, out, size, setting)
    if len(results):
        plot_layer_match(results, out / "figures" / "layer_match.png", caption_text)
        plot_losses(losses, out / "figures" / "losses.png", caption_text)
        plot_weights(weight_rows(weights), out / "figures" / "weights.png", caption_text=caption_text)
    tables = {"Each layer against GD-k (probe) and the weights against the GD construction": results,
              "Trained LSA vs L steps of GD at the best constant step (same fresh prompts)": losses}  # fmt: skip
    report = claims_report("von Oswald et al.: trained LSA = gradient descent, layer by layer", size_name, size,
                           setting, found, tables)  # fmt: skip
    atomic_write_text(out / "report.md", report)
    return {"results": results, "losses": losses, "claims": table, "checks": claim_checks(found)}


RECIPE = Recipe(
    name="oswald",
    paper="von Oswald et al., ICML 2023",
    claim="a trained one-layer LSA is one GD step with the optimal step (predictions, sensitivities, weights); "
    "deeper ones match more GD steps layer by layer and beat GD with as many steps",
    plan=plan,
    analyse=analyse,
    sizes=tuple(SIZES),
    allow_diverged=True,
)

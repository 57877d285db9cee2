"""The whole probe of one model: per-layer read-outs and linear probes, algorithm matching, the weights beside
the GD construction and the piecewise-constancy sweep; ``write_probe`` writes the CSVs, figures and report.md.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import Tensor

from iclab.config import describe
from iclab.errors import UserError
from iclab.evaluate import ErrorCurve, error_curve, query_loss
from iclab.kernels import Kernel
from iclab.learners import LeastSquares, from_model
from iclab.models import InContextModel
from iclab.plots import caption, clipped_label, config_caption, count_axis, markdown_table, outside_legend, save_figure
from iclab.probe.candidates import candidate_families, descriptor_families
from iclab.probe.matching import (
    Matcher,
    error_cosines,
    input_sensitivity,
    sensitivity_cosine,
)
from iclab.probe.piecewise import Sweep, plot_sweeps, summarise, sweep_queries
from iclab.probe.readout import (
    LayerReadout,
    LinearProbe,
    ProbeReadout,
    all_prefix_probe_readouts,
    all_prefix_readouts,
    fit_linear_probes,
)
from iclab.probe.weights import LayerWeights, compare_with_gd_construction, plot_weights
from iclab.rundir import atomic_write_text, run_outputs
from iclab.runs import load_model
from iclab.seeding import make_generator
from iclab.tasks import Task


class ProbeError(UserError):
    """Probe settings that do not fit the run (e.g. a first prefix beyond its n)."""


@dataclass(frozen=True)
class ProbeSettings:
    """How much to probe: matched prompts and their query points, prompts for fitting the linear probes, the
    iteration counts 0..max_iterations tried (GD's: ``gd_steps`` where given, e.g. a log grid into Fu et al.'s
    thousands), the metric that fits hyper-parameters and ranks candidates, the first context prefix compared
    (None: only the full context n, where a model trained at one n is in distribution; 1: every prefix, as Fu
    et al.), line sweeps."""

    prompts: int = 500
    queries: int = 10
    first_prefix: int | None = None
    probe_prompts: int = 2000
    max_iterations: int = 20
    metric: str = "difference"
    sweeps: int = 20
    seed: int = 0
    readout: str = "model"  # what a layer predicts: the model's own read-out, or a fitted linear "probe"
    gd_steps: tuple[int, ...] | None = None  # GD's step counts (its iterates in closed form); None: 0..max_iterations


@dataclass
class ProbeResult:
    """Everything the probe measured (see :func:`write_probe` for the files); ``cosines`` holds, for each layer
    and family, every prompt's cosine of errors with the family's best match (SimE is their mean)."""

    layers: pd.DataFrame  # one row per layer: losses, best match and the iteration maps
    candidates: pd.DataFrame  # one row per layer and family: its best (refined) match
    grid: pd.DataFrame  # one row per layer, family and iteration count (grid-fitted hyper-parameter)
    curves: dict[str, ErrorCurve]
    weights: list[LayerWeights]
    sweeps: list[Sweep]
    piecewise: dict[str, float]
    reference_name: str
    settings: ProbeSettings
    description: dict[str, str] = field(default_factory=dict)
    caption: str = ""  # under every figure: which run and config (default: the title write_probe is given)
    cosines: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)  # (layer, family) → (B,): per prompt


def _candidate_kernels(model: InContextModel, task: Task) -> tuple[Kernel, ...]:
    """Functional-GD kernels worth trying: the one the model's attention induces and the task's own (linear
    kernels are left out: functional GD with them is GD)."""
    kernels = []
    for kernel in (model.kernel, task.kernel):
        if kernel is not None and kernel.name != "linear" and kernel not in kernels:
            kernels.append(kernel)
    return tuple(kernels)


def _preconditioner(task: Task) -> torch.Tensor | None:
    """Λ⁻¹ of a task with one fixed x covariance other than I (else preconditioned GD is GD or undefined)."""
    x_cov = task.x_covariance()
    if x_cov is None:
        return None
    eye = torch.eye(x_cov.shape[0], dtype=x_cov.dtype)
    return None if torch.allclose(x_cov, eye) else torch.linalg.inv(x_cov)


def probe_model(
    model: InContextModel, task: Task, settings: ProbeSettings = ProbeSettings(), device: str = "cpu",
    progress: bool = True,
) -> ProbeResult:  # fmt: skip
    """Probe ``model`` (any :class:`~iclab.models.base.InContextModel`) on fresh prompts of ``task``, in float64
    on ``device``; the weights are compared with the GD construction where the model has an attention stack."""
    say = print if progress else (lambda *_: None)
    model = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
    task = task.with_changes(n_queries=settings.queries)
    first_prefix = task.n if settings.first_prefix is None else settings.first_prefix
    if not 1 <= first_prefix <= task.n:
        raise ProbeError(f"first_prefix must be in 1..{task.n} (the task's n), got {first_prefix}")
    prompts = task.sample_in_chunks(settings.prompts, make_generator(settings.seed, "probe"), torch.float64)
    prompts = prompts.to(device)
    fit_prompts = task.sample_in_chunks(settings.probe_prompts, make_generator(settings.seed, "probe-fit"),
                                        torch.float64).to(device)  # fmt: skip
    layers = model.num_layers

    say(f"probe: read-outs and linear probes of {layers} layer(s) on {prompts.batch} prompts")
    if settings.readout == "probe":  # Fu et al.: a read-out fitted after each layer, shared by the prefixes
        probes = fit_linear_probes(model, fit_prompts, first_prefix=first_prefix)
        readouts = all_prefix_probe_readouts(model, probes, prompts, first_prefix)
    else:
        probes = fit_linear_probes(model, fit_prompts)
        readouts = all_prefix_readouts(model, prompts, first_prefix)  # (L, B, n − first_prefix + 1, m)
    curves = {}
    for layer in range(1, layers + 1):
        curves[f"layer {layer}"] = error_curve(LayerReadout(model, layer), prompts)
        curves[f"layer {layer} probe"] = error_curve(ProbeReadout(model, probes[layer - 1]), prompts)

    say("probe: candidate algorithms (every iteration count, every grid value)")
    families = candidate_families(prompts, _candidate_kernels(model, task), _preconditioner(task), settings.gd_steps)
    families += descriptor_families(prompts, task)
    matcher = Matcher(families, prompts, settings.max_iterations, settings.metric, first_prefix)
    curves["ols"] = error_curve(LeastSquares(), prompts)

    layer_rows, candidate_rows, grid_rows, cosines = [], [], [], {}
    for layer in range(1, layers + 1):
        readout = readouts[layer - 1]
        grid = matcher.grid_matches(layer, readout)
        grid_rows += [asdict(match) for match in grid]
        model_sensitivity = input_sensitivity(partial(_layer_prediction, model, layer, probes, settings.readout),
                                              prompts)  # fmt: skip
        best = matcher.best_per_family(grid, readout)
        for match in best:
            learner_sensitivity = input_sensitivity(matcher.learner(match).predict, prompts)
            match.sensitivity = sensitivity_cosine(model_sensitivity, learner_sensitivity)
            candidate_rows.append({**asdict(match), "label": match.label()})
            cosines[(layer, match.family)] = (
                error_cosines(matcher.predictions(match), readout, prompts.yq).cpu().numpy()
            )
        top = best[0]
        row = {
            "layer": layer,
            "readout_loss": float(((readout[:, -1] - prompts.yq) ** 2).mean()),
            "probe_loss": query_loss(ProbeReadout(model, probes[layer - 1]), prompts)[0],
            "best": top.label(),
            "difference": top.difference,
            "sime": top.sime,
            "sensitivity": top.sensitivity,
        }
        chosen = {match.family: match for match in best}
        for family in families:
            if family.iterative:
                row[f"{family.name}_k"] = chosen[family.name].iterations
        layer_rows.append(row)
        say(f"probe: layer {layer}: {top.label()} (difference {top.difference:.3g}, SimE {top.sime:.4f})")

    reference = task.reference_learner()
    sweeps = sweep_queries(from_model(model), reference, prompts, task.x_on_sphere,
                           make_generator(settings.seed, "sweeps"), count=settings.sweeps)  # fmt: skip
    return ProbeResult(
        layers=pd.DataFrame(layer_rows),
        candidates=pd.DataFrame(candidate_rows),
        grid=pd.DataFrame(grid_rows),
        curves=curves,
        weights=compare_with_gd_construction(model),
        sweeps=sweeps,
        piecewise=summarise(sweeps),
        reference_name=reference.name,
        settings=settings,
        cosines=cosines,
    )


def _layer_prediction(
    model: InContextModel, layer: int, probes: list[LinearProbe], readout: str, xs: Tensor, ys: Tensor, xq: Tensor,
    descriptor: Tensor | None,
) -> Tensor:  # fmt: skip
    """What layer ``layer`` predicts, differentiable in xq: (B, m) — the model's read-out, or its fitted probe."""
    if readout == "model":
        return model.layer_readouts(xs, ys, xq, descriptor)[layer - 1]
    return probes[layer - 1].predict(model.layer_states(xs, ys, xq, descriptor)[layer - 1])


# --------------------------------------------------------------------------- files


def plot_iterations(result: ProbeResult, path: Path, caption_text: str = "") -> None:
    """iterations.png: for each iterative family a layers × iterations heatmap of the metric (SimE, or
    log10 of the difference), one column per count tried (GD's may be a log grid: the ticks name the counts),
    the best iteration count of each layer marked (the title says so: no legend on the heatmap)."""
    grid = result.grid[result.grid["iterations"].notna()]
    families = list(dict.fromkeys(grid["family"]))
    fig, axes = plt.subplots(1, len(families), figsize=(5.4 * len(families), 0.5 * result.layers.shape[0] + 2.4),
                             squeeze=False, layout="constrained")  # fmt: skip
    sime = result.settings.metric == "sime"
    for ax, family in zip(axes[0], families, strict=True):
        rows = grid[grid["family"] == family]
        table = rows.pivot(index="layer", columns="iterations", values="sime" if sime else "difference")
        values = table.to_numpy() if sime else np.log10(table.to_numpy().clip(1e-16, 1e16))
        image = ax.imshow(values, aspect="auto", cmap="viridis" if sime else "viridis_r", origin="lower",
                          extent=(-0.5, table.shape[1] - 0.5, 0.5, table.shape[0] + 0.5))  # fmt: skip
        best = values.argmax(1) if sime else values.argmin(1)
        ax.plot(best, table.index.to_numpy(), "r*", ms=9)
        counts = table.columns.to_numpy().astype(int)
        contiguous = np.array_equal(counts, np.arange(counts[0], counts[0] + len(counts)))
        every = max(len(counts) // 12, 1)
        ax.set_xticks(range(0, len(counts), every), [str(c) for c in counts[::every]], fontsize=7,
                      rotation=0 if contiguous else 60)  # fmt: skip
        ax.set_xlabel(f"{family} iterations k" + ("" if contiguous else " (one column per count tried)"))
        ax.set_ylabel("layer")
        ax.set_yticks(table.index.to_numpy())
        ax.set_title(f"{family} (red stars: best k per layer)", fontsize=9)
        fig.colorbar(image, ax=ax, label="SimE" if sime else "log10 relative difference")
    if caption_text:
        caption(fig, caption_text)
    save_figure(fig, path)


def plot_layer_curves(result: ProbeResult, path: Path, caption_text: str = "") -> None:
    """layer_curves.png: query error against context length of each layer's read-out (solid) and linear
    probe (dashed), with least squares for reference (clipped below at 1e-12, its label then says so)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    layers = result.layers["layer"].tolist()
    for index, layer in enumerate(layers):
        colour = plt.cm.viridis(index / max(len(layers) - 1, 1))
        for suffix, style in (("", "-"), (" probe", "--")):
            curve = result.curves[f"layer {layer}{suffix}"]
            ax.plot(curve.ks.numpy(), curve.mse.numpy(), style, color=colour, label=f"layer {layer}{suffix}")
    ols = result.curves["ols"]
    floor = 1e-12
    ax.plot(ols.ks.numpy(), ols.mse.numpy().clip(floor), "k:", label=clipped_label("least squares", ols.mse.numpy(),
                                                                                    floor))  # fmt: skip
    ax.set_yscale("log")
    count_axis(ax.xaxis)
    ax.set_xlabel("number of in-context examples")
    ax.set_ylabel("query MSE")
    outside_legend(ax, ncol=1 if len(layers) <= 8 else 2)
    if caption_text:
        caption(fig, caption_text)
    save_figure(fig, path)


def report_text(result: ProbeResult, title: str) -> str:
    """report.md: the settings, the which-algorithm table, every family's best match per layer, the
    iteration maps, the weights against the GD construction and the piecewise-constancy numbers."""
    s = result.settings
    lines = [f"# Probe: {title}", ""]
    lines += [f"- {key}: {value}" for key, value in result.description.items()]
    first = "n (full context only)" if s.first_prefix is None else str(s.first_prefix)
    lines += [f"- prompts matched: {s.prompts} with {s.queries} queries each, context prefixes from {first} to n; "
              f"linear probes fitted on {s.probe_prompts} other prompts",
              f"- iterations tried: 0..{s.max_iterations}{_gd_steps_text(s)}; metric fitting hyper-parameters and "
              f"ranking: {s.metric}",
              "", "## Which algorithm (best match per layer)", "",
              markdown_table(result.layers.round(6)), "",
              "difference: ‖ŷ_layer − ŷ_alg‖²/‖ŷ_layer‖² over all prefixes; sime: Fu et al.'s similarity of errors; "
              "sensitivity: cosine of ∂ŷ/∂x_q (von Oswald et al.); readout_loss / probe_loss: query MSE of the "
              "layer's own read-out and of a linear probe on its residual stream; *_k: the best iteration count "
              "of that family.", "", "## Every family's best match per layer", ""]  # fmt: skip
    table = result.candidates[["layer", "label", "difference", "sime", "sensitivity"]]
    lines += [markdown_table(table.round(6)), "", "## Weights against the GD construction", ""]
    weights = pd.DataFrame([{"layer": w.layer, "head": w.head, "cos W_KQ": w.kq_cosine, "cos W_PV": w.pv_cosine,
                             "cos W_PV label row": w.pv_label_cosine} for w in result.weights])  # fmt: skip
    lines += [markdown_table(weights.round(4)), "", "## Piecewise constancy along query lines", ""]
    lines += [
        f"{s.sweeps} sweeps; reference {result.reference_name}; a plateau is ≥ 3 steps with |Δŷ| below 0.1 "
        "of the curve's own mean |Δ| (the same rule applied to the reference is the control).",
        "",
    ]
    lines += [f"- {key}: {value:.4g}" for key, value in result.piecewise.items()]
    lines += ["", "Figures: figures/iterations.png, figures/layer_curves.png, figures/weights.png, "
              "figures/piecewise.png"]  # fmt: skip
    return "\n".join(lines) + "\n"


def _gd_steps_text(settings: ProbeSettings) -> str:
    """Where GD has its own step counts: they, in words."""
    if settings.gd_steps is None:
        return ""
    return f" (GD: {', '.join(map(str, settings.gd_steps))} steps)"


def write_probe(result: ProbeResult, out: Path, title: str) -> None:
    """layers.csv, candidates.csv, grid.csv, report.md and figures/ in ``out`` (atomic writes)."""
    out = Path(out)
    atomic_write_text(out / "layers.csv", result.layers.to_csv(index=False))
    atomic_write_text(out / "candidates.csv", result.candidates.to_csv(index=False))
    atomic_write_text(out / "grid.csv", result.grid.to_csv(index=False))
    shown = result.caption or title
    plot_iterations(result, out / "figures" / "iterations.png", shown)
    plot_layer_curves(result, out / "figures" / "layer_curves.png", shown)
    plot_weights(result.weights, out / "figures" / "weights.png", caption_text=shown)
    plot_sweeps(result.sweeps, result.reference_name, out / "figures" / "piecewise.png", caption_text=shown)
    atomic_write_text(out / "report.md", report_text(result, title))


def probe_run(
    run_dir: Path, out: Path | None = None, settings: ProbeSettings = ProbeSettings(), device: str = "cpu",
    progress: bool = True,
) -> ProbeResult:  # fmt: skip
    """Probe the trained model of ``run_dir`` and write the results into ``out`` (default run_dir/probe; inside
    the run dir they are recorded in its manifest.json)."""
    from iclab.tasks import make_task

    run_dir = Path(run_dir)
    model, cfg, step = load_model(run_dir, device=device)
    if settings.first_prefix is None and cfg.train.curriculum.enabled:  # trained on n_start..n examples
        settings = replace(settings, first_prefix=min(cfg.train.curriculum.n_start, cfg.task.n))
    result = probe_model(model, make_task(cfg.task, cfg.seed), settings, device=device, progress=progress)
    result.description = {"run": str(run_dir), "step": str(step), "model": describe(cfg.model),
                          "task": describe(cfg.task)}  # fmt: skip
    result.caption = "probe of " + config_caption(cfg, run_dir, step)
    out = Path(out) if out is not None else run_dir / "probe"
    title = f"{run_dir.name} (step {step})"
    if out.resolve().is_relative_to(run_dir.resolve()):  # files in the run dir go into its manifest.json
        with run_outputs(run_dir) as staging:
            write_probe(result, staging / out.resolve().relative_to(run_dir.resolve()), title)
    else:
        write_probe(result, out, title)
    return result

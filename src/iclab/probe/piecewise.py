"""Piecewise constancy (Nath et al. 2024): sweep the query along a line and look for plateaus.

For a prompt, the query moves along a line through x_q (a great circle when the inputs lie on the sphere)
while the context stays fixed; the model's prediction ŷ(t) is compared with a smooth reference (the task's
Bayes predictor) on the same points. A step t_i → t_{i+1} is *flat* when |Δŷ| is below ``flat_tol`` times
the curve's own mean |Δ| (scale-free); a plateau is a run of at least ``min_run`` flat steps. The same rule
applied to the reference is the control: a smooth curve is flat only near its extrema (a sinusoid along a
great circle: two short plateaus), a piecewise-constant one almost everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor

from iclab.learners import Learner
from iclab.plots import caption, outside_legend, save_figure
from iclab.prompts import Prompts


@dataclass
class Sweep:
    """One line sweep: positions t (T,), the model's and the reference's predictions (T,)."""

    t: np.ndarray
    model: np.ndarray
    reference: np.ndarray


@dataclass
class PlateauStats:
    """Plateau count, fraction of flat steps inside plateaus, and total variation Σ|Δ| of one curve."""

    plateaus: int
    flat_fraction: float
    total_variation: float


def plateau_stats(values: np.ndarray, threshold: float, min_run: int = 3) -> PlateauStats:
    """values: (T,) → plateaus (runs of ≥ ``min_run`` steps with |Δ| < threshold)."""
    steps = np.abs(np.diff(values))
    flat = steps < threshold
    plateaus, in_plateaus, run = 0, 0, 0
    for is_flat in [*flat, False]:
        if is_flat:
            run += 1
            continue
        if run >= min_run:
            plateaus += 1
            in_plateaus += run
        run = 0
    return PlateauStats(plateaus, in_plateaus / max(len(steps), 1), float(steps.sum()))


def _line(xq: Tensor, sphere: bool, points: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Positions t (T,) and points x(t) (T, d) through ``xq: (d,)`` along a random direction."""
    direction = torch.randn(xq.shape, generator=generator, dtype=torch.float64).to(xq)
    if sphere:
        start = xq / xq.norm()
        direction = direction - (direction @ start) * start
        direction = direction / direction.norm()
        t = torch.linspace(-math.pi, math.pi, points, dtype=xq.dtype, device=xq.device)
        return t, torch.cos(t).unsqueeze(-1) * start + torch.sin(t).unsqueeze(-1) * direction
    direction = direction / direction.norm()
    t = torch.linspace(-3.0, 3.0, points, dtype=xq.dtype, device=xq.device)
    return t, xq + t.unsqueeze(-1) * direction


def sweep_queries(
    model: Learner, reference: Learner, prompts: Prompts, sphere: bool, generator: torch.Generator,
    count: int = 20, points: int = 400,
) -> list[Sweep]:  # fmt: skip
    """One sweep for each of the first ``count`` prompts (its first query, a random direction)."""
    sweeps = []
    for b in range(min(count, prompts.batch)):
        t, line = _line(prompts.xq[b, 0], sphere, points, generator)
        side = None if prompts.descriptor is None else prompts.descriptor[b : b + 1]
        xs, ys, xq = prompts.xs[b : b + 1], prompts.ys[b : b + 1], line.unsqueeze(0)
        sweeps.append(Sweep(t.cpu().numpy(), model.predict(xs, ys, xq, side)[0].double().cpu().numpy(),
                            reference.predict(xs, ys, xq, side)[0].double().cpu().numpy()))  # fmt: skip
    return sweeps


def summarise(sweeps: list[Sweep], flat_tol: float = 0.1, min_run: int = 3) -> dict[str, float]:
    """Mean plateau count and flat fraction of the model and of the reference, the mean ratio of total
    variations TV(model)/TV(reference), and the relative L2 distance between the curves."""
    rows = []
    for sweep in sweeps:
        mine, theirs = (plateau_stats(curve, flat_tol * float(np.abs(np.diff(curve)).mean()), min_run)
                        for curve in (sweep.model, sweep.reference))  # fmt: skip
        distance = np.linalg.norm(sweep.model - sweep.reference) / max(np.linalg.norm(sweep.reference), 1e-300)
        rows.append((mine.plateaus, theirs.plateaus, mine.flat_fraction, theirs.flat_fraction,
                     mine.total_variation / max(theirs.total_variation, 1e-300), distance))  # fmt: skip
    mean = np.mean(np.array(rows), axis=0)
    keys = ("plateaus_model", "plateaus_reference", "flat_fraction_model", "flat_fraction_reference",
            "tv_ratio", "relative_distance")  # fmt: skip
    return {key: float(value) for key, value in zip(keys, mean, strict=True)}


def plot_sweeps(sweeps: list[Sweep], reference_name: str, path, count: int = 3, caption_text: str = "") -> None:
    """piecewise.png: the model's and the reference's predictions along the first ``count`` sweeps (the
    legend to the right of the last panel)."""
    shown = sweeps[:count]
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.4), squeeze=False)
    for index, (ax, sweep) in enumerate(zip(axes[0], shown, strict=True)):
        ax.plot(sweep.t, sweep.reference, color="gray", ls="--", label=reference_name)
        ax.plot(sweep.t, sweep.model, label="model")
        ax.set_xlabel("position t along the line")
        ax.set_title(f"prompt {index}")
    axes[0][0].set_ylabel("prediction at x(t)")
    outside_legend(axes[0][-1], *axes[0][0].get_legend_handles_labels())
    if caption_text:
        caption(fig, caption_text)
    save_figure(fig, path)

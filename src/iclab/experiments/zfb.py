"""Zhang, Frei, Bartlett (JMLR 2024, "Trained transformers learn linear models in-context"; ZFB) and Ahn, Cheng,
Daneshmand, Sra (NeurIPS 2023, "Transformers learn to implement preconditioned gradient descent for in-context
learning"): on anisotropic x a trained linear self-attention (LSA) runs preconditioned gradient descent.

Setting (PAPERS.md, "One-layer LSA theory"): x ~ N(0, Λ), Λ = Q diag(λ) Qᵀ with λ = ``x_cov_diag`` and Q = I
(``diag``) or one fixed Haar rotation drawn from the seed (``rotated``: ``task.rotation=fixed``, so no optimum
below is diagonal); noise-free labels y = wᵀx. Every model is an LSA in the sparse form (W_KQ on x only,
W_PV on the label only), balanced initialisation (ZFB's), Adam with clipping 1.0, fresh prompts every step.

- **ZFB (one layer, w ~ N(0, I))**: the LSA predicts ŷ = x_qᵀ Γ h, h = (1/n) Σ_i y_i x_i, Γ = −v Aᵀ; trained,
  Γ → Γ* = ((1 + 1/n) Λ + tr(Λ)/n · I)⁻¹ (ZFB's main theorem; the same optimum as Ahn et al.'s one-layer
  theorem). The recipe writes this closed form itself (:func:`zfb_gamma`) and checks it against the independent
  derivation Γ* = Σ_w Λ M⁻¹ of :func:`iclab.theory.lsa.lsa_optimum`. Over a grid of n, both bases: the trained
  Γ against Γ*, the exact loss of the trained weights (:func:`lsa_loss`, no Monte Carlo) against L*(n), and
  Γ* → Λ⁻¹ as n → ∞ (the preconditioner of Newton's method / whitened GD), trained Γ beside it. Beside the
  training, the gradient flow ZFB analyse, integrated on the exact population loss from the balanced init
  (:func:`iclab.theory.gradient_flow.gradient_flow`), reaches L* at every n.
- **Ahn et al. (1–3 layers, w ~ N(0, Λ⁻¹), rotated Λ)**: their multi-layer theorem has a critical point where
  every layer's key-query block is A_ℓ = a_ℓ Λ⁻¹ (L steps of GD preconditioned by Λ⁻¹); for one layer the
  optimum is Γ* = n/(n + d + 1) · Λ⁻¹ (Σ_w Λ M⁻¹ with Σ_w = Λ⁻¹). Per trained layer: the cosine (Frobenius)
  of Γ_ℓ = −v_ℓ A_ℓᵀ with Λ⁻¹ and with I, and a_ℓ = ⟨Γ_ℓ, Λ⁻¹⟩/‖Λ⁻¹‖²; per model: its loss on fresh prompts
  against the one-layer optimum's on the same prompts (95 % bootstrap intervals of the paired difference).

What :mod:`iclab.experiments.mahankali` does not: the n grid and the n → ∞ limit, a rotated Λ, the closed form
checked against the general one, the gradient flow, and depth.

Tests and controls. A trained Γ is judged against ZFB's Γ* by ‖Γ − Γ*‖/‖Γ*‖ (and its exact loss against L*)
at half the distance from Γ* to the nearest named wrong answer: Γ* × 0.95, Λ⁻¹ (the n → ∞ preconditioner, wrong
at finite n) and the best plain GD step ηI (no preconditioning); these distances do not depend on the rotation.
A layer's alignment with Λ⁻¹ is decided by cos(Γ_ℓ, Λ⁻¹) above the midpoint between 1 and cos(I, Λ⁻¹), so that
plain GD (Γ_ℓ ∝ I) is rejected; "deeper beats the one-layer optimum" by the paired 95 % interval of the loss
difference on shared fresh prompts, which the one-layer optimum itself (difference 0) fails. The flows are
theory checks, controlled by the flow from the zero initialisation (a stationary point).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from iclab.evaluate import loss_statistics, paired_prompt_losses
from iclab.experiments.claims import (
    NO_DIFFERENCE,
    REPRODUCTION,
    THEORY,
    Claim,
    ClaimResult,
    Estimate,
    above,
    below,
    interval_below,
    reading,
    shrinks,
    trend,
)
from iclab.experiments.grid import RunSpec, training_overrides
from iclab.experiments.recipe import Context, Recipe, register_recipe
from iclab.learners import from_model
from iclab.models.lsa import LSA
from iclab.plots import caption, clipped_label, outside_legend, readable_log_axis, save_figure
from iclab.probe.weights import frobenius_cosine
from iclab.rundir import atomic_write_text
from iclab.runs import load_model
from iclab.seeding import make_generator
from iclab.tasks import make_task
from iclab.theory.descriptors import task_problem
from iclab.theory.gradient_flow import gradient_flow, initial_weights
from iclab.theory.lsa import lsa_loss, lsa_moment, lsa_optimum
from iclab.theory.lsa_weights import effective_gamma, lsa_from_gamma

BASES = {"diag": "none", "rotated": "fixed"}  # basis of Λ → task.rotation
LABELS = {"diag": "diagonal Λ", "rotated": "rotated Λ"}
SCALED = 0.95  # the perturbed-optimum control: Γ* × 0.95
ZFB = "ZFB Thm 4.1"
AHN_ONE, AHN_DEEP = "Ahn et al. Thm 1", "Ahn et al. Sec. 4"


@dataclass(frozen=True)
class Size:
    """One size of the experiment (per seed; every run a sparse LSA from the balanced init)."""

    d: int
    x_cov_diag: tuple[float, ...]  # eigenvalues λ of Λ (length d)
    n_grid: tuple[int, ...]  # one-layer ZFB runs at each n, in each basis
    depth_n: int  # context length of the depth study (Ahn et al.)
    depths: tuple[int, ...]  # layers of the depth study (1 first: the one-layer optimum's run)
    steps: int  # one-layer runs
    deep_steps: int  # runs with two or more layers
    batch_size: int
    lr: float = 0.01  # Adam, cosine decay (every run)
    eval_prompts: int = 20_000  # fresh prompts for the depth study's paired losses
    flow_t_max: float = 1e4
    closed_form_tolerance: float = 1e-10  # ZFB's Γ* against Σ_w Λ M⁻¹ (relative, Frobenius): float64 rounding
    flow_tolerance: float = 1e-8  # gradient flow's L(θ(T)) − L* below this (the ODE solver's tolerances)


FULL = Size(d=5, x_cov_diag=(4.0, 2.0, 1.0, 0.5, 0.25), n_grid=(5, 10, 20, 40, 80), depth_n=20, depths=(1, 2, 3),
            steps=6000, deep_steps=4000, batch_size=2048)  # fmt: skip
QUICK = Size(d=3, x_cov_diag=(2.0, 1.0, 0.5), n_grid=(5, 20, 80), depth_n=20, depths=(1, 2), steps=1000,
             deep_steps=800, batch_size=2048, lr=0.01, eval_prompts=8192)  # fmt: skip
SIZES = {"quick": QUICK, "full": FULL}


def zfb_id(basis: str, n: int) -> str:
    return f"zfb_{basis}_n{n}"


def ahn_id(layers: int) -> str:
    return f"ahn_L{layers}"


def plan(size: Size) -> list[RunSpec]:
    """One-layer runs (w ~ N(0, I)) at every n in both bases, and the depth study (w ~ N(0, Λ⁻¹), rotated Λ)."""
    spectrum = "task.x_cov_diag=" + ",".join(f"{value:g}" for value in size.x_cov_diag)
    model = ("model.param=sparse", "model.init=balanced")
    specs = [
        RunSpec(zfb_id(basis, n), (f"task.d={size.d}", f"task.n={n}", spectrum, f"task.rotation={rotation}",
                                   "model.layers=1", *model, *training_overrides(size.steps, size.batch_size, size.lr)))
        for basis, rotation in BASES.items()
        for n in size.n_grid
    ]  # fmt: skip
    for layers in size.depths:
        steps = size.steps if layers == 1 else size.deep_steps
        task = (f"task.d={size.d}", f"task.n={size.depth_n}", spectrum, "task.rotation=fixed", "task.w_cov=inverse_x")
        training = training_overrides(steps, size.batch_size, size.lr)
        specs.append(RunSpec(ahn_id(layers), (*task, f"model.layers={layers}", *model, *training)))
    return specs


def zfb_gamma(x_cov: np.ndarray, n: float) -> np.ndarray:
    """ZFB's optimum (w ~ N(0, I), no noise): Γ* = ((1 + 1/n) Λ + tr(Λ)/n · I)⁻¹, (d, d), for Λ = ``x_cov``
    (d, d); n = math.inf gives Λ⁻¹."""
    inv_n = 0.0 if math.isinf(n) else 1.0 / n
    return np.linalg.inv((1 + inv_n) * x_cov + inv_n * np.trace(x_cov) * np.eye(x_cov.shape[0]))


def ahn_gamma(x_cov: np.ndarray, n: int) -> np.ndarray:
    """The one-layer optimum for w ~ N(0, Λ⁻¹), no noise: Γ* = n/(n + d + 1) · Λ⁻¹, (d, d)."""
    return n / (n + x_cov.shape[0] + 1) * np.linalg.inv(x_cov)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖_F / ‖b‖_F."""
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def offdiagonal_share(matrix: np.ndarray) -> float:
    """‖matrix − diag(matrix)‖_F / ‖matrix‖_F: 0 for a diagonal matrix."""
    return float(np.linalg.norm(matrix - np.diag(np.diag(matrix))) / np.linalg.norm(matrix))


def plain_gd_step(x_cov: np.ndarray, n: float, w_cov: np.ndarray | None = None) -> np.ndarray:
    """The best plain GD step Γ = η I (no noise): η = tr(Λ Σ_w Λ)/tr(Λ M), the minimiser of the quadratic L(ηI)."""
    w_cov = np.eye(x_cov.shape[0]) if w_cov is None else w_cov
    moment = lsa_moment(n, x_cov, w_cov)
    return np.trace(x_cov @ w_cov @ x_cov) / np.trace(x_cov @ moment) * np.eye(x_cov.shape[0])


def plain_gd_loss(x_cov: np.ndarray, n: float) -> float:
    """The exact loss of the best plain GD step (w ~ N(0, I), no noise)."""
    return lsa_loss(plain_gd_step(x_cov, n), n, x_cov)


def zfb_controls(x_cov: np.ndarray, n: float) -> dict[str, np.ndarray]:
    """The wrong answers a trained one-layer Γ is told apart from (w ~ N(0, I), Λ = ``x_cov``)."""
    return {f"Γ* × {SCALED:g}": SCALED * zfb_gamma(x_cov, n), "Λ⁻¹ (the n → ∞ preconditioner)": np.linalg.inv(x_cov),
            "the best plain GD step ηI (no preconditioning)": plain_gd_step(x_cov, n)}  # fmt: skip


def ahn_controls(x_cov: np.ndarray, n: float) -> dict[str, np.ndarray]:
    """The wrong answers for the one-layer model of the depth study (w ~ N(0, Λ⁻¹))."""
    return {f"Γ* × {SCALED:g}": SCALED * ahn_gamma(x_cov, n),
            "ZFB's Γ* (the optimum under w ~ N(0, I))": zfb_gamma(x_cov, n),
            "the best plain GD step ηI (no preconditioning)": plain_gd_step(x_cov, n, np.linalg.inv(x_cov)),
            }  # fmt: skip


def gamma_tolerance(optimum: np.ndarray, controls: dict[str, np.ndarray]) -> float:
    """Half the distance from Γ* to the nearest control (rotation-invariant: computed on the diagonal Λ)."""
    return min(relative(g, optimum) for g in controls.values()) / 2


def loss_tolerance(loss, optimal: float, controls: dict[str, np.ndarray]) -> float:
    """Half the smallest excess loss of a control, as a fraction of L*."""
    return min(loss(g) / optimal - 1 for g in controls.values()) / 2


def alignment_floor(size: Size) -> float:
    """The cosine a layer's Γ_ℓ must have with Λ⁻¹: the midpoint between 1 and cos(I, Λ⁻¹) (plain GD's)."""
    inverse = np.linalg.inv(np.diag(size.x_cov_diag))
    return (1 + frobenius_cosine(np.eye(size.d), inverse)) / 2


def layer_gammas(model: LSA) -> list[tuple[np.ndarray, float]]:
    """(Γ_ℓ, v_ℓ) of every layer of a one-head sparse LSA, Γ_ℓ = −v_ℓ A_ℓᵀ (d, d) float64 from its key-query
    block A_ℓ and value v_ℓ: the preconditioner layer ℓ applies, label slot += −x_qᵀ Γ_ℓ (1/n) Σ_i r_i x_i with
    r_i the context labels as the earlier layers left them."""
    pairs = []
    with torch.no_grad():
        for block in model.blocks:
            value, kq = block.attn.value[0].double(), block.attn.kq_block[0].double()
            pairs.append(((-value * kq.T).cpu().numpy(), float(value)))
    return pairs


@dataclass(frozen=True)
class Measured:
    """One seed's measurements: the one-layer runs (``results``, ``entries`` of the matrices, the flows'
    ``curves``) and the depth study (``depth``, ``layers``)."""

    results: pd.DataFrame
    entries: pd.DataFrame
    curves: dict
    depth: pd.DataFrame
    layers: pd.DataFrame


def measure_one_layer(size: Size, runs: dict[str, Path], seed: int, device: str) -> tuple:
    """ZFB's runs of one seed: results.csv's rows (per run: the trained Γ against Γ* and each control's distance
    and excess loss, the flows from the balanced and the zero init), gammas.csv's rows (every entry of the
    trained Γ, Γ* and Λ⁻¹) and ``{(basis, n): (t, L(θ(t)) − L*)}`` of the balanced flows."""
    rows, entries, curves = [], [], {}
    for basis in BASES:
        for n in size.n_grid:
            name = zfb_id(basis, n)
            model, cfg, _ = load_model(runs[name], device=device)
            x_cov = make_task(cfg.task, cfg.seed).x_cov.numpy()
            gamma, closed, inverse = effective_gamma(model), zfb_gamma(x_cov, n), np.linalg.inv(x_cov)
            optimum = lsa_optimum(n, x_cov)
            problem = task_problem(cfg.task, cfg.seed)
            a0, v0 = initial_weights(size.d, "balanced", cfg.model.init_scale, cfg.seed)
            flow = gradient_flow(problem, a0, v0, t_max=size.flow_t_max)
            stuck = gradient_flow(problem, *initial_weights(size.d, "zero"), t_max=size.flow_t_max)
            curves[(basis, n)] = (flow.t, flow.loss - flow.optimal_loss)
            loss = lsa_loss(gamma, n, x_cov)
            controls = zfb_controls(x_cov, n)
            rows.append({
                "basis": basis, "n": n, "seed": seed, "run_id": name, "exact_loss": loss,
                "optimal_loss": optimum.loss, "gap_percent": 100 * (loss / optimum.loss - 1),
                "gamma_distance": relative(gamma, closed), "closed_form_difference": relative(closed, optimum.gamma),
                "closed_form_without_trace": relative(np.linalg.inv((1 + 1 / n) * x_cov), optimum.gamma),
                "optimum_to_inverse": relative(closed, inverse), "trained_to_inverse": relative(gamma, inverse),
                "plain_to_inverse": relative(plain_gd_step(x_cov, n), inverse),
                "offdiagonal_optimum": offdiagonal_share(closed), "offdiagonal_trained": offdiagonal_share(gamma),
                "plain_gd_loss": plain_gd_loss(x_cov, n), "flow_final_gap": flow.final_gap,
                "zero_flow_final_gap": stuck.final_gap,
                "flow_gamma_distance": relative(-flow.v[-1] * flow.a[-1].T, closed),
                "controls": {c: (relative(g, closed), lsa_loss(g, n, x_cov) / optimum.loss - 1)
                             for c, g in controls.items()},
            })  # fmt: skip
            for matrix, values in (("trained", gamma), ("optimum", closed), ("inverse_x_cov", inverse)):
                entries += [{"seed": seed, "run_id": name, "matrix": matrix, "row": i, "col": j, "value": value}
                            for (i, j), value in np.ndenumerate(values)]  # fmt: skip
    return pd.DataFrame(rows).set_index("run_id", drop=False), pd.DataFrame(entries), curves


def measure_depth(size: Size, runs: dict[str, Path], seed: int, device: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ahn et al.'s runs of one seed: depth.csv's rows (per model: its loss and the one-layer optimum's on the
    same prompts, the paired differences with 95 % intervals; for one layer the exact loss and Γ against
    n/(n + d + 1) Λ⁻¹ and its controls) and layers.csv's (per layer: cosines of Γ_ℓ with Λ⁻¹ and I, a_ℓ, v_ℓ,
    ‖Γ_ℓ‖)."""
    loaded = {layers: load_model(runs[ahn_id(layers)], device=device) for layers in size.depths}
    _, cfg, _ = loaded[size.depths[0]]
    sampler = make_task(cfg.task, cfg.seed)
    x_cov, w_cov, n = sampler.x_cov.numpy(), sampler.w_cov.numpy(), cfg.task.n
    inverse, optimum = np.linalg.inv(x_cov), lsa_optimum(n, x_cov, w_cov)
    models = [loaded[layers][0] for layers in size.depths]
    learners = [from_model(model.double().to(device)) for model in (lsa_from_gamma(optimum.gamma), *models)]
    per_prompt = paired_prompt_losses(learners, sampler, size.eval_prompts, make_generator(seed, "analysis"),
                                      device=device)  # fmt: skip
    columns = [per_prompt[:, 1:], per_prompt[:, 1:] - per_prompt[:, :1], per_prompt[:, 2:] - per_prompt[:, 1:-1]]
    mean, _, low, high, _ = loss_statistics(torch.cat([per_prompt[:, :1], *columns], dim=1), seed=seed)
    k = len(models)
    rows, layer_rows = [], []
    for i, (layers, model) in enumerate(zip(size.depths, models, strict=True)):
        shallower = 1 + 2 * k + i - 1  # column of (this − the previous depth), from the second model on
        row = {"layers": layers, "seed": seed, "run_id": ahn_id(layers), "loss": float(mean[1 + i]),
               "loss_low": float(low[1 + i]), "loss_high": float(high[1 + i]),
               "optimum_loss_same_prompts": float(mean[0]), "optimal_loss_1layer": optimum.loss,
               "minus_optimum": float(mean[1 + k + i]), "minus_optimum_low": float(low[1 + k + i]),
               "minus_optimum_high": float(high[1 + k + i]),
               "minus_shallower": float(mean[shallower]) if i else np.nan,
               "minus_shallower_low": float(low[shallower]) if i else np.nan,
               "minus_shallower_high": float(high[shallower]) if i else np.nan,
               "exact_loss": np.nan, "gamma_distance": np.nan,
               "closed_form_difference": relative(ahn_gamma(x_cov, n), optimum.gamma), "controls": {}}  # fmt: skip
        pairs = layer_gammas(model)
        if layers == 1:
            closed = ahn_gamma(x_cov, n)
            row["exact_loss"] = lsa_loss(pairs[0][0], n, x_cov, w_cov)
            row["gamma_distance"] = relative(pairs[0][0], closed)
            row["controls"] = {c: (relative(g, closed), lsa_loss(g, n, x_cov, w_cov) / optimum.loss - 1)
                               for c, g in ahn_controls(x_cov, n).items()}  # fmt: skip
        rows.append(row)
        for layer, (gamma, value) in enumerate(pairs, start=1):
            layer_rows.append({"layers": layers, "layer": layer, "seed": seed,
                               "cos_inverse": frobenius_cosine(gamma, inverse),
                               "cos_identity": frobenius_cosine(gamma, np.eye(size.d)),
                               "step": float(np.sum(gamma * inverse) / np.sum(inverse * inverse)), "value": value,
                               "norm": float(np.linalg.norm(gamma))})  # fmt: skip
    return pd.DataFrame(rows).set_index("layers", drop=False), pd.DataFrame(layer_rows)


def measure(context: Context, seed: int, runs: dict[str, Path]) -> Measured:
    """Every run of one seed measured, the flows integrated."""
    results, entries, curves = measure_one_layer(context.size, runs, seed, context.device)
    depth, layers = measure_depth(context.size, runs, seed, context.device)
    return Measured(results, entries, curves, depth, layers)


def _interval(table: str, layers: int, column: str):
    """A paired difference with its 95 % interval, from depth.csv's ``column`` (and _low, _high)."""

    def measure_it(data: Measured) -> Estimate:
        row = getattr(data, table).loc[layers]
        value, low, high = (float(row[column + suffix]) for suffix in ("", "_low", "_high"))
        return Estimate(value, low, high, text=f"{value:+.3g} [{low:+.3g}, {high:+.3g}]")

    return measure_it


def _distance(a: np.ndarray, b: np.ndarray) -> Estimate:
    value = relative(a, b)
    return Estimate(value, text=f"{value:.2e}")


def claims(size: Size) -> list[Claim]:
    """Every claim of the two papers this recipe tests, with its controls."""
    found = []
    diagonal = np.diag(size.x_cov_diag)
    for basis in BASES:
        for n in size.n_grid:
            name = zfb_id(basis, n)
            controls = zfb_controls(diagonal, n)
            tolerance = gamma_tolerance(zfb_gamma(diagonal, n), controls)
            excess = loss_tolerance(lambda g, n=n: lsa_loss(g, n, diagonal), lsa_optimum(n, diagonal).loss, controls)
            where = f"one layer, {LABELS[basis]}, n = {n}"

            def control(index: int, c: str, name: str = name, text: str = "{:.3%}"):
                return reading(lambda m: m.results.loc[name, "controls"][c][index], text)

            found.append(Claim(
                f"{name}/gamma", f"{where}: the trained Γ is ZFB's Γ*",
                "trained by gradient flow from the balanced init, Γ → ((1 + 1/n)Λ + tr(Λ)/n · I)⁻¹", ZFB,
                REPRODUCTION, reading(lambda m, name=name: m.results.loc[name, "gamma_distance"], "{:.3%}"),
                below(tolerance, f"‖Γ − Γ*‖/‖Γ*‖ < {tolerance:.3%} (half the distance to the nearest control)"),
                {c: control(0, c) for c in controls},
            ))  # fmt: skip
            found.append(Claim(
                f"{name}/loss", f"{where}: training reaches the global minimum L*(n)",
                "the trained LSA attains the minimum of the population loss", ZFB, REPRODUCTION,
                reading(lambda m, name=name: m.results.loc[name, "gap_percent"] / 100, "{:+.4%}"),
                below(excess, f"exact loss above L* < {excess:.4%} of L* (half the nearest control's excess)"),
                {c: control(1, c, text="{:+.4%}") for c in controls},
            ))  # fmt: skip
    found.append(Claim(
        "theory/closed-form", "ZFB's closed form ((1 + 1/n)Λ + tr(Λ)/n · I)⁻¹ is the optimum Σ_w Λ M⁻¹ of the exact "
        "loss (every n, both bases)", "Γ* = ((1 + 1/n)Λ + tr(Λ)/n · I)⁻¹ (ZFB; Ahn et al.'s one-layer theorem)", ZFB,
        THEORY, reading(lambda m: m.results["closed_form_difference"].max(), "{:.1e}"),
        below(size.closed_form_tolerance, f"largest relative difference < {size.closed_form_tolerance:g} (float64)"),
        {"((1 + 1/n)Λ)⁻¹ (without the tr(Λ)/n term)":
         reading(lambda m: m.results["closed_form_without_trace"].min(), "{:.1e}")},
    ))  # fmt: skip
    inverse = np.linalg.inv(diagonal)
    far = 1e8  # n → ∞: Γ*'s distance to Λ⁻¹ falls as 1/n, the plain step's does not
    found.append(Claim(
        "theory/limit", "Γ* → Λ⁻¹ as n → ∞ (either basis: the distance is rotation-invariant)",
        "Γ* → Λ⁻¹ as n → ∞: the preconditioner of Newton's method / whitened GD", ZFB, THEORY,
        lambda _: _distance(zfb_gamma(diagonal, far), inverse),
        below(1e-6, f"‖Γ*(n) − Λ⁻¹‖/‖Λ⁻¹‖ < 1e-6 at n = {far:g} (O(1/n))"),
        {"the best plain GD step ηI": lambda _: _distance(plain_gd_step(diagonal, far), inverse)},
    ))  # fmt: skip
    theory_fall = [relative(zfb_gamma(diagonal, n), inverse) for n in (size.n_grid[0], size.n_grid[-1])]
    midpoint = (1 + theory_fall[1] / theory_fall[0]) / 2
    fall = shrinks(midpoint, f"midway between no fall and Γ*'s {theory_fall[1] / theory_fall[0]:.3g}")
    for basis in BASES:

        def along_n(column: str, basis: str = basis):
            return trend(lambda m: m.results[m.results.basis == basis].sort_values("n")[column])

        found.append(Claim(
            f"{basis}/trained-to-inverse", f"{LABELS[basis]}: the trained Γ tends to Λ⁻¹ as n grows",
            "the trained preconditioner tends to Λ⁻¹ with n", ZFB, REPRODUCTION,
            along_n("trained_to_inverse"), fall,
            {"the best plain GD step ηI": along_n("plain_to_inverse")},
        ))  # fmt: skip

        def flows(column: str, basis: str = basis):
            return reading(lambda m: m.results[m.results.basis == basis][column].max(), "{:.2g}")

        found.append(Claim(
            f"{basis}/flow", f"{LABELS[basis]}: gradient flow from the balanced init reaches the global minimum "
            "(every n)", "gradient flow on the population loss from the (balanced) initialisation converges to the "
            "global minimum", ZFB, THEORY, flows("flow_final_gap"),
            below(size.flow_tolerance, f"largest L(θ(T)) − L* < {size.flow_tolerance:g} at T = {size.flow_t_max:g}"),
            {"the flow from the zero init (a stationary point)": flows("zero_flow_final_gap")},
        ))  # fmt: skip
    n = size.depth_n
    controls = ahn_controls(diagonal, n)
    tolerance = gamma_tolerance(ahn_gamma(diagonal, n), controls)
    found.append(Claim(
        "ahn/one-layer", f"w ~ N(0, Λ⁻¹), rotated Λ, n = {n}: the trained one-layer Γ is n/(n + d + 1) · Λ⁻¹",
        "the optimal one-layer LSA is one step of GD preconditioned by Λ⁻¹", AHN_ONE, REPRODUCTION,
        reading(lambda m: m.depth.loc[1, "gamma_distance"], "{:.3%}"),
        below(tolerance, f"‖Γ − Γ*‖/‖Γ*‖ < {tolerance:.3%} (half the distance to the nearest control)"),
        {c: reading(lambda m, c=c: m.depth.loc[1, "controls"][c][0], "{:.3%}") for c in controls},
    ))  # fmt: skip
    floor = alignment_floor(size)
    aligned = above(floor, f"cos(Γ_ℓ, Λ⁻¹) > {floor:.4f} (midway between 1 and plain GD's cos(I, Λ⁻¹))")
    plain = frobenius_cosine(np.eye(size.d), np.linalg.inv(diagonal))
    for layers in size.depths[1:]:
        for layer in range(1, layers + 1):

            def cosine(m: Measured, layers: int = layers, layer: int = layer) -> float:
                rows = m.layers
                return rows[(rows.layers == layers) & (rows.layer == layer)]["cos_inverse"].iloc[0]

            found.append(Claim(
                f"ahn/L{layers}-layer{layer}", f"{layers} layers, layer {layer}: its preconditioner is aligned with "
                "Λ⁻¹", "at a critical point every layer's key-query block is A_ℓ = a_ℓ Λ⁻¹ (L steps of GD "
                "preconditioned by Λ⁻¹)", AHN_DEEP, REPRODUCTION, reading(cosine, "{:.4f}"), aligned,
                {"plain GD (Γ_ℓ ∝ I)": lambda _: Estimate(plain, text=f"{plain:.4f}")},
            ))  # fmt: skip
        found.append(Claim(
            f"ahn/L{layers}-beats-one-layer", f"{layers} layers beat the one-layer optimum",
            "L layers run L preconditioned GD steps: deeper is better", AHN_DEEP, REPRODUCTION,
            _interval("depth", layers, "minus_optimum"),
            interval_below(0, "paired loss difference to the one-layer optimum: 95 % interval below 0"),
            {"the one-layer optimum itself": lambda _: NO_DIFFERENCE},
        ))  # fmt: skip
        if layers > 2:
            found.append(Claim(
                f"ahn/L{layers}-beats-L{layers - 1}", f"{layers} layers beat {layers - 1}",
                "more layers, more steps, lower loss", AHN_DEEP, REPRODUCTION,
                _interval("depth", layers, "minus_shallower"),
                interval_below(0, f"paired loss difference to the {layers - 1}-layer model: 95 % interval below 0"),
                {f"the {layers - 1}-layer model itself": lambda _: NO_DIFFERENCE},
            ))  # fmt: skip
    return found


def n_axis(ax: plt.Axes, n_grid: tuple[int, ...]) -> None:
    """A log x-axis labelled at the n of the grid."""
    ax.set_xscale("log")
    ax.set_xticks(list(n_grid), [str(n) for n in n_grid])
    ax.minorticks_off()
    ax.set_xlabel("n, in-context examples")


def theory_grid(size: Size) -> np.ndarray:
    """Integer n from below the smallest to above the largest of the grid (log-spaced)."""
    return np.unique(np.geomspace(min(size.n_grid) / 1.5, max(size.n_grid) * 1.5, 60).round().astype(int))


def plot_loss_vs_n(size: Size, results: pd.DataFrame, path: Path, text: str) -> None:
    """loss_vs_n.png: left, L*(n) and the best plain GD step's loss (theory; both rotation-invariant) with the
    exact loss of every trained one-layer model (every seed); right, its gap above L* in % (a line per seed and
    basis) against the tolerance at each n (half the nearest control's excess)."""
    x_cov = np.diag(size.x_cov_diag)
    grid = theory_grid(size)
    optimal = [lsa_optimum(n, x_cov).loss for n in grid]
    plain = [plain_gd_loss(x_cov, n) for n in grid]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.0, 4.4))
    left.plot(grid, optimal, color="0.3", label="L*(n), ZFB's Γ* (theory)")
    left.plot(grid, plain, color="0.6", linestyle="--", label="best plain GD step Γ = ηI (theory)")
    markers = {"diag": "o", "rotated": "s"}
    floor = 1e-4
    for i, (basis, group) in enumerate(results.groupby("basis", sort=False)):
        left.scatter(group["n"], group["exact_loss"], marker=markers[basis], color=f"C{i}", zorder=3,
                     facecolors="none" if basis == "rotated" else None,
                     label=f"trained, {LABELS[basis]} (exact loss of its Γ)")  # fmt: skip
        for j, (_, seed) in enumerate(group.groupby("seed")):
            gaps = seed["gap_percent"].to_numpy()
            right.plot(seed["n"], np.maximum(gaps, floor), marker=markers[basis], color=f"C{i}", alpha=0.7,
                       label=clipped_label(f"trained, {LABELS[basis]} (a line per seed)", results["gap_percent"],
                                           floor) if j == 0 else None)  # fmt: skip
    readable_log_axis(left, [*optimal, *plain, *results["exact_loss"]])
    n_axis(left, size.n_grid)
    left.set_ylabel("query loss E(ŷ − y)²")
    left.set_title("one-layer LSA: L*(n) and the trained models")
    left.grid(alpha=0.3)
    left.legend(fontsize=7, loc="lower left")
    tolerances = [100 * loss_tolerance(lambda g, n=n: lsa_loss(g, n, x_cov), lsa_optimum(n, x_cov).loss,
                                       zfb_controls(x_cov, n)) for n in size.n_grid]  # fmt: skip
    right.plot(size.n_grid, tolerances, color="C3", linestyle="--", label="tolerance: half the nearest control's gap")
    readable_log_axis(right, [*np.maximum(results["gap_percent"], floor), *tolerances])
    n_axis(right, size.n_grid)
    right.set_ylabel("gap above L*, % of L*")
    right.set_title("trained exact loss − L*")
    right.grid(alpha=0.3)
    outside_legend(right)
    fig.tight_layout()
    caption(fig, text)
    save_figure(fig, path)


def plot_preconditioner(size: Size, results: pd.DataFrame, path: Path, text: str) -> None:
    """preconditioner_vs_n.png: left, ‖Γ* − Λ⁻¹‖/‖Λ⁻¹‖ against n (theory, rotation-invariant) with the trained
    Γ's distance to Λ⁻¹; right, the trained Γ's and the gradient flow's distance to Γ* against the tolerance."""
    x_cov = np.diag(size.x_cov_diag)
    grid = theory_grid(size)
    inverse = np.linalg.inv(x_cov)
    theory = [relative(zfb_gamma(x_cov, n), inverse) for n in grid]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.0, 4.4))
    left.plot(grid, theory, color="0.3", label="Γ* = ((1 + 1/n)Λ + tr(Λ)/n·I)⁻¹ (theory)")
    markers = {"diag": "o", "rotated": "s"}
    floor = 1e-6  # the flow's Γ(T) is Γ* to rounding (~1e-16): shown at the floor
    for i, (basis, group) in enumerate(results.groupby("basis", sort=False)):
        left.scatter(group["n"], group["trained_to_inverse"], marker=markers[basis], color=f"C{i}", zorder=3,
                     facecolors="none" if basis == "rotated" else None,
                     label=f"trained Γ, {LABELS[basis]}")  # fmt: skip
        for j, (_, seed) in enumerate(group.groupby("seed")):
            right.plot(seed["n"], seed["gamma_distance"], marker=markers[basis], color=f"C{i}", alpha=0.7,
                       label=f"trained (Adam), {LABELS[basis]} (a line per seed)" if j == 0 else None)  # fmt: skip
        group = group[group.seed == group.seed.min()]
        flow = group["flow_gamma_distance"].to_numpy()
        flow_label = clipped_label(f"gradient flow at T = {size.flow_t_max:g}, {LABELS[basis]}", flow, floor)
        right.plot(group["n"], np.maximum(flow, floor), marker="x", linestyle=":", color=f"C{i}", label=flow_label)
    readable_log_axis(left, [*theory, *results["trained_to_inverse"]])
    n_axis(left, size.n_grid)
    left.set_ylabel("‖Γ − Λ⁻¹‖_F / ‖Λ⁻¹‖_F")
    left.set_title("the preconditioner tends to Λ⁻¹ as n grows")
    left.grid(alpha=0.3)
    left.legend(fontsize=7, loc="upper right")
    tolerances = [gamma_tolerance(zfb_gamma(x_cov, n), zfb_controls(x_cov, n)) for n in size.n_grid]
    right.plot(size.n_grid, tolerances, color="C3", linestyle="--", label="tolerance: half the nearest control's "
               "distance")  # fmt: skip
    values = np.maximum(np.concatenate([results["gamma_distance"], results["flow_gamma_distance"], tolerances]), floor)
    readable_log_axis(right, values)
    n_axis(right, size.n_grid)
    right.set_ylabel("‖Γ − Γ*‖_F / ‖Γ*‖_F")
    right.set_title("distance to ZFB's Γ*")
    right.grid(alpha=0.3)
    right.legend(fontsize=7, loc="center left")
    fig.tight_layout()
    caption(fig, text)
    save_figure(fig, path)


def plot_gammas(size: Size, entries: pd.DataFrame, results: pd.DataFrame, path: Path, text: str) -> None:
    """gamma_heatmaps.png: rotated Λ at the smallest and largest n: trained Γ, Γ* and Λ⁻¹ side by side, one
    diverging colour scale (entries written in the cells for d ≤ 6)."""
    ns = (min(size.n_grid), max(size.n_grid))
    what = {"trained": "trained Γ", "optimum": "ZFB's Γ*", "inverse_x_cov": "Λ⁻¹ (n → ∞)"}
    fig, axes = plt.subplots(len(ns), 3, figsize=(9.0, 3.0 * len(ns)), squeeze=False, layout="constrained")
    entries = entries[entries.seed == entries.seed.min()]
    results = results[results.seed == results.seed.min()]
    scale = float(entries[entries.run_id.isin([zfb_id("rotated", n) for n in ns])]["value"].abs().max())
    distances = results.set_index("run_id")["gamma_distance"]
    image = None
    for row, n in enumerate(ns):
        name = zfb_id("rotated", n)
        for col, matrix in enumerate(what):
            part = entries[(entries.run_id == name) & (entries.matrix == matrix)]
            values = part.pivot(index="row", columns="col", values="value").to_numpy()
            ax = axes[row][col]
            image = ax.imshow(values, cmap="RdBu_r", vmin=-scale, vmax=scale)
            title = f"{what[matrix]}, n = {n}" if matrix != "inverse_x_cov" else what[matrix]
            ax.set_title(title, fontsize=9)
            ticks = range(size.d)
            ax.set_xticks(ticks, [str(c + 1) for c in ticks], fontsize=7)
            ax.set_yticks(ticks, [str(c + 1) for c in ticks], fontsize=7)
            if size.d <= 6:
                for (i, j), value in np.ndenumerate(values):
                    color = "white" if abs(value) > 0.6 * scale else "black"
                    ax.text(j, i, f"{value:.2f}".replace("-0.00", "0.00"), ha="center", va="center", fontsize=6,
                            color=color)  # fmt: skip
            if matrix == "trained":
                ax.set_xlabel(f"‖Γ − Γ*‖/‖Γ*‖ = {distances[name]:.1%}", fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.6, label="entry (ŷ = x_qᵀ Γ h; rotated Λ, w ~ N(0, I))")
    caption(fig, text)
    save_figure(fig, path)


def plot_flows(size: Size, curves: dict, path: Path, text: str) -> None:
    """flow.png: L(θ(t)) − L* along gradient flow on the exact loss from the balanced init, every n, both bases
    (log-log; gaps below 1e-14 clipped)."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    floor = 1e-14
    styles = {"diag": "-", "rotated": "--"}
    for (basis, n), (t, gap) in curves.items():
        keep = t > 0
        ax.plot(t[keep], np.maximum(gap[keep], floor), linestyle=styles[basis],
                color=f"C{list(size.n_grid).index(n)}", label=f"{LABELS[basis]}, n = {n}")  # fmt: skip
    ax.axhline(size.flow_tolerance, color="C3", linestyle=":", label=f"tolerance {size.flow_tolerance:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("time t of the flow dθ/dt = −∇L(θ), θ = (A, v)")
    ax.set_ylabel(f"L(θ(t)) − L* (clipped at {floor:g})")
    ax.set_title("gradient flow of the exact one-layer loss from the balanced initialisation (ZFB)")
    ax.grid(alpha=0.3)
    outside_legend(ax)
    fig.tight_layout()
    caption(fig, text)
    save_figure(fig, path)


def plot_depth(size: Size, depth: pd.DataFrame, layers: pd.DataFrame, path: Path, text: str) -> None:
    """depth.png: left, each model's loss on fresh prompts (95 % interval; a point per seed, side by side) against
    its depth, the one-layer L* dashed; right, every layer's cosine of Γ_ℓ with Λ⁻¹ and with I (the first seed),
    the floor and cos(Λ⁻¹, I) as lines."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12.0, 4.4), gridspec_kw={"width_ratios": (1, 1.6)})
    seeds = sorted(depth["seed"].unique())
    for j, seed in enumerate(seeds):
        rows = depth[depth.seed == seed]
        spread = [rows["loss"] - rows["loss_low"], rows["loss_high"] - rows["loss"]]
        shift = 0.08 * (j - (len(seeds) - 1) / 2)
        label = "trained (fresh prompts, 95 % interval; each seed)" if j == 0 else None
        left.errorbar(rows["layers"] + shift, rows["loss"], yerr=spread, marker="o", capsize=3, color="C0",
                      linestyle="none", label=label)  # fmt: skip
    layers = layers[layers.seed == seeds[0]]
    optimal = float(depth["optimal_loss_1layer"].iloc[0])
    left.axhline(optimal, color="0.4", linestyle="--", label=f"one-layer optimum L* = {optimal:.3g}")
    readable_log_axis(left, [*depth["loss_low"], *depth["loss_high"], optimal])
    left.set_xticks(list(size.depths))
    left.set_xlabel("layers")
    left.set_ylabel("query loss E(ŷ − y)²")
    left.set_title(f"loss vs depth (d = {size.d}, n = {size.depth_n})", fontsize=10)
    left.grid(alpha=0.3)
    left.legend(fontsize=7, loc="upper right")
    x = np.arange(len(layers))
    right.bar(x - 0.18, layers["cos_inverse"], 0.36, color="C0", label="cos(Γ_ℓ, Λ⁻¹)")
    right.bar(x + 0.18, layers["cos_identity"], 0.36, color="C1", label="cos(Γ_ℓ, I)")
    inverse = np.linalg.inv(np.diag(size.x_cov_diag))
    reference = frobenius_cosine(inverse, np.eye(size.d))
    right.axhline(reference, color="C1", linestyle=":", label=f"cos(Λ⁻¹, I) = {reference:.3f}")
    floor = alignment_floor(size)
    right.axhline(floor, color="C3", linestyle="--", label=f"floor {floor:.3f} (midway to cos(Λ⁻¹, I))")
    low = min(float(layers[["cos_inverse", "cos_identity"]].min().min()), reference)
    right.set_ylim(max(low - 0.05, -1.0), 1.01)
    names = [f"{r.layers} layer{'s' if r.layers > 1 else ''}\nlayer {r.layer}" for r in layers.itertuples()]
    right.set_xticks(x, names, fontsize=7)
    right.set_ylabel("cosine (Frobenius)")
    right.set_title("each layer's preconditioner Γ_ℓ = −v_ℓ A_ℓᵀ against Λ⁻¹ and I", fontsize=10)
    right.grid(alpha=0.3, axis="y")
    outside_legend(right)
    fig.tight_layout()
    caption(fig, text)
    save_figure(fig, path)


TABLES = {"results": "One layer, w ~ N(0, I): trained Γ against ZFB's Γ* (exact losses; every seed)",
          "depth": "Depth study, w ~ N(0, Λ⁻¹): losses on fresh prompts, paired with the one-layer optimum",
          "layers": "Depth study: every layer's preconditioner Γ_ℓ against Λ⁻¹ and I"}  # fmt: skip


def write(context: Context, measurements: dict[int, Measured], results: list[ClaimResult]) -> dict:
    """results.csv, gammas.csv, depth.csv and layers.csv (every seed) and the five figures; the report's tables."""
    tables = {name: pd.concat([getattr(m, name) for m in measurements.values()], ignore_index=True)
              for name in ("results", "entries", "depth", "layers")}  # fmt: skip
    for name in ("results", "depth"):
        tables[name] = tables[name].drop(columns="controls")
    for name, file in (("results", "results.csv"), ("entries", "gammas.csv"), ("depth", "depth.csv"),
                       ("layers", "layers.csv")):  # fmt: skip
        atomic_write_text(context.out / file, tables[name].to_csv(index=False))
    size, text, figures = context.size, context.caption, context.out / "figures"
    plot_loss_vs_n(size, tables["results"], figures / "loss_vs_n.png", text)
    plot_preconditioner(size, tables["results"], figures / "preconditioner_vs_n.png", text)
    plot_gammas(size, tables["entries"], tables["results"], figures / "gamma_heatmaps.png", text)
    plot_flows(size, measurements[context.seeds[0]].curves, figures / "flow.png", text)
    plot_depth(size, tables["depth"], tables["layers"], figures / "depth.png", text)
    return {heading: tables[name] for name, heading in TABLES.items()}


def setting(size: Size) -> str:
    spectrum = ", ".join(f"{v:g}" for v in size.x_cov_diag)
    return (
        f"x ~ N(0, Λ), eigenvalues of Λ ({spectrum}), diagonal or one fixed rotation; y = wᵀx, w ~ N(0, I) "
        "(one layer) or N(0, Λ⁻¹) (depth study, rotated Λ); sparse LSA, balanced init, Adam, clipping 1.0"
    )


RECIPE = register_recipe(Recipe(
    name="zfb",
    paper="Zhang, Frei, Bartlett, JMLR 2024; Ahn, Cheng, Daneshmand, Sra, NeurIPS 2023",
    claim="on anisotropic x a trained one-layer LSA converges to ZFB's preconditioner ((1 + 1/n)Λ + tr(Λ)/n·I)⁻¹ "
    "(→ Λ⁻¹ as n grows); deeper LSAs run steps preconditioned by Λ⁻¹ and beat it",
    title="Zhang, Frei, Bartlett; Ahn et al.: trained LSAs run preconditioned GD",
    sizes=SIZES,
    plan=plan,
    measure=measure,
    claims=claims,
    write=write,
    setting=setting,
))  # fmt: skip

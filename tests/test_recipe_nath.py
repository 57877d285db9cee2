"""The nath reproduction (Nath et al. 2024, piecewise-constant softmax attention) at its quick size: every claim's
verdict at three seeds with its controls, its numbers against references computed here with numpy alone (the
softmax prediction from the saved weights, the GP posterior mean, the plateau rule), and an untrained model in place
of the trained softmax turning exactly the reproductions to "not reproduced"."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from iclab.cli import main
from iclab.config import parse_config
from iclab.experiments import nath, reproduce
from iclab.models import build_model
from iclab.probe.piecewise import Sweep, summarise
from iclab.seeding import make_generator
from iclab.tasks import make_task

QUICK = nath.QUICK
MAIN = f"softmax_steps{QUICK.steps}"  # the run dir of the main softmax model


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quick reproduction, run once through the CLI for the module."""
    out = tmp_path_factory.mktemp("nath") / "n"
    assert main(["reproduce", "nath", "--quick", "--out", str(out), "--quiet", "--jobs", "2"]) == 0
    return out


def numpy_plateau_share(values: np.ndarray, tol: float = 0.1, min_run: int = 3) -> float:
    """Fraction of the steps of ``values: (T,)`` inside runs of ≥ ``min_run`` steps with |Δ| < tol × mean |Δ|."""
    steps = np.abs(np.diff(values))
    flat = np.concatenate([[0], (steps < tol * steps.mean()).astype(int), [0]])
    edges = np.diff(flat)
    lengths = np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)  # (runs,)
    return float(lengths[lengths >= min_run].sum() / len(steps))


def first_prompt() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seed 0's first test prompt as the recipe draws it: xs (n, 2), ys (n,), xq (2,)."""
    task = make_task(parse_config({}, nath.task_overrides(QUICK)).task)
    prompts = task.sample(QUICK.eval_prompts, make_generator(0, "nath-test"), dtype=torch.float64)  # labels last
    return prompts.xs[0].numpy(), prompts.ys[0].numpy(), prompts.xq[0, 0].numpy()


def circle(xq: np.ndarray, t: np.ndarray, sign: float) -> np.ndarray:
    """Points (T, 2) of the circle through x_q at angles t, turning one way (sign ±1)."""
    start = xq / np.linalg.norm(xq)
    perpendicular = sign * np.array([-start[1], start[0]])
    return np.cos(t)[:, None] * start + np.sin(t)[:, None] * perpendicular


def test_every_claim_has_its_verdict_at_three_seeds_and_the_files_are_written(out: Path):
    claims = pd.read_csv(out / "claims.csv").set_index("key")
    assert claims["status"].to_dict() == {
        key: "reproduced"
        for key in (
            "softmax/plateaus",
            "softmax/training",
            "softmax/bayes-gap",
            "theory/hardmax-limit",
            "theory/smooth-share",
        )
    }
    assert (claims["seeds_held"] == 3).all()
    by_seed = pd.read_csv(out / "claims_by_seed.csv")
    controls = by_seed[by_seed["subject"] != "model"]
    assert not controls["passes"].any()
    assert {"exp attention trained alike (400 steps)", "exp attention trained for the same steps",
            "the Bayes predictor (GP posterior mean)", "the zero predictor"} <= set(controls["subject"])  # fmt: skip
    report = (out / "report.md").read_text()
    assert "**3 of 3 paper claims reproduced, 0 not reproduced; 2 of 2 theory checks hold.**" in report
    for name in ("sweeps.png", "sharpness.png"):
        assert (out / "figures" / name).stat().st_size > 20_000
    results = pd.read_csv(out / "results.csv")
    per_seed = len(nath.trained(QUICK)) - 1 + len(QUICK.betas)
    assert len(results) == 3 * per_seed and sorted(set(results["seed"])) == [0, 1, 2]


def test_results_are_the_means_of_the_sweeps(out: Path):
    results = pd.read_csv(out / "results.csv")
    sweeps = pd.read_csv(out / "sweeps.csv")
    means = sweeps.groupby(["seed", "model", "steps", "beta"])[["flat_fraction_model",
                                                                "flat_fraction_reference"]].mean()  # fmt: skip
    for r in results.itertuples():
        key = (r.seed, r.model, r.steps, r.beta)
        assert math.isclose(r.plateau_share, means.loc[key, "flat_fraction_model"])
        assert math.isclose(r.bayes_share, means.loc[key, "flat_fraction_reference"])
        assert r.plateau_share_low <= r.plateau_share <= r.plateau_share_high and r.sweeps == QUICK.sweeps
    # the same great circles for every model of a seed: one reference share per seed
    assert (results.groupby("seed")["bayes_share"].nunique() == 1).all()


def test_curves_match_numpy_softmax_posterior_and_plateau_rule(out: Path):
    """Sweep 0 of the trained softmax, recomputed from its saved weights: ŷ = −v Σ softmax_i(x_iᵀ A x) y_i, the GP
    posterior mean k(x)ᵀ K⁻¹ y with K = exp(XXᵀ/s), and its plateau share by a numpy run-length count."""
    xs, ys, xq = first_prompt()
    weights = load_file(out / "runs" / "seed0" / MAIN / "model.safetensors")
    a, v = weights["blocks.0.attn.kq_block"][0].double().numpy(), float(weights["blocks.0.attn.value"][0])
    curves = pd.read_csv(out / "curves.csv")
    sweeps = pd.read_csv(out / "sweeps.csv")
    for beta in (1.0, float(max(QUICK.betas))):
        curve = curves[(curves.model == "softmax") & (curves.steps == QUICK.steps) & (curves.beta == beta)]
        curve = curve[curve.sweep == 0]
        t = curve["t"].to_numpy()
        candidates = []
        for sign in (1.0, -1.0):  # the sweep turns one way or the other
            scores = beta * xs @ a @ circle(xq, t, sign).T  # (n, T)
            weights_ = np.exp(scores - scores.max(0))
            candidates.append(-v * (weights_ / weights_.sum(0)).T @ ys)
        error = min(np.abs(c - curve["prediction"].to_numpy()).max() for c in candidates)
        assert error < 1e-6 * np.abs(ys).max()
        row = sweeps[(sweeps.model == "softmax") & (sweeps.steps == QUICK.steps) & (sweeps.beta == beta)]
        row = row[(row.seed == 0) & (row.sweep == 0)].iloc[0]
        assert math.isclose(numpy_plateau_share(curve["prediction"].to_numpy()), row.flat_fraction_model)
        assert math.isclose(numpy_plateau_share(curve["reference"].to_numpy()), row.flat_fraction_reference)
    gram = np.exp(xs @ xs.T / QUICK.kernel_scale)
    posterior = [np.exp(circle(xq, t, sign) @ xs.T / QUICK.kernel_scale) @ np.linalg.solve(gram, ys)
                 for sign in (1.0, -1.0)]  # fmt: skip
    scale = np.abs(curve["reference"]).max()
    assert min(np.abs(p - curve["reference"].to_numpy()).max() for p in posterior) < 1e-4 * scale


def test_sharpest_softmax_is_the_nearest_neighbour_staircase(out: Path):
    """At the largest β the prediction is −v × the nearest context point's label at almost every position
    (hardmax), the trained softmax (β = 1) at far fewer; that staircase is flat almost everywhere."""
    xs, ys, xq = first_prompt()
    v = float(load_file(out / "runs" / "seed0" / MAIN / "model.safetensors")["blocks.0.attn.value"])
    curves = pd.read_csv(out / "curves.csv")
    agreement = {}
    for beta in (1.0, float(max(QUICK.betas))):
        curve = curves[(curves.model == "softmax") & (curves.steps == QUICK.steps) & (curves.beta == beta)]
        t, prediction = curve[curve.sweep == 0]["t"].to_numpy(), curve[curve.sweep == 0]["prediction"].to_numpy()
        shares = []
        for sign in (1.0, -1.0):
            nearest = -v * ys[np.argmax(circle(xq, t, sign) @ xs.T, axis=1)]  # (T,)
            shares.append(np.mean(np.abs(prediction - nearest) < 0.05 * np.ptp(ys)))
            assert numpy_plateau_share(nearest) > 0.9
        agreement[beta] = max(shares)
    assert agreement[float(max(QUICK.betas))] > 0.9 > agreement[1.0]


def test_plateau_rule_on_a_sinusoid_and_a_staircase():
    """The rule's known negative and positive: a sinusoid along a great circle is flat only within arcsin(0.2/π)
    of its two extrema (≈ 4 % of the steps, what any predictor linear in x_q gives), a staircase almost
    everywhere."""
    t = np.linspace(-math.pi, math.pi, 400)
    expected = 4 * math.asin(0.1 * 2 / math.pi) / (2 * math.pi)
    sine = summarise([Sweep(t, np.sin(t + 0.3), np.floor(3 * np.sin(t)))])
    assert abs(sine["flat_fraction_model"] - expected) < 2 / 399 and sine["plateaus_model"] == 2
    assert sine["flat_fraction_reference"] > 0.9
    assert math.isclose(numpy_plateau_share(np.sin(t + 0.3)), sine["flat_fraction_model"])
    assert QUICK.smooth_share == pytest.approx(expected, rel=1e-12)  # δ of the recipe's tests


def test_an_untrained_softmax_in_place_of_the_trained_one_fails_every_reproduction(out: Path, monkeypatch, tmp_path):
    """The main softmax (the longest-trained) replaced by its own initial weights: smooth (no excess plateaus), no
    gain from training, not learned; the theory checks hold for any weights."""
    real = nath.load_model

    def untrained(run_dir, device="cpu"):
        model, cfg, step = real(run_dir, device)
        if Path(run_dir).name == MAIN:
            model = build_model(cfg.model, make_task(cfg.task, cfg.seed), make_generator(cfg.seed, "init"))
        return model, cfg, step

    monkeypatch.setattr(nath, "load_model", untrained)
    injected = tmp_path / "injected"
    injected.mkdir()
    (injected / "runs").symlink_to(out / "runs")
    outcome = reproduce("nath", injected, size="quick", progress=False)
    assert {r.claim.key for r in outcome.failed} == {"softmax/plateaus", "softmax/training", "softmax/bayes-gap"}


def test_plan_covers_every_model_once_without_a_seed():
    for size in nath.SIZES.values():
        planned = nath.plan(size)
        assert len(planned) == len(size.softmax_steps) * (1 + len(size.controls))
        assert len({spec.run_id for spec in planned}) == len(planned)
        for spec in planned:
            assert "model.param=sparse" in spec.overrides and "task.kernel=exp" in spec.overrides
            assert not any(o.startswith("seed=") for o in spec.overrides)

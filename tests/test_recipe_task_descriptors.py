"""``iclab reproduce task_descriptors --quick`` (Huang & Ge): every claim's verdict at three seeds, the measured
numbers against independent references, and a wrong answer in place of a trained model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from iclab.cli import main
from iclab.evaluate import per_prompt_loss
from iclab.experiments import reproduce, task_descriptors
from iclab.experiments.task_descriptors import QUICK, Run, embedded, one_layer_controls, problem, tolerances
from iclab.learners import from_model
from iclab.runs import load_model
from iclab.seeding import make_generator
from iclab.tasks import make_task
from iclab.theory.lsa_weights import lsa_from_bilinear

EXPECTED = {
    "d3_n12_L1_mean/loss": "reproduced",
    "d3_n12_L1_mean/weights": "reproduced",
    "uses/d3_n12": "reproduced",
    "d3_n12_L1_none/loss": "reproduced",
    "d3_n12_L1_none/weights": "reproduced",
    "theory/infinite-n": "reproduced",
    "with/falls-to-zero": "not tested",
    "theory/flow-n12-with": "reproduced",
    "theory/flow-n12-without": "reproduced",
    "theory/flow-n∞-with": "reproduced",
    "theory/flow-n∞-without": "reproduced",
    "depth/d3_L2_with": "reproduced",
    "depth/d3_L2_without": "reproduced",
    "narrows/d3": "not reproduced",  # −0.08 to +0.01 over seeds 0-2 and 7-9, every interval across 0
    "gap/widens-with-d": "not tested",
    "onehot/K4": "reproduced",
    "descriptor-use-vs-n": "not tested",
}


@pytest.fixture(scope="module")
def quick(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("task_descriptors")
    assert main(["reproduce", "task_descriptors", "--quick", "--out", str(out), "--quiet", "--jobs", "2"]) == 3
    return out


def test_every_claim_has_its_verdict(quick):
    claims = pd.read_csv(quick / "claims.csv").set_index("key")
    assert claims["status"].to_dict() == EXPECTED
    assert (claims.loc[claims.kind == "theory check", "status"] == "reproduced").all()
    report = (quick / "report.md").read_text()
    assert ("**8 of 12 paper claims reproduced, 1 not reproduced, 3 not tested at this size (one n at this size; one "
            "d at this size; not yet measured (issue 23)); 5 of 5 theory checks hold.**") in report  # fmt: skip
    assert "## Not reproduced, and why" in report
    by_seed = pd.read_csv(quick / "claims_by_seed.csv")
    assert not by_seed[by_seed.subject != "model"]["passes"].any()
    for name in ("loss_vs_n", "flow", "weights", "depth", "onehot"):
        assert (quick / "figures" / f"{name}.png").stat().st_size > 20_000


def test_the_controls_and_tolerances():
    """B* × 0.95 is 5 % from B* and 0.25 % of L* above it (a quadratic loss); the weights tolerance is half the
    nearest control's distance, the loss tolerance half the nearest control's excess."""
    run = Run(3, 12, 1, "mean", 0)
    exact = problem(3, 12, "mean", 1.0)
    best, optimal = exact.optimum()
    controls = one_layer_controls(run, 1.0)
    assert exact.relative_error(controls["B* × 0.95"], best) == pytest.approx(0.05, rel=1e-9)
    assert exact.loss(controls["B* × 0.95"]) - optimal == pytest.approx(0.0025 * (exact.c - optimal), rel=1e-6)
    free = embedded(problem(3, 12, "none", 1.0).optimum()[0], 6)
    assert exact.loss(free) == pytest.approx(problem(3, 12, "none", 1.0).optimum()[1], rel=1e-9)
    weights, loss = tolerances(run, 1.0)
    assert weights == pytest.approx(min(exact.relative_error(c, best) for c in controls.values()) / 2)
    assert loss == pytest.approx(min(exact.loss(c) / optimal - 1 for c in controls.values()) / 2)


def test_the_measured_losses_are_the_models_own(quick):
    """Each trained one-layer model's exact loss against its loss on fresh prompts (within 2 half-widths of the
    interval); the 'uses μ' difference recomputed here on the recipe's prompts from the two predictors."""
    results = pd.read_csv(quick / "results.csv")
    one = results[results.layers == 1]
    half_width = (one["loss_high"] - one["loss_low"]) / 2
    assert ((one["loss"] - one["exact_loss"]).abs() < 2 * half_width).all()
    assert (one["gap_percent"] > -1e-9).all()
    model, cfg, _ = load_model(quick / "runs" / "seed1" / "d3_n12_L1_mean")
    generator = make_generator(1, "analysis-d3-n12-K0")
    prompts = make_task(cfg.task, cfg.seed).sample_in_chunks(QUICK.eval_prompts, generator, torch.float64)
    free = lsa_from_bilinear(problem(3, 12, "none", 1.0).optimum()[0], 3)
    stripped = type(prompts)(prompts.xs, prompts.ys, prompts.xq, prompts.yq)
    difference = per_prompt_loss(from_model(model.double()), prompts) - per_prompt_loss(from_model(free), stripped)
    by_seed = pd.read_csv(quick / "claims_by_seed.csv")
    uses = by_seed[(by_seed.key == "uses/d3_n12") & (by_seed.seed == 1) & (by_seed.subject == "model")].iloc[0]
    assert uses["value"] == pytest.approx(float(difference.mean()), rel=1e-9)
    sem = float(difference.std() / np.sqrt(len(difference)))
    assert uses["low"] < uses["value"] - sem and uses["high"] > uses["value"] + sem


def test_the_descriptor_free_optimum_in_place_of_the_model_with_mu_is_not_reproduced(quick, monkeypatch, tmp_path):
    """The trained one-layer model with μ replaced by the best descriptor-free LSA (μ's weights zero): exactly its
    two claims and 'uses μ' turn not reproduced (the narrowing stays not reproduced)."""
    real = task_descriptors.load_model

    def replaced(run_dir, device="cpu"):
        model, cfg, step = real(run_dir, device)
        if Path(run_dir).name == "d3_n12_L1_mean":
            model = lsa_from_bilinear(embedded(problem(3, 12, "none", 1.0).optimum()[0], 6), 3)
        return model, cfg, step

    monkeypatch.setattr(task_descriptors, "load_model", replaced)
    out = tmp_path / "injected"
    out.mkdir()
    (out / "runs").symlink_to(quick / "runs")
    failed = {r.claim.key for r in reproduce("task_descriptors", out, size="quick", progress=False).failed}
    assert failed == {"d3_n12_L1_mean/loss", "d3_n12_L1_mean/weights", "uses/d3_n12", "narrows/d3"}

"""``iclab reproduce mlp_lsa --quick``: every claim's verdict at three seeds with its controls, the measured numbers
against references computed here (the MLP + LSA from its saved weights with numpy, the closed-form losses of the
prior mean and of the best one-layer LSA), and plain LSA's weights in place of the MLP + LSA turning exactly its
claim to "not reproduced"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from iclab.cli import main
from iclab.config import parse_config
from iclab.experiments import mlp_lsa, reproduce
from iclab.seeding import make_generator
from iclab.tasks import make_task

QUICK = mlp_lsa.QUICK


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mlp_lsa")
    assert main(["reproduce", "mlp_lsa", "--quick", "--out", str(out), "--quiet", "--jobs", "2"]) == 0
    return out


def test_every_claim_has_its_verdict_at_three_seeds_with_its_controls_rejected(quick: Path):
    claims = pd.read_csv(quick / "claims.csv").set_index("key")
    assert claims["status"].to_dict() == {"square/mlp-lsa-learns": "reproduced", "relu/mlp-lsa-learns": "reproduced",
                                          "theory/lsa-odd": "reproduced"}  # fmt: skip
    assert (claims["seeds_held"] == 3).all() and claims.loc["theory/lsa-odd", "kind"] == "theory check"
    by_seed = pd.read_csv(quick / "claims_by_seed.csv")
    controls = by_seed[by_seed["subject"] != "model"]
    assert set(controls["subject"]) == {"plain LSA trained alike", "the context mean ȳ", "MLP + LSA trained alike"}
    assert not controls["passes"].any()
    report = (quick / "report.md").read_text()
    assert "**2 of 2 paper claims reproduced, 0 not reproduced; 1 of 1 theory checks hold.**" in report
    assert (quick / "figures" / "relative_loss.png").stat().st_size > 20_000
    results = pd.read_csv(quick / "results.csv")
    assert len(results) == 3 * len(mlp_lsa.RESPONSES) * len(mlp_lsa.PREDICTORS)


def test_reference_losses_match_their_closed_forms(quick: Path):
    """With w ~ N(0, I/d), x ~ N(0, I): for y = (wᵀx)², E y² = 3(d² + 2d)/d² and the prior mean ‖x_q‖²/d leaves
    E Var(y | x_q) = 2(d² + 2d)/d², two thirds of it; for ±relu, the best one-layer LSA (one GD step) has
    L*/E y² = 1 − 1/(8κ), κ = (d/2 + 1)/n + (1 − 1/n)/4 (Mahankali et al.'s non-linear theory, written out)."""
    results = pd.read_csv(quick / "results.csv")
    d, n = QUICK.d, QUICK.n
    square = results[results["response"] == "square"].set_index(["seed", "predictor"])
    pooled = square.xs("prior_mean", level="predictor")["loss"].sum() / square.xs("prior_mean", level="predictor")[
        "zero_loss"].sum()  # fmt: skip
    assert pooled == pytest.approx(2 / 3, abs=0.03)
    assert square.xs("lsa_optimum", level="predictor")["relative_loss"].to_numpy() == pytest.approx(1.0, abs=1e-12)
    kappa = (d / 2 + 1) / n + (1 - 1 / n) / 4
    relu = results[(results["response"] == "relu") & (results["predictor"] == "lsa_optimum")]
    assert relu["loss"].sum() / relu["zero_loss"].sum() == pytest.approx(1 - 1 / (8 * kappa), abs=0.02)


def test_the_mlp_lsa_loss_is_numpy_from_its_saved_weights(quick: Path):
    """Seed 2, ±relu: φ(x) = W₂ relu(W₁x + b₁) + b₂, ŷ = −v (1/n) Σ y_i φ(x_i)ᵀ A φ(x_q) (the sparse form)."""
    task = make_task(parse_config({}, mlp_lsa.task_overrides(QUICK, "relu")).task)
    prompts = task.sample(QUICK.eval_prompts, make_generator(2, "mlp-lsa-test-relu"), dtype=torch.float64)
    xs, ys, xq, yq = (t.numpy() for t in (prompts.xs, prompts.ys, prompts.xq[:, 0], prompts.yq[:, 0]))
    w = {k: t.double().numpy() for k, t in load_file(quick / "runs" / "seed2" / "relu_mlp_lsa" /
                                                     "model.safetensors").items()}  # fmt: skip

    def features(x: np.ndarray) -> np.ndarray:
        return np.maximum(x @ w["mlp.0.weight"].T + w["mlp.0.bias"], 0) @ w["mlp.2.weight"].T + w["mlp.2.bias"]

    scores = np.einsum("bnk,kl,bl->bn", features(xs), w["lsa.blocks.0.attn.kq_block"][0], features(xq))
    prediction = -w["lsa.blocks.0.attn.value"][0] * (scores * ys).mean(1)
    results = pd.read_csv(quick / "results.csv").set_index(["seed", "response", "predictor"])
    assert np.mean((prediction - yq) ** 2) == pytest.approx(results.loc[(2, "relu", "mlp_lsa"), "loss"], rel=1e-5)


def test_plain_lsa_in_place_of_the_mlp_lsa_fails_its_claim_only(quick: Path, monkeypatch, tmp_path):
    """The ±relu MLP + LSA replaced by the plain LSA trained alike: it does not beat itself, so relu/mlp-lsa-learns
    fails; the square's claim and the theory check (its control is the square's MLP + LSA as well) hold."""
    real = mlp_lsa.load_model

    def swapped(run_dir, device="cpu"):
        if Path(run_dir).name == "relu_mlp_lsa":
            run_dir = Path(run_dir).parent / "relu_lsa"
        return real(run_dir, device)

    monkeypatch.setattr(mlp_lsa, "load_model", swapped)
    out = tmp_path / "injected"
    out.mkdir()
    (out / "runs").symlink_to(quick / "runs")
    outcome = reproduce("mlp_lsa", out, size="quick", progress=False)
    assert {r.claim.key for r in outcome.failed} == {"relu/mlp-lsa-learns"}


def test_plan_of_every_size():
    for size in mlp_lsa.SIZES.values():
        planned = mlp_lsa.plan(size)
        assert [spec.run_id for spec in planned] == ["square_lsa", "square_mlp_lsa", "relu_lsa", "relu_mlp_lsa"]
        assert all(("model.param=sparse" in spec.overrides) == spec.run_id.endswith("mlp_lsa") for spec in planned)
        assert not any(o.startswith("seed=") for spec in planned for o in spec.overrides)

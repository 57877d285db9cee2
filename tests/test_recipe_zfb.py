"""The zfb recipe (Zhang, Frei, Bartlett; Ahn et al.): trained LSAs run preconditioned GD on anisotropic x."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from iclab.cli import main
from iclab.evaluate import query_loss
from iclab.experiments import reproduce, zfb
from iclab.learners import from_model
from iclab.runs import load_model
from iclab.seeding import make_generator
from iclab.tasks import make_task
from iclab.theory.lsa import lsa_optimum
from iclab.theory.lsa_weights import lsa_from_gamma

QUICK_CLAIMS = 22  # 6 runs × (Γ, loss), closed form, the n → ∞ limit, 2 × (trained Γ → Λ⁻¹, flow), Ahn one layer,
# 2 layers × cos, depth


def zfb_closed_form(lam: np.ndarray, n: float) -> np.ndarray:
    """((1 + 1/n) Λ + tr(Λ)/n · I)⁻¹, written out here independently of the recipe."""
    d = lam.shape[0]
    return np.linalg.inv((1 + 1 / n) * lam + np.trace(lam) / n * np.eye(d))


def exact_loss(gamma: np.ndarray, lam: np.ndarray, n: int) -> float:
    """E(x_qᵀ Γ h − y_q)² for w ~ N(0, I), no noise: tr(Γᵀ Λ Γ M) − 2 tr(Γ Λ²) + tr Λ with
    M = (1 + 1/n) Λ² + (tr Λ/n) Λ (PAPERS.md, "One-layer LSA theory")."""
    moment = (1 + 1 / n) * lam @ lam + np.trace(lam) / n * lam
    return float(np.trace(gamma.T @ lam @ gamma @ moment) - 2 * np.trace(gamma @ lam @ lam) + np.trace(lam))


def matrix(entries: pd.DataFrame, run_id: str, which: str) -> np.ndarray:
    part = entries[(entries.run_id == run_id) & (entries.matrix == which)]
    return part.pivot(index="row", columns="col", values="value").to_numpy()


def raw_gammas(model) -> list[np.ndarray]:
    """Γ_ℓ = −v_ℓ A_ℓᵀ straight from the parameters of each layer of a sparse LSA."""
    return [
        (-block.attn.value[0].double() * block.attn.kq_block[0].double().T).detach().numpy() for block in model.blocks
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zfb_closed_form_is_the_general_optimum(seed):
    """ZFB's Γ* equals Σ_w Λ M⁻¹ (lsa_optimum) for a random SPD Λ and w ~ N(0, I), and is Λ⁻¹ at n = ∞; the
    one-layer optimum for w ~ N(0, Λ⁻¹) is n/(n + d + 1) Λ⁻¹."""
    rng = np.random.default_rng(seed)
    root = rng.normal(size=(4, 4))
    lam = root @ root.T + 0.1 * np.eye(4)
    for n in (1, 3, 17, 200):
        assert np.allclose(zfb.zfb_gamma(lam, n), lsa_optimum(n, lam).gamma, rtol=1e-10, atol=1e-12)
        assert np.allclose(zfb.zfb_gamma(lam, n), zfb_closed_form(lam, n), rtol=1e-12, atol=1e-14)
        inverse_w = lsa_optimum(n, lam, np.linalg.inv(lam)).gamma
        assert np.allclose(zfb.ahn_gamma(lam, n), inverse_w, rtol=1e-9, atol=1e-12)
    assert np.allclose(zfb.zfb_gamma(lam, math.inf), np.linalg.inv(lam), rtol=1e-12)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("zfb")
    assert main(["reproduce", "zfb", "--quick", "--out", str(out), "--quiet", "--jobs", "2"]) == 0
    return out


def test_every_claim_is_reproduced_at_three_seeds(quick):
    claims = pd.read_csv(quick / "claims.csv")
    assert len(claims) == QUICK_CLAIMS and (claims["status"] == "reproduced").all()
    assert (claims["seeds_held"] == 3).all() and (claims["kind"] == "theory check").sum() == 4
    by_seed = pd.read_csv(quick / "claims_by_seed.csv")
    assert not by_seed[by_seed.subject != "model"]["passes"].any()  # every control rejected at every seed
    for name in ("loss_vs_n", "preconditioner_vs_n", "gamma_heatmaps", "flow", "depth"):
        assert (quick / "figures" / f"{name}.png").stat().st_size > 20_000
    report = (quick / "report.md").read_text()
    assert "**18 of 18 paper claims reproduced, 0 not reproduced; 4 of 4 theory checks hold.**" in report
    assert "iclab reproduce zfb --quick" in report and report.count("iclab train ") == 3 * len(zfb.plan(zfb.QUICK))


def test_the_tolerances_follow_from_the_controls():
    """Half the distance from ZFB's Γ* to the nearest of Γ* × 0.95, Λ⁻¹ and the best plain step (numpy here);
    the alignment floor midway between 1 and cos(I, Λ⁻¹)."""
    lam = np.diag(zfb.QUICK.x_cov_diag)
    inverse = np.linalg.inv(lam)
    for n in zfb.QUICK.n_grid:
        optimum = zfb_closed_form(lam, n)
        moment = (1 + 1 / n) * lam @ lam + np.trace(lam) / n * lam
        plain = np.trace(lam @ lam @ lam) / np.trace(lam @ moment) * np.eye(3)
        nearest = min(0.05, *(np.linalg.norm(g - optimum) / np.linalg.norm(optimum) for g in (inverse, plain)))
        assert zfb.gamma_tolerance(optimum, zfb.zfb_controls(lam, n)) == pytest.approx(nearest / 2, rel=1e-9)
    cos = np.trace(inverse) / np.linalg.norm(inverse) / math.sqrt(3)
    assert zfb.alignment_floor(zfb.QUICK) == pytest.approx((1 + cos) / 2, rel=1e-12)


def test_the_measured_numbers_match_independent_references(quick):
    """ZFB's Γ* (numpy, here) against gammas.csv and results.csv, the trained Γ read from the raw weights, its exact
    loss (written out here) and one model's Monte Carlo loss, L* of the w ~ N(0, Λ⁻¹) task (d(d + 1)/(n + d + 1)),
    the per-layer cosines."""
    size = zfb.QUICK
    results = pd.read_csv(quick / "results.csv")
    entries = pd.read_csv(quick / "gammas.csv")
    assert len(results) == 3 * 2 * len(size.n_grid) and sorted(set(results["seed"])) == [0, 1, 2]
    for _, row in results[results.seed == 2].iterrows():
        run_id = row["run_id"]
        model, cfg, _ = load_model(quick / "runs" / "seed2" / run_id)
        assert cfg.seed == 2
        lam = make_task(cfg.task, cfg.seed).x_cov.numpy()
        mine = entries[(entries.seed == 2)]
        assert np.allclose(np.linalg.eigvalsh(lam), sorted(size.x_cov_diag), rtol=1e-12)
        if row["basis"] == "diag":
            assert np.array_equal(lam, np.diag(size.x_cov_diag)) and row["offdiagonal_optimum"] == 0
        else:
            assert cfg.task.rotation == "fixed" and row["offdiagonal_optimum"] > 0.1  # Γ* is not diagonal
        optimum = zfb_closed_form(lam, row["n"])
        assert np.allclose(matrix(mine, run_id, "optimum"), optimum, rtol=1e-12, atol=1e-14)
        assert row["optimal_loss"] == pytest.approx(np.trace(lam) - np.trace(optimum @ lam @ lam), rel=1e-10)
        gamma = raw_gammas(model)[0]
        assert np.allclose(matrix(mine, run_id, "trained"), gamma, rtol=1e-12, atol=1e-14)
        distance = np.linalg.norm(gamma - optimum) / np.linalg.norm(optimum)
        assert row["gamma_distance"] == pytest.approx(distance, rel=1e-9)
        assert row["exact_loss"] == pytest.approx(exact_loss(gamma, lam, row["n"]), rel=1e-10)
        inverse = np.linalg.inv(lam)
        assert row["optimum_to_inverse"] == pytest.approx(np.linalg.norm(optimum - inverse) / np.linalg.norm(inverse))
        assert row["flow_final_gap"] < 1e-8 and row["flow_gamma_distance"] < 1e-6
        assert row["zero_flow_final_gap"] == pytest.approx(np.trace(lam) - row["optimal_loss"], rel=1e-9)
    model, cfg, _ = load_model(quick / "runs" / "seed2" / zfb.zfb_id("rotated", 20))
    prompts = make_task(cfg.task, cfg.seed).sample(20_000, make_generator(7, "zfb-test"), dtype=torch.float64)
    mean, sem = query_loss(from_model(model.double()), prompts)
    rotated = results[(results.seed == 2) & (results.run_id == zfb.zfb_id("rotated", 20))].iloc[0]
    assert abs(mean - rotated["exact_loss"]) < 4 * sem

    depth = pd.read_csv(quick / "depth.csv")
    depth = depth[depth.seed == 2].set_index("layers")
    layers = pd.read_csv(quick / "layers.csv")
    layers = layers[layers.seed == 2]
    d, n = size.d, size.depth_n
    assert list(depth.index) == list(size.depths)
    assert np.allclose(depth["optimal_loss_1layer"], d * (d + 1) / (n + d + 1), rtol=1e-10)
    half_width = (depth["loss_high"] - depth["loss_low"]) / 2
    assert abs(depth.loc[1, "loss"] - depth.loc[1, "exact_loss"]) < 2 * half_width[1]
    for layer_count in size.depths:
        model, cfg, _ = load_model(quick / "runs" / "seed2" / zfb.ahn_id(layer_count))
        task = make_task(cfg.task, cfg.seed)
        inverse = np.linalg.inv(task.x_cov.numpy())
        assert np.allclose(task.w_cov.numpy(), inverse, rtol=1e-10)
        rows = layers[layers.layers == layer_count].set_index("layer")
        assert len(rows) == layer_count
        for layer, gamma in enumerate(raw_gammas(model), start=1):
            cos = np.sum(gamma * inverse) / np.linalg.norm(gamma) / np.linalg.norm(inverse)
            cos_identity = np.trace(gamma) / np.linalg.norm(gamma) / math.sqrt(d)
            assert rows.loc[layer, "cos_inverse"] == pytest.approx(cos, rel=1e-9)
            assert rows.loc[layer, "cos_identity"] == pytest.approx(cos_identity, rel=1e-9)
        if layer_count == 1:
            gamma = raw_gammas(model)[0]
            reference = n / (n + d + 1) * inverse
            assert depth.loc[1, "gamma_distance"] == pytest.approx(
                np.linalg.norm(gamma - reference) / np.linalg.norm(reference), rel=1e-9
            )


def test_the_plain_gd_step_in_place_of_a_trained_model_is_not_reproduced(quick, monkeypatch, tmp_path):
    """The trained one-layer model at n = 20 on the diagonal Λ replaced by the best plain GD step ηI: its Γ and loss
    claims and the trend of the trained Γ to Λ⁻¹ turn "not reproduced"; nothing else changes."""
    real = zfb.load_model

    def replaced(run_dir, device="cpu"):
        model, cfg, step = real(run_dir, device)
        if Path(run_dir).name == zfb.zfb_id("diag", 20):
            model = lsa_from_gamma(zfb.plain_gd_step(np.diag(zfb.QUICK.x_cov_diag), 20))
        return model, cfg, step

    monkeypatch.setattr(zfb, "load_model", replaced)
    out = tmp_path / "injected"
    out.mkdir()
    (out / "runs").symlink_to(quick / "runs")
    failed = {r.claim.key for r in reproduce("zfb", out, size="quick", progress=False).failed}
    assert failed == {"zfb_diag_n20/gamma", "zfb_diag_n20/loss", "diag/trained-to-inverse"}

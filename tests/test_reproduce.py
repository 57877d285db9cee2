"""The quick sizes of the reproductions: their claims must hold (the full sizes are commands)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from iclab.cli import main
from iclab.experiments.grid import train_grid
from iclab.train import TrainingDiverged


def test_functional_gd_quick(tmp_path, capsys):
    """Cheng et al.: ReLU attention beats linear attention on ReLU-kernel data, and linear beats ReLU on
    linear-kernel data; a one-layer model sits near one step of functional GD with its own kernel."""
    out = tmp_path / "fgd"
    assert main(["reproduce", "functional_gd", "--quick", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "NO" not in printed and printed.count("yes") == 2
    results = pd.read_csv(out / "results.csv").set_index(["kernel", "activation"])["loss"]
    assert results["relu", "relu"] < results["relu", "linear"]
    assert results["linear", "linear"] < results["linear", "relu"]
    matches = pd.read_csv(out / "layer_match.csv").set_index(["kernel", "activation"])["relative_difference"]
    assert matches["linear", "linear"] < 0.1  # the trained 1-layer LSA ≈ one functional-GD (= GD) step
    for name in ("heatmap.png", "layers.png", "context.png"):
        assert (out / "figures" / name).stat().st_size > 1000
    assert "Claim checks" in (out / "report.md").read_text()
    # a second call reuses the finished runs
    assert main(["reproduce", "functional_gd", "--quick", "--out", str(out), "--quiet"]) == 0


def test_unknown_recipe_exits_2(capsys):
    assert main(["reproduce", "nope", "--quick"]) == 2
    assert "functional_gd" in capsys.readouterr().err


def test_mlp_lsa_quick(tmp_path, capsys):
    """Kim & Suzuki: MLP + LSA learns y = (wᵀx)² in context, plain LSA stays at the zero predictor."""
    out = tmp_path / "mlp"
    assert main(["reproduce", "mlp_lsa", "--quick", "--out", str(out), "--quiet"]) == 0
    assert "NO" not in capsys.readouterr().out
    results = pd.read_csv(out / "results.csv").set_index(["response", "model"])
    square = results.loc["square"]
    assert square.loc["mlp_lsa", "loss"] < min(square.loc["lsa", "loss"], square.loc["mlp_lsa", "context_mean_loss"])
    assert results.loc[("relu", "mlp_lsa"), "loss"] < results.loc[("relu", "lsa"), "loss"]


def test_nonlinear_responses_quick(tmp_path, capsys):
    """Mahankali et al.: for ReLU and tanh responses the trained one-layer LSA is one GD step, Γ ≈ η* I with
    the exact η* of iclab.theory.nonlinear."""
    out = tmp_path / "nonlinear"
    assert main(["reproduce", "nonlinear_responses", "--quick", "--out", str(out), "--quiet"]) == 0
    assert "NO" not in capsys.readouterr().out
    results = pd.read_csv(out / "results.csv").set_index("response")
    assert (results["gamma_gap"] < 0.15).all() and (results["off_diagonal_share"] < 0.1).all()
    excess = results["exact_loss_trained"] / results["exact_loss_optimum"] - 1
    assert (excess >= -1e-12).all() and (excess < 0.02).all()  # the exact loss: never below the optimum


def test_newton_quick(tmp_path, capsys):
    """Fu et al.'s setting at the quick size: every depth is probed; the one-layer model is one GD step."""
    out = tmp_path / "newton"
    assert main(["reproduce", "newton", "--quick", "--out", str(out), "--quiet"]) == 0
    maps = pd.read_csv(out / "maps.csv")
    assert sorted(set(maps["depth"])) == [1, 2] and len(maps) == 3
    one = maps[maps["depth"] == 1].iloc[0]
    assert one["best"].startswith("gd(k=1,") and one["gd_difference"] < 1e-3 < one["newton_difference"]
    assert (out / "figures" / "newton_map.png").exists() and (out / "probes" / "L2" / "report.md").exists()


def test_train_grid_leaves_out_diverged_runs_when_allowed(tmp_path):
    small = ["task.d=3", "task.n=6", "train.steps=3", "eval.batch_size=16"]
    specs = {"ok": small, "bad": [*small, "train.diverge_loss=1e-9"]}
    with pytest.raises(TrainingDiverged):
        train_grid(specs, tmp_path / "strict", progress=False)
    for _ in range(2):  # the second time, the diverged run dir is recognised without retraining
        models = train_grid(specs, tmp_path / "lenient", progress=False, allow_diverged=True)
        assert set(models) == {"ok"}


def test_train_grid_in_worker_processes_matches_sequential(tmp_path):
    """--jobs trains in spawned workers; the weights equal a sequential run's (same config and seed)."""
    specs = {
        f"L{layers}": ["task.d=3", "task.n=6", f"model.layers={layers}", "train.steps=5", "train.batch_size=16",
                       "eval.batch_size=32"]
        for layers in (1, 2)
    }  # fmt: skip
    sequential = train_grid(specs, tmp_path / "seq", progress=False)
    parallel = train_grid(specs, tmp_path / "par", progress=False, jobs=2)
    for run_id, model in sequential.items():
        for (name, a), b in zip(model.state_dict().items(), parallel[run_id].state_dict().values(), strict=True):
            assert torch.equal(a, b), (run_id, name)


def test_reproduce_rejects_nonpositive_jobs(capsys):
    assert main(["reproduce", "mlp_lsa", "--quick", "--jobs", "0"]) == 2
    assert "--jobs" in capsys.readouterr().err

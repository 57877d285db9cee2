"""The quick sizes of the reproductions: their claims must hold (the full sizes are commands)."""

from __future__ import annotations

import shlex
from concurrent.futures import Future
from pathlib import Path

import pandas as pd
import pytest
import torch

from iclab.cli import main
from iclab.experiments import RECIPES, list_run_commands, reproduce
from iclab.experiments.grid import execute, load_finished
from iclab.experiments.recipe import RunSpec
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


def test_execute_leaves_out_diverged_runs_when_allowed(tmp_path):
    small = ("task.d=3", "task.n=6", "train.steps=3", "eval.batch_size=16")
    specs = [RunSpec("ok", small), RunSpec("bad", (*small, "train.diverge_loss=1e-9"))]
    with pytest.raises(TrainingDiverged):
        execute(specs, tmp_path / "strict", progress=False)
    for _ in range(2):  # the second time, the diverged run dir is recognised without retraining
        runs = execute(specs, tmp_path / "lenient", progress=False, allow_diverged=True)
        assert runs == {"ok": tmp_path / "lenient" / "ok"}


def test_execute_in_worker_processes_matches_sequential(tmp_path):
    """--jobs trains in spawned workers; the weights equal a sequential run's (same config and seed)."""
    specs = [
        RunSpec(f"L{layers}", ("task.d=3", "task.n=6", f"model.layers={layers}", "train.steps=5",
                               "train.batch_size=16", "eval.batch_size=32"))
        for layers in (1, 2)
    ]  # fmt: skip
    sequential = load_finished(execute(specs, tmp_path / "seq", progress=False))
    parallel = load_finished(execute(specs, tmp_path / "par", progress=False, jobs=2))
    for run_id, model in sequential.items():
        for (name, a), b in zip(model.state_dict().items(), parallel[run_id].state_dict().values(), strict=True):
            assert torch.equal(a, b), (run_id, name)


def test_reproduce_rejects_nonpositive_jobs(capsys):
    assert main(["reproduce", "mlp_lsa", "--quick", "--jobs", "0"]) == 2
    assert "--jobs" in capsys.readouterr().err


class InlineExecutor:
    """Runs each submitted call at once in this process and records it: what a cluster adapter looks like."""

    def __init__(self):
        self.calls = []

    def submit(self, fn, *args, **kwargs):
        self.calls.append((fn, args, kwargs))
        future = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def test_reproduce_trains_through_a_given_executor(tmp_path):
    """Every planned run goes through the executor's submit, with plain (picklable) arguments; the analysis
    then loads the run dirs. A second call finds every run finished."""
    recipe = RECIPES["nonlinear_responses"]
    executor = InlineExecutor()
    outcome = reproduce(recipe.name, tmp_path, size="quick", progress=False, executor=executor)
    planned = recipe.plan("quick")
    assert len(executor.calls) == len(planned) and all(outcome["checks"].values())
    assert [Path(args[1]) for _, args, _ in executor.calls] == [tmp_path / "runs" / spec.run_id for spec in planned]
    assert all(isinstance(args[0], list) and isinstance(args[1], str) for _, args, _ in executor.calls)
    again = InlineExecutor()
    pd.testing.assert_frame_equal(
        reproduce(recipe.name, tmp_path, size="quick", progress=False, executor=again)["results"], outcome["results"]
    )
    assert len(again.calls) == len(planned)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_list_run_commands_one_train_command_per_planned_run(tmp_path, name):
    planned = RECIPES[name].plan("quick")
    commands = list_run_commands(name, tmp_path / "out dir", size="quick")
    assert len(commands) == len(planned)
    for command, spec in zip(commands, planned, strict=True):
        words = shlex.split(command)
        assert words[:2] == ["iclab", "train"] and words[-1] == "--quiet"
        assert words[2:-3] == list(spec.overrides)
        assert words[-3:-1] == ["--out", str(tmp_path / "out dir" / "runs" / spec.run_id)]


def test_listed_commands_train_the_runs_reproduce_analyses(tmp_path):
    """Running the listed commands (as a scheduler would) leaves nothing for reproduce to train: it only
    analyses, and no file of a run dir changes."""
    out = tmp_path / "nonlinear"
    for command in list_run_commands("nonlinear_responses", out, size="quick"):
        words = shlex.split(command)
        assert words[0] == "iclab" and main(words[1:]) == 0
    trained = {path: path.stat().st_mtime_ns for path in (out / "runs").rglob("*")}
    assert all(reproduce("nonlinear_responses", out, size="quick", progress=False)["checks"].values())
    assert {path: path.stat().st_mtime_ns for path in (out / "runs").rglob("*")} == trained


def test_cli_list_runs_prints_the_commands_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reproduce", "newton", "--quick", "--list-runs", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == list_run_commands("newton", out, size="quick") and not out.exists()


def test_garg_quick(tmp_path, capsys):
    """GPT-2 at the quick size: it trains, beats averaging and the zero predictor; the table, the curves with
    their intervals and the figure are written."""
    out = tmp_path / "garg"
    assert main(["reproduce", "garg", "--quick", "--out", str(out), "--quiet"]) == 0
    assert "NO" not in capsys.readouterr().out
    results = pd.read_csv(out / "results.csv")
    assert set(results["learner"]) == {"gpt2", "least_squares", "averaging", "knn:k=3"}
    assert (results["low"] <= results["normalised"]).all() and (results["normalised"] <= results["high"]).all()
    assert (out / "figures" / "curves.png").stat().st_size > 5000 and "90%" in (out / "report.md").read_text()


def test_sizes_are_named(tmp_path, capsys):
    assert main(["reproduce", "garg", "--size", "scaled", "--list-runs", "--out", str(tmp_path)]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 4 and all("task.d=5" in c and "model.size=tiny" in c for c in commands)
    assert main(["reproduce", "mlp_lsa", "--size", "scaled"]) == 2
    assert "--size must be one of quick, full for mlp_lsa" in capsys.readouterr().err

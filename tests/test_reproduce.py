"""Executing a recipe's plan: worker processes, executors, listed commands, sizes (the recipes' own claims are
tested in tests/test_recipe_<name>.py, the claims framework in test_claims.py and test_recipe_framework.py)."""

from __future__ import annotations

import shlex
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from iclab.cli import main
from iclab.experiments import get_recipe, list_run_commands, mahankali, reproduce
from iclab.experiments.grid import RunSpec, execute, load_finished
from iclab.experiments.recipe import BUILTIN
from iclab.experiments.reproduce import seeded_plan
from iclab.train import TrainingDiverged


def test_unknown_recipe_exits_2(capsys):
    assert main(["reproduce", "nope", "--quick"]) == 2
    assert "functional_gd" in capsys.readouterr().err


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


@pytest.fixture
def small_mahankali(monkeypatch):
    """mahankali's quick plan cut to two runs a seed (ReLU and tanh responses, noise-free, 300 steps): the
    plumbing tests' recipe (its claims are not the point here)."""
    small = replace(mahankali.QUICK, settings=("relu", "tanh"), noise_levels=(0.0,), steps=300, batch_size=256)
    monkeypatch.setitem(mahankali.SIZES, "quick", small)
    return get_recipe("mahankali")


def test_reproduce_trains_through_a_given_executor(tmp_path, small_mahankali):
    """Every planned run of every seed goes through the executor's submit, with plain (picklable) arguments; the
    analysis then loads the run dirs. A second call finds every run finished and measures the same."""
    recipe = small_mahankali
    executor = InlineExecutor()
    outcome = reproduce(recipe.name, tmp_path, size="quick", progress=False, executor=executor)
    planned = seeded_plan(recipe, "quick", (0, 1, 2))
    assert len(executor.calls) == len(planned) == 6 and len(outcome.results) == 4 + 2
    assert [Path(args[1]) for _, args, _ in executor.calls] == [tmp_path / "runs" / spec.run_id for spec in planned]
    assert [spec.run_id for spec in planned[:2]] == ["seed0/relu_noise0", "seed0/tanh_noise0"]
    assert all(isinstance(args[0], list) and isinstance(args[1], str) for _, args, _ in executor.calls)
    before = pd.read_csv(tmp_path / "claims_by_seed.csv")
    again = InlineExecutor()
    reproduce(recipe.name, tmp_path, size="quick", progress=False, executor=again)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "claims_by_seed.csv"), before)
    assert len(again.calls) == len(planned)


@pytest.mark.parametrize("name", BUILTIN)
def test_list_run_commands_one_train_command_per_planned_run_and_seed(tmp_path, name):
    recipe = get_recipe(name)
    planned = recipe.plan(recipe.sizes["quick"])
    commands = list_run_commands(name, tmp_path / "out dir", size="quick")
    assert len(commands) == 3 * len(planned)
    for index, command in enumerate(commands):
        seed, spec = divmod(index, len(planned))
        spec = planned[spec]
        words = shlex.split(command)
        assert words[:3] == ["iclab", "train", f"seed={seed}"] and words[-1] == "--quiet"
        assert words[3:-3] == list(spec.overrides)
        assert words[-3:-1] == ["--out", str(tmp_path / "out dir" / "runs" / f"seed{seed}" / spec.run_id)]


def test_listed_commands_train_the_runs_reproduce_analyses(tmp_path, small_mahankali):
    """Running the listed commands (as a scheduler would) leaves nothing for reproduce to train: it only
    analyses, and no file of a run dir changes."""
    out = tmp_path / "mahankali"
    commands = list_run_commands("mahankali", out, size="quick")
    assert len(commands) == 6
    for command in commands:
        words = shlex.split(command)
        assert words[0] == "iclab" and main(words[1:]) == 0
    trained = {path: path.stat().st_mtime_ns for path in (out / "runs").rglob("*")}
    assert reproduce("mahankali", out, size="quick", progress=False).results
    assert {path: path.stat().st_mtime_ns for path in (out / "runs").rglob("*")} == trained


def test_cli_list_runs_prints_the_commands_and_trains_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["reproduce", "newton", "--quick", "--list-runs", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == list_run_commands("newton", out, size="quick") and not out.exists()
    assert len(printed) == 3 * 2 and all(" model.param=block " in line for line in printed)


def test_sizes_are_named(tmp_path, capsys):
    assert main(["reproduce", "garg", "--size", "scaled", "--list-runs", "--out", str(tmp_path)]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 3 * 4 and all("task.d=5" in c and "model.size=tiny" in c for c in commands)
    sparse = [c.split() for c in commands if "task.name=sparse_linear" in c]  # its own sparsity, depth and steps
    assert len(sparse) == 3 and all(
        {"task.sparsity=1", "model.layers=6", "train.steps=24000"} <= set(c) for c in sparse
    )
    assert not any("task.sparsity" in c or "model.layers" in c for c in commands if "sparse_linear" not in c)
    assert main(["reproduce", "mlp_lsa", "--size", "scaled"]) == 2
    assert "--size must be one of quick, full for mlp_lsa" in capsys.readouterr().err

"""The quick sizes of the reproductions: their claims must hold (the full sizes are commands)."""

from __future__ import annotations

import shlex
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from iclab.cli import main
from iclab.evaluate import query_loss
from iclab.experiments import RECIPES, list_run_commands, mahankali, reproduce
from iclab.experiments.grid import execute, load_finished
from iclab.experiments.recipe import RunSpec
from iclab.learners import from_model
from iclab.runs import load_model
from iclab.seeding import make_generator
from iclab.tasks import make_task
from iclab.theory import effective_gamma, lsa_optimum
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
    report = (out / "report.md").read_text()  # issue 12's format: every claim with its numbers, commands, time
    assert "| claim | paper | iclab | tolerance | holds |" in report and "## Commands" in report
    assert "## Time" in report and len(pd.read_csv(out / "claims.csv")) == report.count("| yes |") > 0
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


def test_mahankali_quick(tmp_path, capsys):
    """Mahankali et al. at the quick size: every trained one-layer LSA's exact loss is within 3 % of L* and its
    Γ within 5 % of Γ* (isotropic: η* I; anisotropic: Λ M⁻¹; ReLU and tanh responses: η* I), at σ = 0 and
    0.5. Checked independently: L* and η* from their closed forms, Γ from the raw weights, the exact loss
    against the model's Monte Carlo loss, the model's prediction against x_qᵀ Γ h."""
    out = tmp_path / "mahankali"
    assert main(["reproduce", "mahankali", "--quick", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "NO " not in printed and printed.count("yes") == 18
    results = pd.read_csv(out / "results.csv").set_index("run_id")
    assert len(results) == 8 and set(results["noise_std"]) == {0.0, 0.5}
    assert ((results["gap_percent"] > -1e-9) & (results["gap_percent"] < 3)).all()  # never below the optimum
    assert (results["gamma_distance"] < 0.05).all()
    aniso = results[results["setting"] == "anisotropic"]
    assert len(aniso) == 2 and (aniso["best_gd_step_loss"] > 1.1 * aniso["optimal_loss"]).all()
    d, n = 3, 10
    for noise in (0.0, 0.5):  # closed forms: isotropic η* = n/(n + d + 1 + σ²); ReLU η* = n/(n + 2d + 3 + 4σ²)
        s2 = noise**2
        iso = results.loc[f"isotropic_noise{noise:g}"]
        assert iso["eta_star"] == pytest.approx(n / (n + d + 1 + s2), rel=1e-12)
        assert iso["optimal_loss"] == pytest.approx(d * (d + 1 + s2) / (n + d + 1 + s2) + s2, rel=1e-12)
        assert results.loc[f"relu_noise{noise:g}", "eta_star"] == pytest.approx(n / (n + 2 * d + 3 + 4 * s2))
    lam = np.diag([2.0, 1.0, 0.5])
    optimum = lsa_optimum(n, lam, None, 0.5)
    row = results.loc["anisotropic_noise0.5"]
    assert row["optimal_loss"] == pytest.approx(optimum.loss, rel=1e-12)
    for run_id, row in results.iterrows():
        model, cfg, _ = load_model(out / "runs" / run_id)
        model = model.double()  # exact: the float32 weights, the products in float64
        attn = model.blocks[0].attn  # sparse form: ŷ = x_qᵀ Γ h with Γ = −v Aᵀ
        gamma = (-attn.value[0] * attn.kq_block[0, :d, :d].T).detach().numpy()
        assert np.allclose(gamma, effective_gamma(model), rtol=1e-12, atol=1e-14)
        task = make_task(cfg.task, cfg.seed)
        prompts = task.sample(20000 if run_id.endswith("0.5") else 64, make_generator(1, run_id), dtype=torch.float64)
        h = torch.einsum("bn,bnd->bd", prompts.ys, prompts.xs) / n
        with torch.no_grad():
            predicted = from_model(model).predict(prompts.xs, prompts.ys, prompts.xq)
        expected = torch.einsum("bmd,de,be->bm", prompts.xq, torch.from_numpy(gamma), h)
        assert torch.allclose(predicted, expected, rtol=1e-9, atol=1e-12)
        if row["setting"] == "anisotropic":
            reference = optimum.gamma if row["noise_std"] == 0.5 else lsa_optimum(n, lam).gamma
            distance = np.linalg.norm(gamma - reference) / np.linalg.norm(reference)
            assert row["gamma_distance"] == pytest.approx(distance, rel=1e-9)
        if run_id.endswith("0.5") and row["setting"] in ("anisotropic", "relu"):  # exact loss = the model's loss
            mean, sem = query_loss(from_model(model), prompts)
            assert abs(mean - row["exact_loss_trained"]) < 4 * sem
    claims = pd.read_csv(out / "claims.csv")
    assert len(claims) == 18 and claims["holds"].all()
    for name in ("gamma_heatmaps.png", "losses.png"):
        assert (out / "figures" / name).stat().st_size > 20_000
    report = (out / "report.md").read_text()
    assert "iclab reproduce mahankali --quick" in report and report.count("iclab train ") == 8


def test_newton_quick(tmp_path, capsys):
    """Fu et al.'s setting at the quick size: every depth is probed; the one-layer model is one GD step; the
    two-layer model's second layer matches more Newton iterations than its first and more than 2 GD steps
    (both claim checks say yes, so reproduce exits 0)."""
    out = tmp_path / "newton"
    code = main(["reproduce", "newton", "--quick", "--out", str(out), "--quiet"])
    printed = capsys.readouterr()
    assert code == 0 and "NO " not in printed.out, printed.out
    maps = pd.read_csv(out / "maps.csv")
    assert sorted(set(maps["depth"])) == [1, 2] and len(maps) == 3
    one = maps[maps["depth"] == 1].iloc[0]
    assert one["best"].startswith("gd(k=1,") and one["gd_difference"] < 1e-3 < one["newton_difference"]
    assert (out / "figures" / "newton_map.png").exists() and (out / "probes" / "L2" / "report.md").exists()


def test_newton_gpt2_quick(tmp_path, capsys):
    """Fu et al. on a GPT-2 at the quick size: the fitted read-out of every layer is matched at every prefix by
    SimE; the Newton–Schulz iterations matched grow with the layer, and at the last layer Newton–Schulz beats GD
    (both claim checks say yes, so reproduce exits 0); layers.csv repeats the probe's own candidates."""
    out = tmp_path / "newton_gpt2"
    code = main(["reproduce", "newton_gpt2", "--quick", "--out", str(out), "--quiet"])
    printed = capsys.readouterr()
    assert code == 0 and "NO " not in printed.out, printed.out
    layers = pd.read_csv(out / "layers.csv")
    assert layers["layer"].tolist() == [1, 2, 3, 4]
    newton = layers["newton_k"].to_numpy()
    assert (newton[1:] >= newton[:-1]).all() and newton[-1] > newton[0]
    assert layers["newton_sime"].iloc[-1] > layers["gd_sime"].iloc[-1]
    assert layers["probe_loss"].iloc[-1] < 0.1 * layers["probe_loss"].iloc[0]  # the last layer nearly solves it
    candidates = pd.read_csv(out / "probe" / "candidates.csv").set_index(["layer", "family"])
    for row in layers.itertuples():
        assert row.newton_sime == candidates.loc[(row.layer, "newton"), "sime"]
        assert row.gd_k == candidates.loc[(row.layer, "gd"), "iterations"]
    assert (out / "figures" / "newton_gpt2.png").exists() and "SimE" in (out / "report.md").read_text()


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
    """mahankali's quick plan cut to two runs (ReLU and tanh responses, noise-free): the plumbing tests' recipe."""
    small = replace(mahankali.QUICK, settings=("relu", "tanh"), noise_levels=(0.0,))
    monkeypatch.setitem(mahankali.SIZES, "quick", small)
    return RECIPES["mahankali"]


def test_reproduce_trains_through_a_given_executor(tmp_path, small_mahankali):
    """Every planned run goes through the executor's submit, with plain (picklable) arguments; the analysis
    then loads the run dirs. A second call finds every run finished."""
    recipe = small_mahankali
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


def test_listed_commands_train_the_runs_reproduce_analyses(tmp_path, small_mahankali):
    """Running the listed commands (as a scheduler would) leaves nothing for reproduce to train: it only
    analyses, and no file of a run dir changes."""
    out = tmp_path / "mahankali"
    commands = list_run_commands("mahankali", out, size="quick")
    assert len(commands) == 2
    for command in commands:
        words = shlex.split(command)
        assert words[0] == "iclab" and main(words[1:]) == 0
    trained = {path: path.stat().st_mtime_ns for path in (out / "runs").rglob("*")}
    assert all(reproduce("mahankali", out, size="quick", progress=False)["checks"].values())
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
    sparse = [c.split() for c in commands if "task.name=sparse_linear" in c]  # its own sparsity, depth and steps
    assert len(sparse) == 1 and {"task.sparsity=1", "model.layers=6", "train.steps=24000"} <= set(sparse[0])
    assert not any("task.sparsity" in c or "model.layers" in c for c in commands if "sparse_linear" not in c)
    assert main(["reproduce", "mlp_lsa", "--size", "scaled"]) == 2
    assert "--size must be one of quick, full for mlp_lsa" in capsys.readouterr().err


@pytest.mark.parametrize(("checks", "code"), [({"a": True, "b": True}, 0), ({"a": True, "b": False, "c": False}, 3)])
def test_a_claim_check_that_says_no_exits_3_naming_it(checks, code, tmp_path, capsys, monkeypatch):
    """``reproduce`` can be trusted as a test: exit 0 only when every claim check says yes; otherwise 3 with
    one line on stderr naming the failed claims."""
    from iclab import experiments
    from iclab.experiments import Recipe

    recipe = Recipe("fake", "A. Paper", "a claim", plan=lambda size: [],
                    analyse=lambda out, size, runs, device, progress: {"checks": checks})  # fmt: skip
    monkeypatch.setitem(experiments.RECIPES, "fake", recipe)
    assert main(["reproduce", "fake", "--quick", "--out", str(tmp_path / "fake"), "--quiet"]) == code
    printed = capsys.readouterr()
    assert [line[:3] for line in printed.out.splitlines()[:-1]] == ["yes" if ok else "NO " for ok in checks.values()]
    if code:
        assert printed.err == "iclab: reproduce fake (quick): 2 of 3 claim checks failed: b; c\n"
    else:
        assert printed.err == ""


def test_task_descriptors_quick(tmp_path, capsys):
    """Huang & Ge at the quick size: every claim check says yes (one layer within 3 % of L* with and without μ,
    B within 5 % of B*, with < without, flows within 1e-8 of L*, 2 layers below the one-layer optimum, one-hot
    ids help). Checked independently: the exact loss of each trained one-layer model against its Monte Carlo
    loss, and L* against the loss of the LSA built from B* on the same prompts (each within 4 s.e.)."""
    out = tmp_path / "td"
    assert main(["reproduce", "task_descriptors", "--quick", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "NO " not in printed and printed.count("yes") == 13, printed
    results = pd.read_csv(out / "results.csv").set_index("run_id")
    assert len(results) == 6
    one = results[results["layers"] == 1]
    half_width = (one["loss_high"] - one["loss_low"]) / 2  # ≈ 2 s.e.
    assert ((one["loss"] - one["exact_loss"]).abs() < 2 * half_width).all()
    same = (results["optimum_loss_same_prompts"] - results["optimal_loss_1layer"]).abs()
    assert (same < 2 * (results["loss_high"] - results["loss_low"])).all()
    assert (one["gap_percent"] > -1e-9).all() and (one["gap_percent"] < 3).all()
    deep = results[results["layers"] == 2]
    assert (deep["minus_optimum_high"] < 0).all() and (deep["loss"] < deep["optimal_loss_1layer"]).all()
    flow = pd.read_csv(out / "flow.csv")
    assert len(flow) == 4 and (flow["final_gap"] < 1e-8).all()
    assert flow[np.isinf(flow["n"]) & (flow["given"] == "with")]["optimal_loss"].iloc[0] == 0.0
    claims = pd.read_csv(out / "claims.csv")
    assert list(claims.columns) == ["claim", "paper", "iclab", "tolerance", "holds"] and claims["holds"].all()
    for name in ("loss_vs_n", "flow", "weights", "depth", "onehot"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 20_000
    report = (out / "report.md").read_text()
    assert "| claim | paper | iclab | tolerance | holds |" in report
    assert "iclab reproduce task_descriptors --quick" in report and report.count("iclab train ") == 6
    assert "## Time" in report and "in 6 runs" in report

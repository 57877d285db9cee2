"""The command line: help on every verb, eval's table/JSON/figure, the demo, device checks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import task_config
from iclab.cli import main
from iclab.demo import run_demo
from iclab.learners.specs import LearnerSpecError, parse_learner
from iclab.run_eval import default_step
from iclab.tasks import make_task

SMALL = [
    "task.d=3",
    "task.n=8",
    "train.steps=30",
    "train.batch_size=64",
    "eval.batch_size=100",
    "eval.every=30",
    "train.log_every=10",
]


@pytest.mark.parametrize("verb", [[], ["train"], ["eval"], ["demo"], ["config", "show"], ["reproduce"]])
def test_help_on_every_verb(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: iclab" in capsys.readouterr().out


def test_train_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "--out", str(out), "--quiet"]) == 0
    assert "final_eval_loss" in capsys.readouterr().out
    assert main(["eval", str(out), "--learners", "gd", "ols", "ridge:alpha=0.5", "knn:k=2", "--batch-size", "300"]) == 0
    printed = capsys.readouterr().out
    assert "gd(steps=1, lr=0.6667)" in printed and "ridge(alpha=0.5)" in printed  # lr* = 8/(8+3+1)
    assert (out / "figures" / "error_curve.png").stat().st_size > 1000
    assert main(["eval", str(out), "--json", "--batch-size", "300"]) == 0
    curves = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in curves][1:] == ["gd(steps=1, lr=0.6667)", "least_squares", "averaging", "zero"]
    assert all(len(c["mse"]) == 8 for c in curves)
    zero = curves[-1]["mse"]
    assert all(abs(v - 3.0) < 5 * s for v, s in zip(zero, curves[-1]["sem"], strict=True))  # E y² = d


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["eval", "{run}", "--learners", "gd:steps=2"], "give lr"),
        (["eval", "{run}", "--learners", "gd:lr=x"], "lr must be a number"),
        (["eval", "{run}", "--learners", "knn:alpha=1"], "knn takes k"),
        (["eval", "{run}", "--batch-size", "1"], "--batch-size"),
        (["train", "--out", "{run}", "--device", "tpu"], "--device"),
    ],
)
def test_cli_usage_errors_exit_2(argv, fragment, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main([a.replace("{run}", str(run)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1


def test_learner_specs_use_task_defaults():
    task = make_task(task_config("noisy", "task.d=4", "task.n=10"), seed=0)
    assert parse_learner("gd", task, default_step(task)).lr == pytest.approx(10 / (10 + 4 + 1 + 0.25))
    with pytest.raises(LearnerSpecError, match="give lr"):
        parse_learner("gd", task)  # the theory's default step is the caller's to give
    assert parse_learner("ridge", task).alpha == pytest.approx(0.25)
    with pytest.raises(LearnerSpecError, match="unknown learner"):
        parse_learner("newtonian", task)
    assert parse_learner("newton:steps=4", task).steps == 4


def test_demo_quick(tmp_path, capsys):
    losses = run_demo(tmp_path / "demo", steps=300, progress=False)
    printed = capsys.readouterr().out
    assert "one GD step" in printed and "least squares" in printed and "error_curve.png" in printed
    lsa, gd, ols = losses.values()
    assert ols < 1e-6 < gd <= lsa < 2 * gd  # 300 steps: near, not yet at, the optimal GD step


def test_kernel_learner_specs():
    gp = make_task(task_config("gp_exp_noisy"), seed=0)
    fgd = parse_learner("fgd:steps=3:lr=0.5", gp)
    assert (fgd.kernel.name, fgd.kernel.scale, fgd.steps, fgd.lr) == ("exp", 2.0, 3, 0.5)
    assert parse_learner("kernel_ridge:kernel=relu", gp).kernel.scale == 1.0
    assert parse_learner("gp_posterior", gp).noise_std == pytest.approx(0.1)
    linear = make_task(task_config("isotropic"), seed=0)
    with pytest.raises(LearnerSpecError, match="gp_posterior needs a task with a kernel"):
        parse_learner("gp_posterior", linear)
    with pytest.raises(LearnerSpecError, match="pgd preconditions"):
        parse_learner("pgd", gp)
    with pytest.raises(LearnerSpecError, match="kernel must be one of"):
        parse_learner("fgd:kernel=poly", gp)


def test_verb_help_lists_the_registries(capsys):
    from iclab.config import key_rows
    from iclab.experiments.recipe import BUILTIN
    from iclab.learners.specs import SPEC_NAMES

    for verb, names in (("eval", SPEC_NAMES), ("reproduce", BUILTIN), ("train", [row.key for row in key_rows()])):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        shown = capsys.readouterr().out
        assert all(name in shown for name in names), verb


def test_top_level_help_imports_no_torch():
    code = "import sys, iclab.cli; iclab.cli.build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


# --------------------------------------------------------------------------- issue 15 item 8: the verbs' edges


def test_version_prints_the_installed_version_without_torch():
    """``iclab --version`` prints the distribution's version and imports no torch."""
    from importlib.metadata import version

    code = (
        "import sys, iclab.cli\n"
        "try:\n    iclab.cli.main(['--version'])\nexcept SystemExit as e:\n    print('exit', e.code)\n"
        "print('torch' in sys.modules)"
    )
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split("\n")
    assert printed[:3] == [f"iclab {version('iclab')}", "exit 0", "False"]


def test_reproduce_list_prints_each_recipe_and_its_recorded_counts(capsys):
    from iclab.experiments import all_recipes
    from iclab.experiments.records import recorded_counts

    assert main(["reproduce", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    recipes = all_recipes()
    assert len(lines) == 2 * len(recipes)
    for (line, counts), recipe in zip(zip(lines[::2], lines[1::2], strict=True), recipes, strict=True):
        assert line.split()[0] == recipe.name and line.endswith(f"{recipe.paper} — {recipe.claim}")
        assert counts.strip() == recorded_counts(recipe.name)
    assert main(["reproduce"]) == 2
    assert "or --list" in capsys.readouterr().err


class Stop(Exception):
    pass


class StopAt:
    """A training callback that stops the run (like a kill) after ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, run) -> None:
        if run.state.step == self.step:
            raise Stop


@pytest.mark.parametrize("verb", ["eval", "probe"])
def test_eval_and_probe_of_an_unfinished_run_say_so_and_how_to_finish_it(verb, tmp_path, capsys):
    """A run stopped at step 25 of 30 (checkpoint at 20): eval/probe exit 2 in one line with the step and the
    command that finishes it; that command finishes it, and then they work."""
    import shlex

    from iclab.config import parse_config
    from iclab.train import default_callbacks, train

    out = tmp_path / "run"
    cfg = parse_config({}, [*SMALL, "train.checkpoint_every=10"])
    with pytest.raises(Stop):
        train(cfg, out, progress=False, callbacks=[*default_callbacks(), StopAt(25)])
    extra = ["--prompts", "20", "--queries", "1", "--max-iterations", "2", "--sweeps", "1", "--quiet"]
    argv = [verb, str(out), *(["--batch-size", "100"] if verb == "eval" else extra)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1
    assert f"{out} is not finished (step 20 of 30 saved)" in err
    command = err.split("`")[1]
    assert main([*shlex.split(command)[1:], "--quiet"]) == 0  # the command it names finishes the run
    capsys.readouterr()
    assert main(argv) == 0


def test_eval_of_a_diverged_run_says_it_diverged(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SMALL, "train.diverge_loss=1e-9", "--out", str(out), "--quiet"]) == 1
    capsys.readouterr()
    assert main(["eval", str(out)]) == 2
    err = capsys.readouterr().err
    assert "did not finish: it diverged at step 1" in err and "--force" in err


def test_eval_of_several_runs_draws_one_figure_with_a_curve_per_run(tmp_path, capsys, monkeypatch):
    """Two runs that differ in train.lr: each gets its own eval.json and error_curve.png as alone; the combined
    figure has one solid curve per run labelled by its name and the key that differs, and (same task and seed:
    the same prompts) the reference learners once."""
    import matplotlib.pyplot as plt

    from iclab.plots import figure_caption

    runs = [tmp_path / "fast", tmp_path / "slow"]
    for run, lr in zip(runs, ("0.02", "0.005"), strict=True):
        assert main(["train", *SMALL, f"train.lr={lr}", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    before = set(plt.get_fignums())
    monkeypatch.setattr(plt, "close", lambda *args: None)
    assert main(["eval", *map(str, runs), "--batch-size", "300", "--learners", "least_squares"]) == 0
    printed = capsys.readouterr().out
    figure = tmp_path / "compare-fast-slow.png"
    assert f"combined figure: {figure}" in printed and figure.stat().st_size > 10_000
    assert all((run / "eval.json").is_file() and (run / "figures" / "error_curve.png").is_file() for run in runs)
    combined = [plt.figure(n) for n in plt.get_fignums() if n not in before][-1]
    labels = combined.axes[0].get_legend_handles_labels()[1]
    assert labels[:2] == ["fast (lr=0.02)", "slow (lr=0.005)"] and labels[2].startswith("least_squares")
    assert len(combined.axes[0].get_lines()) == 3
    assert figure_caption(combined).startswith(f"{runs[0]}, {runs[1]}: task.name=linear task.d=3")
    single = json.loads((runs[0] / "eval.json").read_text())["curves"]
    assert [c["name"] for c in single] == ["model (lsa, 1 layer)", "least_squares"]
    opened = [n for n in plt.get_fignums() if n not in before]
    monkeypatch.undo()
    for n in opened:
        plt.close(n)
    assert main(["eval", *map(str, runs), "--json", "--batch-size", "300", "--figure", str(tmp_path / "c.png")]) == 0
    curves = json.loads(capsys.readouterr().out)
    assert list(curves) == [str(run) for run in runs] and len(curves[str(runs[0])]) == 5
    assert (tmp_path / "c.png").is_file()


def test_eval_of_runs_on_different_prompts_leaves_the_references_out(tmp_path, capsys, monkeypatch):
    """Runs with different seeds are evaluated on different prompts: the combined figure shows only their models
    and its caption says why."""
    import matplotlib.pyplot as plt

    from iclab.plots import figure_caption

    runs = [tmp_path / "a" / "run", tmp_path / "b" / "run"]
    for run, seed in zip(runs, ("0", "1"), strict=True):
        assert main(["train", *SMALL, f"seed={seed}", "--out", str(run), "--quiet"]) == 0
    before = set(plt.get_fignums())
    monkeypatch.setattr(plt, "close", lambda *args: None)
    assert main(["eval", *map(str, runs), "--batch-size", "200"]) == 0
    assert f"combined figure: {tmp_path / 'compare-run-run.png'}" in capsys.readouterr().out
    (combined,) = [plt.figure(n) for n in plt.get_fignums() if n not in before and plt.figure(n).texts][-1:]
    labels = combined.axes[0].get_legend_handles_labels()[1]
    assert labels == [f"{runs[0]} (seed=0)", f"{runs[1]} (seed=1)"]  # same names: the paths tell them apart
    assert figure_caption(combined).endswith("reference learners left out: the runs' prompts differ")
    opened = [n for n in plt.get_fignums() if n not in before]
    monkeypatch.undo()
    for n in opened:
        plt.close(n)

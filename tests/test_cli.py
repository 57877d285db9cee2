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
    from iclab.experiments import RECIPES
    from iclab.learners.specs import SPEC_NAMES

    for verb, names in (("eval", SPEC_NAMES), ("reproduce", RECIPES), ("train", [row.key for row in key_rows()])):
        with pytest.raises(SystemExit):
            main([verb, "--help"])
        shown = capsys.readouterr().out
        assert all(name in shown for name in names), verb


def test_top_level_help_imports_no_torch():
    code = "import sys, iclab.cli; iclab.cli.build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"

"""Batched ensembles (train.ensemble): every member equals the same config trained alone (weights, metrics.csv,
summary) to 1e-5, with clipping, a cosine schedule and a learning rate per member; a diverging member stops
alone; an interrupted ensemble resumes, its members at different steps; bad values are one-line errors."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch

from iclab.check import verify_run_dir
from iclab.cli import main
from iclab.config import ConfigError, parse_config
from iclab.ensemble import member_configs, member_dirs, train_ensemble
from iclab.errors import UserError
from iclab.rundir import read_summary, read_weights
from iclab.sweep import SweepSpec, config_id, plan_sweep
from iclab.train import Checkpoints, MetricsRows, TrainingDiverged, TrainingInterrupted, train

SMALL = ["task.d=3", "task.n=8", "train.steps=30", "train.batch_size=16", "train.log_every=5", "eval.every=10",
         "eval.batch_size=64", "train.checkpoint_every=10", "train.grad_clip=0.5", "train.lr_schedule=cosine",
         "train.warmup_steps=3"]  # fmt: skip
LRS = ["train.ensemble=3", "train.ensemble_lrs=0.01,0.03,0.003"]


def small(*changes: str) -> list[str]:
    """SMALL with ``changes`` (key=value) replacing or adding keys."""
    keys = {item.split("=")[0] for item in changes}
    return [*(item for item in SMALL if item.split("=")[0] not in keys), *changes]


QUIET = {"progress": False, "log": lambda _: None}


def alone(cfg, root: Path) -> list[Path]:
    """Each member of ``cfg`` trained alone into root/alone-<i>."""
    outs = []
    for index, member in enumerate(member_configs(cfg)):
        outs.append(root / f"alone-{index}")
        try:
            train(member, outs[-1], **QUIET)
        except TrainingDiverged:
            pass
    return outs


def assert_same_run(batched: Path, solo: Path, tol: float = 1e-5) -> None:
    """Weights, metrics.csv and the summary's losses of two run dirs agree to ``tol``."""
    ours, _ = read_weights(batched)
    theirs, _ = read_weights(solo)
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=tol, atol=tol)
    a, b = pd.read_csv(batched / "metrics.csv"), pd.read_csv(solo / "metrics.csv")
    assert list(a["step"]) == list(b["step"])
    pd.testing.assert_frame_equal(a, b, rtol=tol, atol=tol)
    x, y = read_summary(batched), read_summary(solo)
    assert x["status"] == y["status"] and x["steps"] == y["steps"]
    if x["status"] == "finished":
        assert x["final_eval_loss"] == pytest.approx(y["final_eval_loss"], rel=tol, abs=tol)
    assert x["config"] == y["config"]


class SignalAt:
    """A callback that sends this process SIGINT once a run reaches ``step`` (what Ctrl-C does)."""

    def __init__(self, step: int) -> None:
        self.step, self.sent = step, False

    def on_step(self, run) -> None:
        if run.state.step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)


def test_member_configs_are_the_runs_alone():
    cfg = parse_config({}, [*SMALL, "seed=4", *LRS])
    members = member_configs(cfg)
    assert [m.seed for m in members] == [4, 5, 6]
    assert [m.train.lr for m in members] == [0.01, 0.03, 0.003]
    assert all(m.train.ensemble == 1 and m.train.ensemble_lrs is None for m in members)
    assert members[1] == parse_config({}, [*SMALL, "seed=5", "train.lr=0.03"])
    solo = parse_config({}, SMALL)
    assert member_configs(solo) == [solo]
    same_lr = member_configs(parse_config({}, [*SMALL, "train.ensemble=2", "train.lr=0.02"]))
    assert [(m.seed, m.train.lr) for m in same_lr] == [(0, 0.02), (1, 0.02)]
    assert member_dirs("out", 2) == [Path("out/member-0"), Path("out/member-1")]


def test_members_equal_their_runs_alone(tmp_path):
    """The acceptance: each member of a batched ensemble (clipping, warm-up + cosine, its own learning rate)
    equals its config trained alone to 1e-5: weights, every metrics row, the final evaluation."""
    cfg = parse_config({}, [*SMALL, *LRS])
    summaries = train_ensemble(cfg, tmp_path / "ens", **QUIET)
    assert [s["status"] for s in summaries] == ["finished"] * 3
    solos = alone(cfg, tmp_path)
    for index, solo in enumerate(solos):
        member = tmp_path / "ens" / f"member-{index}"
        assert_same_run(member, solo)
        assert all(ok for _, ok, _ in verify_run_dir(member))
    losses = [read_summary(solo)["final_eval_loss"] for solo in solos]
    assert len(set(losses)) == 3  # the members differ: their seeds and learning rates are their own
    said = []
    again = train_ensemble(cfg, tmp_path / "ens", progress=False, log=said.append)
    assert again == summaries and len(said) == 3 and all(line.startswith("already done") for line in said)


def test_a_diverging_member_stops_alone(tmp_path):
    """Member 1's learning rate makes it diverge: it stops with the summary and the message it has alone, the
    others finish equal to their runs alone; a rerun reports it and trains nothing."""
    cfg = parse_config({}, small("train.grad_clip=none", "train.diverge_loss=50", "train.ensemble=3",
                                 "train.ensemble_lrs=0.01,30,0.003"))  # fmt: skip
    said: list[str] = []
    summaries = train_ensemble(cfg, tmp_path / "ens", progress=False, log=said.append)
    assert [s["status"] for s in summaries] == ["finished", "diverged", "finished"]
    with pytest.raises(TrainingDiverged, match="training diverged at step") as alone_error:
        train(member_configs(cfg)[1], tmp_path / "alone-1", **QUIET)
    assert summaries[1]["message"] == read_summary(tmp_path / "alone-1")["message"]
    assert any(str(alone_error.value).split(" in ")[0] in line for line in said)  # the same step, loss and advice
    for index in (0, 2):
        train(member_configs(cfg)[index], tmp_path / f"alone-{index}", **QUIET)
        assert_same_run(tmp_path / "ens" / f"member-{index}", tmp_path / f"alone-{index}")
    diverged, solo = read_summary(tmp_path / "ens" / "member-1"), read_summary(tmp_path / "alone-1")
    assert {**diverged, "wall_seconds": 0} == {**solo, "wall_seconds": 0}
    said.clear()
    assert [s["status"] for s in train_ensemble(cfg, tmp_path / "ens", progress=False, log=said.append)] == [
        "finished", "diverged", "finished"
    ]  # fmt: skip
    assert sorted(line.split(":")[0] for line in said) == ["already diverged", "already done", "already done"]


def test_interrupted_ensemble_resumes_from_members_at_different_steps(tmp_path):
    """Member 1 was trained alone to step 4 (then Ctrl-C); the ensemble catches it up, is interrupted at step
    12 (every member checkpointed), and resumes: each member equals its run alone, uninterrupted."""
    cfg = parse_config({}, [*SMALL, *LRS])
    outs = member_dirs(tmp_path / "ens", 3)
    with pytest.raises(TrainingInterrupted):
        train(member_configs(cfg)[1], outs[1], callbacks=[SignalAt(4), MetricsRows(), Checkpoints()], **QUIET)
    assert read_weights(outs[1])[1] == 4
    with pytest.raises(TrainingInterrupted, match="stopped at step 12"):
        train_ensemble(cfg, tmp_path / "ens", callbacks=[MetricsRows(), Checkpoints(), SignalAt(12)], **QUIET)
    for out in outs:
        assert read_weights(out)[1] == 12  # every member checkpointed where it stopped
        assert all(ok for _, ok, _ in verify_run_dir(out))
    said: list[str] = []
    train_ensemble(cfg, tmp_path / "ens", progress=False, log=said.append)
    assert sum(line.startswith("resuming") for line in said) == 3
    for out, solo in zip(outs, alone(cfg, tmp_path), strict=True):
        assert_same_run(out, solo)


def test_cli_trains_members_into_dir(tmp_path, capsys):
    out = tmp_path / "ens"
    args = ["train", *small("train.steps=6"), "train.ensemble=2", "--out", str(out), "--quiet"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == [str(out / "member-0"), str(out / "member-1")]
    assert all("final_eval_loss" in line and "after 6 steps" in line for line in lines)
    assert main(["check", str(out / "member-1")]) == 0
    assert main(["train", *small("train.steps=6"), "train.ensemble=2", "--out", str(out), "--quiet", "--force"]) == 0
    capsys.readouterr()
    assert main(["train", *small("train.steps=7"), "--out", str(out / "member-0"), "--quiet"]) == 2
    assert "(keys: train.steps)" in capsys.readouterr().err  # member-0 is seed 0's run alone, but for its steps


def test_cli_ensemble_with_a_diverging_member_exits_1(tmp_path, capsys):
    args = ["train", *small("train.grad_clip=none", "train.diverge_loss=50", "train.ensemble=2",
                            "train.ensemble_lrs=0.01,30"), "--out", str(tmp_path / "ens"), "--quiet"]  # fmt: skip
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "member-0: final_eval_loss" in captured.out
    assert "member-1: diverged at step" in captured.err


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.ensemble=0"], "train.ensemble must be >= 1, got 0"),
        (["train.ensemble=2000"], "train.ensemble must be <= 1024, got 2000"),
        (["train.ensemble=two"], "train.ensemble must be an integer"),
        (["train.ensemble=3", "train.ensemble_lrs=0.1,0.2"], "train.ensemble_lrs must have train.ensemble=3 entries"),
        (["train.ensemble=2", "train.ensemble_lrs=0.1,-1"], "train.ensemble_lrs must be > 0"),
        (["train.ensemble_lrs=0.1"], "train.ensemble_lrs needs train.ensemble >= 2"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path, capsys, overrides, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({}, overrides)
    assert main(["train", *SMALL, *overrides, "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_train_refuses_an_ensemble_and_an_ensemble_refuses_a_run_dir(tmp_path):
    cfg = parse_config({}, [*SMALL, "train.ensemble=2"])
    with pytest.raises(UserError, match="train.ensemble=2 trains several run dirs"):
        train(cfg, tmp_path / "one", **QUIET)
    train(parse_config({}, small("train.steps=4")), tmp_path / "one", **QUIET)
    with pytest.raises(UserError, match="holds a single run"):
        train_ensemble(cfg, tmp_path / "one", **QUIET)


def test_a_family_vmap_cannot_run_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    """A model whose forward reads a tensor's value in Python (``float(…)``) cannot be vmapped: refused in one
    line naming train.ensemble, exit 2, no run dir."""
    import iclab.ensemble
    from iclab.models import build_model

    def unbatchable(cfg, task, generator):
        model = build_model(cfg, task, generator)
        predict = model.predict

        def python_branch(xs, ys, xq, descriptor=None):
            out = predict(xs, ys, xq, descriptor)
            return out * 2 if float(out.detach().sum()) > 1e9 else out

        model.predict = python_branch
        return model

    monkeypatch.setattr(iclab.ensemble, "build_model", unbatchable)
    assert main(["train", *SMALL, "train.ensemble=2", "--out", str(tmp_path / "ens"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.ensemble=2: model.name=lsa cannot be trained as a batched ensemble" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "ens" / "member-0" / "config.yaml").exists()


def test_sweep_expands_an_ensemble_into_its_members(tmp_path, capsys):
    """In a sweep, train.ensemble=E is E runs, each the member's config (its own run id); trained, each equals
    the member of the batched ensemble."""
    spec = SweepSpec((*small("train.steps=6"), "train.ensemble=2", "train.ensemble_lrs=0.01,0.02"), {"task.n": ["8"]})
    runs = plan_sweep(spec)
    cfg = parse_config({}, [*small("train.steps=6"), "train.ensemble=2", "train.ensemble_lrs=0.01,0.02"])
    assert [run.config for run in runs] == member_configs(cfg)
    assert [run.run_id for run in runs] == [config_id(member) for member in member_configs(cfg)]
    args = ["sweep", *spec.base, "--out", str(tmp_path / "sweep"), "--workers", "1", "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    table = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert list(table["run_id"]) == [run.run_id for run in runs]
    train_ensemble(cfg, tmp_path / "ens", **QUIET)
    for index, run in enumerate(runs):
        assert_same_run(tmp_path / "ens" / f"member-{index}", tmp_path / "sweep" / run.run_id)


def test_a_parameter_the_objective_does_not_reach_is_left_alone_as_alone(tmp_path, monkeypatch):
    """A parameter without a gradient alone (here an extra one the forward pass never reads) gets none in the
    ensemble either: AdamW (with weight decay) leaves it as it leaves it alone."""
    import iclab.ensemble
    import iclab.train
    from iclab.models import build_model

    def with_unused(cfg, task, generator):
        model = build_model(cfg, task, generator)
        model.register_parameter("unused", torch.nn.Parameter(torch.ones(3)))
        return model

    monkeypatch.setattr(iclab.ensemble, "build_model", with_unused)
    monkeypatch.setattr(iclab.train, "build_model", with_unused)
    cfg = parse_config({}, small("train.steps=6", "train.weight_decay=0.1", "train.ensemble=2"))
    train_ensemble(cfg, tmp_path / "ens", **QUIET)
    for index, solo in enumerate(alone(cfg, tmp_path)):
        assert_same_run(tmp_path / "ens" / f"member-{index}", solo)
        assert torch.equal(read_weights(solo)[0]["unused"], torch.ones(3))

"""Experiment tracking (train.loggers): TensorBoard's event file holds exactly metrics.csv's values, once per
step across a resume; W&B writes an offline run in the run dir; a missing package is a one-line error naming
the extra, before anything is written; `iclab check` names the loggers' folders and passes."""

from __future__ import annotations

import sys

import pandas as pd
import pytest

from iclab.check import verify_run_dir
from iclab.cli import main
from iclab.config import parse_config
from iclab.ensemble import train_ensemble
from iclab.train import Checkpoints, MetricsRows, train

SMALL = ["task.d=3", "task.n=8", "train.steps=30", "train.batch_size=16", "train.log_every=5", "eval.every=10",
         "eval.batch_size=64", "train.checkpoint_every=10"]  # fmt: skip
QUIET = {"progress": False, "log": lambda _: None}
TAGS = {"train/loss": "train_loss", "eval/loss": "eval_loss", "train/lr": "lr"}


def events(run_dir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), …]} of the run dir's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / "tensorboard"))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def assert_events_match_metrics(run_dir) -> None:
    logged = events(run_dir)
    table = pd.read_csv(run_dir / "metrics.csv")
    assert set(logged) == set(TAGS)
    for tag, column in TAGS.items():
        rows = table.dropna(subset=[column])
        assert [step for step, _ in logged[tag]] == list(rows["step"])  # every row, each step once
        assert [value for _, value in logged[tag]] == pytest.approx(list(rows[column]), rel=1e-6)  # float32 events


class CrashAt:
    """A callback that raises at ``step``: the run ends there with its last checkpoint behind it."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, run) -> None:
        if run.state.step == self.step:
            raise RuntimeError("crash")


def test_tensorboard_logs_every_metrics_row(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    train(parse_config({}, [*SMALL, "train.loggers=tensorboard"]), out, **QUIET)
    assert_events_match_metrics(out)
    report = verify_run_dir(out)
    assert all(ok for _, ok, _ in report)
    assert any(name == "tensorboard" and "train.loggers" in detail for name, _, detail in report)


def test_tensorboard_after_a_resume_shows_each_step_once(tmp_path):
    """A crash at step 17 after the row of step 15 was logged, the checkpoint at step 10: the resumed run logs
    15 again, and the events hide the first one (purge_step), so each step shows once."""
    pytest.importorskip("tensorboard")
    from iclab.tracking import TensorBoardLogger

    cfg = parse_config({}, [*SMALL, "train.loggers=tensorboard"])
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="crash"):
        train(cfg, out, callbacks=[MetricsRows(), Checkpoints(), TensorBoardLogger(), CrashAt(17)], **QUIET)
    assert [step for step, _ in events(out)["train/loss"]] == [5, 10, 15]
    said: list[str] = []
    train(cfg, out, progress=False, log=said.append)
    assert said == [f"resuming {out} from step 10"]
    assert_events_match_metrics(out)


def test_every_ensemble_member_logs_its_own_run(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = parse_config({}, [*SMALL, "train.ensemble=2", "train.loggers=tensorboard"])
    train_ensemble(cfg, tmp_path / "ens", **QUIET)
    for index in range(2):
        assert_events_match_metrics(tmp_path / "ens" / f"member-{index}")


def test_wandb_writes_an_offline_run_in_the_run_dir(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    out = tmp_path / "run"
    train(parse_config({}, [*SMALL, "train.loggers=wandb"]), out, **QUIET)
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb"))  # the run's records, for `wandb sync`
    assert all(ok for _, ok, _ in verify_run_dir(out))


@pytest.mark.parametrize("logger", ["tensorboard", "wandb"])
def test_a_missing_package_names_its_extra(tmp_path, monkeypatch, capsys, logger):
    monkeypatch.setitem(sys.modules, logger, None)  # `import logger` now raises ImportError
    for extra in ([], ["train.ensemble=2"]):
        out = tmp_path / f"run{len(extra)}"
        assert main(["train", *SMALL, f"train.loggers={logger}", *extra, "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"iclab: error: train.loggers={logger} needs the {logger} package: pip install 'iclab[{logger}]'"
        assert not out.exists()


def test_loggers_key_values():
    assert parse_config({}, ["train.loggers=wandb,tensorboard"]).train.loggers == ("wandb", "tensorboard")
    assert parse_config({}, ["train.loggers=none"]).train.loggers == ()
    with pytest.raises(ValueError, match="train.loggers must be a comma-separated list of tensorboard, wandb"):
        parse_config({}, ["train.loggers=mlflow"])

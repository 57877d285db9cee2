"""Nothing is lost: kills and Ctrl-C resume exactly, damaged files are named, leftovers are cleaned."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from iclab import rundir
from iclab.cli import main
from iclab.config import parse_config
from iclab.rundir import CHECKPOINT_MAGIC, RunDirError, load_checkpoint
from iclab.runs import load_model
from iclab.train import default_callbacks, train

# Long enough (a few seconds) to be killed mid-run; checkpoints every 100 steps.
LONG = [
    "task.d=3", "task.n=8", "train.steps=3000", "train.batch_size=32", "train.checkpoint_every=100",
    "train.log_every=10", "eval.every=250", "eval.batch_size=100",
]  # fmt: skip
SHORT = ["task.d=3", "task.n=8", "train.steps=40", "train.batch_size=32", "train.checkpoint_every=10",
         "train.log_every=10", "eval.batch_size=100"]  # fmt: skip


def start(out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "iclab.cli", "train", *LONG, "--out", str(out), "--quiet"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, f"{path} did not appear"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> bytes:
    out = tmp_path_factory.mktemp("whole") / "run"
    train(parse_config({}, LONG), out, progress=False)
    return (out / "metrics.csv").read_bytes()


def test_sigkill_at_random_moments_then_resume_is_byte_identical(tmp_path, uninterrupted):
    out = tmp_path / "run"
    rng = random.Random(0)
    for _ in range(2):
        process = start(out)
        wait_for(out / "checkpoint.pt", process)
        time.sleep(rng.uniform(0.0, 1.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL
    process = start(out)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert (out / "metrics.csv").read_bytes() == uninterrupted
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert main(["check", str(out)]) == 0


def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path, uninterrupted):
    out = tmp_path / "run"
    process = start(out)
    wait_for(out / "checkpoint.pt", process)
    time.sleep(0.3)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "SIGINT" in err and "resume" in err and "Traceback" not in err
    stopped_at = json.loads((out / "model.json").read_text())["step"]
    assert 0 < stopped_at < 3000
    assert not (out / "summary.json").exists()
    process = start(out)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert (out / "metrics.csv").read_bytes() == uninterrupted


class Killed(BaseException):
    """What a SIGKILL looks like to the code it stops: nothing after it runs, no handler catches it."""


class KillAt:
    """A callback that kills the run after ``step`` (its checkpoint, if any, written)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, run) -> None:
        if run.state.step == self.step:
            raise Killed


# 4 steps, checkpoints at 2 and 4: every file is written twice by the last step's commits.
TINY = ["task.d=2", "task.n=4", "train.steps=4", "train.batch_size=8", "train.checkpoint_every=2",
        "train.log_every=1", "eval.batch_size=20", "eval.every=2"]  # fmt: skip


def interrupted_run(tmp_path: Path, overrides: list[str] = SHORT, kill_at: int = 25) -> Path:
    """A run killed after a checkpoint (SHORT at step 25: its checkpoint is at step 20)."""
    out = tmp_path / "run"
    with pytest.raises(Killed):
        train(parse_config({}, overrides), out, progress=False, callbacks=[*default_callbacks(), KillAt(kill_at)])
    return out


def replacing(monkeypatch, kill_before: int | None = None) -> list[str]:
    """Record the file names ``atomic_write_bytes`` replaces (returned list), and with ``kill_before`` stop like a
    SIGKILL just before that replacement (counted from 0)."""
    written: list[str] = []
    real = rundir.atomic_write_bytes

    def write(path: Path, data: bytes) -> None:
        if len(written) == kill_before:
            raise Killed
        real(path, data)
        written.append(Path(path).name)

    monkeypatch.setattr(rundir, "atomic_write_bytes", write)
    return written


def test_a_kill_between_any_two_file_replacements_of_the_last_step_is_completed(tmp_path, monkeypatch, capsys):
    """The last training step commits checkpoint, model, sidecar and metrics, then loss figure and summary,
    each commit between two writes of manifest.json. Killed before each of those replacements, the run is not
    "finished" (check names what a commit left behind), and the rerun ends with every file at the final step:
    byte-identical metrics and final loss, check passing."""
    cfg = parse_config({}, TINY)
    written = replacing(monkeypatch)
    whole = train(cfg, tmp_path / "whole", progress=False)
    metrics = (tmp_path / "whole" / "metrics.csv").read_bytes()
    last_step = [i for i, name in enumerate(written) if name == "manifest.json"][-4]
    assert written[last_step:] == [
        *["manifest.json", "checkpoint.pt", "model.safetensors", "model.json", "metrics.csv", "manifest.json"],
        *["manifest.json", "loss.png", "summary.json", "manifest.json"],
    ]
    for kill_before in range(last_step, len(written)):
        out = tmp_path / f"killed-{kill_before}"
        replacing(monkeypatch, kill_before)
        with pytest.raises(Killed):
            train(cfg, out, progress=False)
        monkeypatch.undo()
        between_commits = written[kill_before] == "manifest.json"  # then every file agrees: only unfinished
        assert main(["check", str(out)]) == (0 if between_commits else 1), kill_before
        summary = train(cfg, out, progress=False, log=lambda _: None)
        assert summary["final_eval_loss"] == whole["final_eval_loss"], kill_before
        assert (out / "metrics.csv").read_bytes() == metrics, kill_before
        assert json.loads((out / "model.json").read_text())["step"] == 4
        assert load_model(out)[2] == 4
        capsys.readouterr()
        assert main(["check", str(out)]) == 0, (kill_before, capsys.readouterr().out)


DAMAGE = {
    "truncated": lambda data: data[: len(data) // 2],
    "bit-flipped": lambda data: data[: len(data) // 2] + bytes([data[len(data) // 2] ^ 1]) + data[len(data) // 2 + 1 :],
    "emptied": lambda data: b"",
    "deleted": None,
}
RUN_FILES = ["config.yaml", "metrics.csv", "checkpoint.pt", "model.safetensors", "model.json", "manifest.json"]
FINISHED_FILES = [*RUN_FILES, "summary.json", "figures/loss.png"]
ANALYSIS_FILES = ["eval.json", "figures/error_curve.png", "probe/layers.csv", "probe/figures/iterations.png"]


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, Path]:
    """A finished and an interrupted (killed after its checkpoint at step 2) TINY run."""
    finished = tmp_path_factory.mktemp("finished") / "run"
    train(parse_config({}, TINY), finished, progress=False)
    evaluated = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(finished, evaluated)
    assert main(["eval", str(evaluated), "--batch-size", "200", "--learners", "zero"]) == 0
    assert main(["probe", str(evaluated), "--prompts", "20", "--max-iterations", "2", "--quiet"]) == 0
    interrupted = interrupted_run(tmp_path_factory.mktemp("interrupted"), TINY, 3)
    return {"finished": finished, "interrupted": interrupted, "evaluated": evaluated}


@pytest.mark.parametrize(
    ("kind", "name"),
    [("finished", name) for name in FINISHED_FILES]
    + [("interrupted", name) for name in RUN_FILES]
    + [("evaluated", name) for name in ANALYSIS_FILES],
)
def test_every_damage_is_named_by_check_and_refused_by_train(tmp_path, capsys, templates, kind, name):
    """Each file of a finished or an interrupted run, and what eval and probe added to a finished one,
    truncated, bit-flipped, emptied or deleted: train exits 2 with one line naming the file (never "already
    done", never a traceback) and check reports it BAD."""
    for how, damage in DAMAGE.items():
        out = tmp_path / how
        shutil.copytree(templates[kind], out)
        path = out / name
        if damage is None:
            path.unlink()
        else:
            path.write_bytes(damage(path.read_bytes()))
        capsys.readouterr()
        assert main(["train", *TINY, "--out", str(out), "--quiet"]) == 2, how
        captured = capsys.readouterr()
        assert name.rpartition("/")[2] in captured.err and captured.err.count("\n") == 1, (how, captured.err)
        assert "already done" not in captured.out and "Traceback" not in captured.err
        assert main(["check", str(out)]) == 1, how
        assert f"BAD {name}" in capsys.readouterr().out, how


def forge(out: Path, name: str, data: bytes) -> None:
    """Replace ``name`` with ``data`` the way iclab writes files (manifest.json updated): a crafted run dir."""
    rundir.RunFiles(out, rundir.read_manifest(out).files).commit({name: data})


def test_a_checkpoint_of_the_wrong_structure_is_named(tmp_path, capsys):
    """A checkpoint whose checksums are valid but whose contents are not a training checkpoint (or not one of
    this model): one line saying what is wrong (train exit 2, check BAD), no KeyError traceback."""
    out = interrupted_run(tmp_path, TINY, 3)
    payload = load_checkpoint(out / "checkpoint.pt")
    forge(out, "checkpoint.pt", rundir.checkpoint_bytes({"hello": 1}))
    assert main(["train", *TINY, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt is not a training checkpoint of this run (no 'step'" in err and err.count("\n") == 1
    assert main(["check", str(out)]) == 1 and "BAD checkpoint.pt" in capsys.readouterr().out
    payload["model"] = {name: torch.zeros(1) for name in payload["model"]}
    forge(out, "checkpoint.pt", rundir.checkpoint_bytes(payload))
    assert main(["train", *TINY, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pt does not fit the model and optimizer of config.yaml" in err and err.count("\n") == 1


def test_config_mismatch_names_the_keys_and_force_starts_over(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SHORT, "--out", str(out), "--quiet"]) == 0
    assert main(["train", *SHORT, "model.layers=2", "train.lr=0.001", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "model.layers" in err and "train.lr" in err and "--force" in err
    assert main(["train", *SHORT, "model.layers=2", "--out", str(out), "--quiet", "--force"]) == 0
    assert "layers: 2" in (out / "config.yaml").read_text()


def test_non_run_folders_are_left_alone(tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    assert main(["train", *SHORT, "--out", str(folder), "--quiet"]) == 2
    assert main(["train", *SHORT, "--out", str(folder), "--quiet", "--force"]) == 2
    assert (folder / "notes.txt").read_text() == "keep me"
    assert "not an iclab run dir" in capsys.readouterr().err


def test_a_diverged_run_is_not_resumed(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SHORT, "model.init_scale=1000", "--out", str(out), "--quiet"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and "step 1" in summary["message"]
    assert main(["train", *SHORT, "model.init_scale=1000", "--out", str(out), "--quiet"]) == 2
    assert "diverged" in capsys.readouterr().err


def test_leftover_temp_files_are_reported_then_removed(tmp_path, capsys):
    out = interrupted_run(tmp_path)
    (out / ".metrics.csv.tmp-12345").write_bytes(b"partial")
    assert main(["check", str(out)]) == 1
    assert ".metrics.csv.tmp-12345" in capsys.readouterr().out
    train(parse_config({}, SHORT), out, progress=False)
    assert not [p for p in os.listdir(out) if ".tmp-" in p]


class _RunsCode:
    """Unpickling this calls ``Path.touch`` on a marker file: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path, capsys):
    out = interrupted_run(tmp_path)
    marker = tmp_path / "code-ran"
    body = pickle.dumps({"step": 20, "model": _RunsCode(marker)}, protocol=2)
    forge(out, "checkpoint.pt", CHECKPOINT_MAGIC + hashlib.sha256(body).digest() + body)  # valid checksums
    with pytest.raises(RunDirError, match="checkpoint.pt holds objects other than tensors"):
        load_checkpoint(out / "checkpoint.pt")
    assert main(["train", *SHORT, "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoint.pt" in err and "refusing" in err and err.count("\n") == 0
    assert main(["check", str(out)]) == 1 and "BAD checkpoint.pt" in capsys.readouterr().out
    assert not marker.exists()


def test_a_float64_run_reloads_bit_identical(tmp_path):
    out = tmp_path / "run"
    train(parse_config({}, [*SHORT, "train.dtype=float64", "model.layers=2"]), out, progress=False)
    saved = load_file(out / "model.safetensors")
    model, _, _ = load_model(out)
    state = model.state_dict()
    assert set(state) == set(saved)
    for name, tensor in saved.items():
        assert tensor.dtype == torch.float64 and state[name].dtype == torch.float64
        assert torch.equal(state[name], tensor), name


def test_the_model_file_is_the_same_bytes_in_every_process(tmp_path):
    """model.safetensors of the same weights written by two processes: the same bytes (its metadata is one key;
    safetensors orders several keys differently from process to process), and it still reads back."""
    code = (
        "import hashlib, sys, torch; from iclab.config import parse_config; from iclab.models import build_model; "
        "from iclab.rundir import MODEL_FILE, model_files; from iclab.tasks import make_task; "
        "cfg = parse_config({}, ['task.d=3', 'model.layers=2']); task = make_task(cfg.task); "
        "model = build_model(cfg.model, task, torch.Generator().manual_seed(0)); "
        "print(hashlib.sha256(model_files(model, cfg, 7)[MODEL_FILE]).hexdigest())"
    )
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
               for _ in range(3)}  # fmt: skip
    assert len(digests) == 1
    out = tmp_path / "run"
    train(parse_config({}, TINY), out, progress=False)
    assert load_model(out)[2] == 4

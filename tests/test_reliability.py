"""Nothing is lost: kills and Ctrl-C resume exactly, damaged files are named, leftovers are cleaned."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from iclab.cli import main
from iclab.config import parse_config
from iclab.rundir import CHECKPOINT_MAGIC, RunDirError, load_checkpoint
from iclab.runs import load_model
from iclab.train import train

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


def interrupted_run(tmp_path: Path) -> Path:
    """A short run stopped after its checkpoint at step 20 (finished, then summary removed and files kept)."""
    out = tmp_path / "run"
    train(parse_config({}, SHORT), out, progress=False)
    (out / "summary.json").unlink()
    return out


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("checkpoint.pt", lambda data: data[: len(data) // 2]),
        ("checkpoint.pt", lambda data: data[:-100] + bytes([data[-100] ^ 1]) + data[-99:]),
        ("model.json", lambda data: data[: len(data) // 3]),
        ("model.safetensors", lambda data: data[:-8] + bytes(8)),
        ("config.yaml", lambda data: data.replace(b"d: 3", b"d: [")),
    ],
)
def test_damaged_files_are_refused_by_name(tmp_path, capsys, name, damage):
    out = interrupted_run(tmp_path)
    path = out / name
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(RunDirError, match=name.replace(".", r"\.")):
        train(parse_config({}, SHORT), out, progress=False)
    assert main(["train", *SHORT, "--out", str(out), "--quiet"]) == 2
    assert name in capsys.readouterr().err
    assert main(["check", str(out)]) == 1
    report = capsys.readouterr().out
    assert f"BAD {name}" in report
    assert main(["train", *SHORT, "--out", str(out), "--quiet", "--force"]) == 0  # start over on request


def test_missing_checkpoint_is_not_a_silent_restart(tmp_path):
    out = interrupted_run(tmp_path)
    (out / "checkpoint.pt").unlink()
    with pytest.raises(RunDirError, match="refusing to restart from step 0"):
        train(parse_config({}, SHORT), out, progress=False)


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
    (out / "checkpoint.pt").write_bytes(CHECKPOINT_MAGIC + hashlib.sha256(body).digest() + body)  # valid checksum
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

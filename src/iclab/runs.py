"""Open a finished run dir: its model rebuilt through the model registry, bit for bit in the saved dtype;
``require_finished`` refuses a run that has not finished."""

from __future__ import annotations

import shlex
from pathlib import Path

import torch

from iclab.config import Config
from iclab.errors import UsageError
from iclab.models import InContextModel, build_model
from iclab.rundir import (
    CONFIG_FILE,
    MODEL_FILE,
    SIDECAR_FILE,
    SUMMARY_FILE,
    RunDirError,
    read_config,
    read_sidecar,
    read_summary,
    read_weights,
    tensor_digest,
)
from iclab.seeding import make_generator
from iclab.tasks import make_task


def load_model(run_dir: str | Path, device: str = "cpu") -> tuple[InContextModel, Config, int]:
    """Rebuild the model of a run dir from its verified sidecar and weights → (model, config, step).

    The model is built in the dtype its weights were saved in before they are loaded, so a float64 run
    reloads bit-identical. Raises RunDirError (a missing, damaged or mismatched file, named)."""
    run_dir = Path(run_dir)
    tensors, step = read_weights(run_dir)
    cfg, sidecar_step, digest = read_sidecar(run_dir)
    if sidecar_step != step or digest != tensor_digest(tensors):
        raise RunDirError(
            f"{run_dir / SIDECAR_FILE} (step {sidecar_step}) does not describe {MODEL_FILE} (step {step}); "
            "the run was stopped while saving: rerun iclab train with the same --out to finish it"
        )
    model = build_model(cfg.model, make_task(cfg.task, cfg.seed), make_generator(cfg.seed, "init"))
    dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
    model.to(dtype=dtype)
    model.load_state_dict(tensors)
    return model.to(device=device), cfg, step


def require_finished(run_dir: str | Path, verb: str) -> None:
    """UsageError unless ``run_dir`` holds a finished run (summary.json with status finished): ``iclab {verb}``
    reads finished runs only. The message says how far an unfinished run got (the step of its last saved model
    out of train.steps) and the command that finishes it; a diverged run, where it diverged."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir)  # RunDirError when this is no run dir
    summary = read_summary(run_dir) if (run_dir / SUMMARY_FILE).is_file() else {}
    if summary.get("status") == "finished":
        return
    step = read_sidecar(run_dir)[1] if (run_dir / SIDECAR_FILE).is_file() else 0
    if summary.get("status") == "diverged":
        raise UsageError(
            f"{run_dir} did not finish: it {summary.get('message', 'diverged')} (its last saved model is from "
            f"step {step} of {cfg.train.steps}); iclab {verb} reads finished runs: change the config (see the "
            "advice train printed) and train again with --force"
        )
    command = shlex.join(["iclab", "train", "--config", str(run_dir / CONFIG_FILE), "--out", str(run_dir)])
    raise UsageError(
        f"{run_dir} is not finished (step {step} of {cfg.train.steps} saved); iclab {verb} reads finished runs: "
        f"run `{command}` to finish it"
    )

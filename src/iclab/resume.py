"""What ``iclab train --out DIR`` does with an existing DIR, and the checkpoint of the loop's state.

A checkpoint holds the model, the optimizer, the training generator's state, the step, the metrics rows so
far and the running loss window; the curriculum and learning rate are functions of the step, and the
held-out and final evaluation sets are redrawn from their seeds. So a run resumed from any checkpoint
continues exactly as the uninterrupted run would: byte-identical metrics.csv.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from iclab.config import Config, flat_keys
from iclab.rundir import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    SIDECAR_FILE,
    SUMMARY_FILE,
    RunDirError,
    atomic_write_text,
    is_empty_run_dir,
    load_checkpoint,
    metrics_csv,
    read_config,
    read_json,
    read_sidecar,
    read_weights,
    save_checkpoint,
    save_model,
)


@dataclass
class LossWindow:
    """Running mean of the training loss between two metrics rows."""

    total: float = 0.0
    count: int = 0

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1

    def take(self) -> float:
        mean = self.total / max(self.count, 1)
        self.total, self.count = 0.0, 0
        return mean


@dataclass
class TrainState:
    """The loop's own state (besides model, optimizer and generator)."""

    step: int = 0
    rows: list[dict] = field(default_factory=list)
    window: LossWindow = field(default_factory=LossWindow)


def config_differences(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    a, b = flat_keys(old), flat_keys(new)
    return sorted(key for key in a.keys() | b.keys() if a.get(key) != b.get(key))


def prepare_run_dir(cfg: Config, out: Path) -> str:
    """Decide what to do with ``out``: "new", "resume" or "done".

    Refused (RunDirError naming the reason): a file, a non-empty folder that is not a run dir, a run with a
    different config (the differing keys are named), a diverged run, damaged files, and a run whose
    checkpoint is gone although it saved a model (never a silent restart from step 0).
    """
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a folder")
    if not (out / CONFIG_FILE).exists():
        if not is_empty_run_dir(out):
            raise RunDirError(f"--out {out} is not empty and holds no iclab run ({CONFIG_FILE} missing)")
        return "new"
    differing = config_differences(read_config(out), cfg)
    if differing:
        raise RunDirError(
            f"{out} holds a run with a different config (keys: {', '.join(differing)}); "
            "choose another --out, or add --force to start over"
        )
    if (out / SUMMARY_FILE).exists():
        status = read_json(out / SUMMARY_FILE).get("status")
        if status == "finished":
            return "done"
        if status == "diverged":
            raise RunDirError(
                f"{out} holds a run that diverged ({read_json(out / SUMMARY_FILE).get('message')}); "
                "change the config (e.g. train.lr, train.grad_clip) with another --out, or --force"
            )
    if (out / CHECKPOINT_FILE).exists():
        if (out / MODEL_FILE).exists():
            read_weights(out)  # verified now, so a damaged file is named before any work
        if (out / SIDECAR_FILE).exists():
            read_sidecar(out)
        return "resume"
    if (out / SIDECAR_FILE).exists() or (out / MODEL_FILE).exists():
        raise RunDirError(
            f"{out / CHECKPOINT_FILE} is missing although the run saved a model; refusing to restart from "
            "step 0 (use --force to start over)"
        )
    return "new"


def write_checkpoint(
    out: Path,
    cfg: Config,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    state: TrainState,
) -> None:
    """checkpoint.pt first (what resume reads), then the model + sidecar and metrics.csv at that step."""
    payload = {
        "step": state.step,
        "optimizer": optimizer.state_dict(),
        "model": model.state_dict(),
        "generator": generator.get_state(),
        "rows": state.rows,
        "window": (state.window.total, state.window.count),
    }
    save_checkpoint(out / CHECKPOINT_FILE, payload)
    save_model(out, model, cfg, state.step)
    atomic_write_text(out / METRICS_FILE, metrics_csv(state.rows))


def restore_checkpoint(
    out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> TrainState:
    """Load the verified checkpoint into model, optimizer and generator; return the loop state."""
    payload = load_checkpoint(out / CHECKPOINT_FILE)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    generator.set_state(payload["generator"])
    total, count = payload["window"]
    return TrainState(step=payload["step"], rows=payload["rows"], window=LossWindow(total, count))

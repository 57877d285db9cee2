"""What ``iclab train --out DIR`` does with an existing DIR, and the checkpoint of the loop's state.

A checkpoint holds the model, the optimizer, the training generator's state, the step, the metrics rows so
far and the running loss window; the curriculum and learning rate are functions of the step, and the
held-out and final evaluation sets are redrawn from their seeds. So a run resumed from any checkpoint
continues exactly as the uninterrupted run would: byte-identical metrics.csv. The model, its sidecar and
metrics.csv are functions of the checkpoint too: resuming rewrites them from it, completing whatever a kill
left unwritten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from iclab.config import Config, flat_keys
from iclab.rundir import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    MANIFEST_FILE,
    METRIC_COLUMNS,
    METRICS_FILE,
    SUMMARY_FILE,
    RunDirError,
    RunFiles,
    checkpoint_bytes,
    file_states,
    is_empty_run_dir,
    is_run_dir,
    load_checkpoint,
    metrics_csv,
    model_files,
    read_config,
    read_manifest,
    read_summary,
    settle,
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


@dataclass(frozen=True)
class RunDirSetup:
    """What :func:`prepare_run_dir` found: ``status`` new, resume or done; the digest of every file on disk
    (what the next write replaces); the summary of a finished run."""

    status: str
    files: dict[str, str]
    summary: dict | None = None


def config_differences(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    a, b = flat_keys(old), flat_keys(new)
    return sorted(key for key in a.keys() | b.keys() if a.get(key) != b.get(key))


def refuse_unusable_out(out: Path) -> None:
    """RunDirError for an ``--out`` that is a file, or a non-empty folder that holds no iclab run (checked before
    anything, the lock included, is written there)."""
    try:
        if out.exists() and not out.is_dir():
            raise RunDirError(f"--out {out} is a file, not a folder")
        if out.is_dir() and not is_run_dir(out) and not is_empty_run_dir(out):
            raise RunDirError(f"--out {out} is not empty and holds no iclab run ({CONFIG_FILE} missing)")
    except OSError as err:
        raise RunDirError(f"--out {out} cannot be used ({err.strerror})") from None


def prepare_run_dir(cfg: Config, out: Path) -> RunDirSetup:
    """Decide what to do with ``out`` (its lock held): start a new run, resume it, or nothing (done).

    Every file is verified against manifest.json first. Refused (RunDirError naming the reason): a file, a
    non-empty folder that is not a run dir, a run dir without manifest.json, a missing or damaged file, a run
    with a different config (the differing keys are named), a diverged run. A run is done only when
    summary.json says finished and every file is the version last written.
    """
    refuse_unusable_out(out)
    manifest = read_manifest(out)
    if manifest is None:
        if (out / CONFIG_FILE).exists():
            raise RunDirError(
                f"{out} has no {MANIFEST_FILE} (written by an iclab before file digests, or deleted), so its files "
                "cannot be verified; use --force to start the run over"
            )
        return RunDirSetup("new", {})
    states = file_states(out, manifest)
    files = settle(out, states)
    if CONFIG_FILE not in files:  # killed while writing its first file
        return RunDirSetup("new", files)
    differing = config_differences(read_config(out), cfg)
    if differing:
        raise RunDirError(
            f"{out} holds a run with a different config (keys: {', '.join(differing)}); "
            "choose another --out, or add --force to start over"
        )
    if SUMMARY_FILE in files:
        summary = read_summary(out)
        if summary.get("status") == "diverged":
            raise RunDirError(
                f"{out} holds a run that diverged ({summary.get('message')}); "
                "change the config (e.g. train.lr, train.grad_clip) with another --out, or --force"
            )
        if summary.get("status") == "finished" and all(item.state == "current" for item in states):
            return RunDirSetup("done", files, summary)
    return RunDirSetup("resume" if CHECKPOINT_FILE in files else "new", files)


def derived_files(cfg: Config, model: torch.nn.Module, state: TrainState) -> dict[str, bytes]:
    """The model, its sidecar and metrics.csv at ``state.step``: functions of what a checkpoint holds."""
    return {**model_files(model, cfg, state.step), METRICS_FILE: metrics_csv(state.rows).encode()}


def write_checkpoint(
    files: RunFiles,
    cfg: Config,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    state: TrainState,
) -> None:
    """checkpoint.pt first (what resume reads), then the model + sidecar and metrics.csv at that step, in one
    commit of the run dir's files."""
    payload = {
        "step": state.step,
        "optimizer": optimizer.state_dict(),
        "model": model.state_dict(),
        "generator": generator.get_state(),
        "rows": state.rows,
        "window": (state.window.total, state.window.count),
    }
    files.commit({CHECKPOINT_FILE: checkpoint_bytes(payload), **derived_files(cfg, model, state)})


def _structure_problems(payload: Any, cfg: Config) -> list[str]:
    """What is wrong with the structure of a training checkpoint's payload (empty: nothing)."""
    if not isinstance(payload, dict):
        return [f"a {type(payload).__name__} instead of a mapping"]
    kinds = {"step": int, "optimizer": dict, "model": dict, "generator": torch.Tensor, "rows": list,
             "window": tuple | list}  # fmt: skip
    problems = [f"no {key!r}" for key in kinds if key not in payload]
    problems += [
        f"{key!r} is a {type(payload[key]).__name__}"
        for key, kind in kinds.items()
        if key in payload and not isinstance(payload[key], kind)
    ]
    if problems:
        return problems
    if not 0 <= payload["step"] <= cfg.train.steps:
        problems.append(f"step {payload['step']} outside 0..train.steps={cfg.train.steps}")
    if not all(isinstance(row, dict) and set(row) == set(METRIC_COLUMNS) for row in payload["rows"]):
        problems.append(f"metrics rows without the columns {', '.join(METRIC_COLUMNS)}")
    window = payload["window"]
    if len(window) != 2 or not isinstance(window[0], float) or not isinstance(window[1], int):
        problems.append("a loss window other than (total, count)")
    return problems


def read_train_checkpoint(out: Path, cfg: Config) -> dict:
    """The verified payload of ``out``'s checkpoint.pt, with the structure a training checkpoint of ``cfg``
    has; RunDirError says what is wrong."""
    payload = load_checkpoint(out / CHECKPOINT_FILE)
    problems = _structure_problems(payload, cfg)
    if problems:
        raise RunDirError(
            f"{out / CHECKPOINT_FILE} is not a training checkpoint of this run ({'; '.join(problems)}); "
            "use --force to start the run over"
        )
    return payload


def restore_checkpoint(
    out: Path, cfg: Config, model: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> TrainState:
    """Load the verified checkpoint into model, optimizer and generator; return the loop state."""
    payload = read_train_checkpoint(out, cfg)
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        generator.set_state(payload["generator"])
    except (RuntimeError, ValueError, KeyError, TypeError) as err:
        raise RunDirError(
            f"{out / CHECKPOINT_FILE} does not fit the model and optimizer of {CONFIG_FILE} "
            f"({str(err).splitlines()[0]}); use --force to start the run over"
        ) from None
    total, count = payload["window"]
    return TrainState(step=payload["step"], rows=payload["rows"], window=LossWindow(total, count))

"""``iclab check DIR``: verify every file of a run dir without changing anything.

Each file recorded in manifest.json must be the version last written (an earlier version means a save was
interrupted; anything else is damage); each must also parse and agree with the others: the sidecar with the
config, the model, the sidecar and metrics.csv with the checkpoint they were written from, a finished summary
with the last step.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from iclab.resume import config_differences, read_train_checkpoint
from iclab.rundir import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    FIGURES_DIR,
    LOCK_FILE,
    LOSS_FIGURE,
    MANIFEST_FILE,
    METRIC_COLUMNS,
    METRICS_FILE,
    MODEL_FILE,
    SIDECAR_FILE,
    STATE_TEXT,
    SUMMARY_FILE,
    TEMP_MARK,
    FileState,
    RunDirError,
    file_states,
    metrics_csv,
    read_config,
    read_manifest,
    read_run_file,
    read_sidecar,
    read_summary,
    read_weights,
    stale_temp_files,
    tensor_digest,
)
from iclab.tracking import LOGGER_DIRS

Report = list[tuple[str, bool, str]]


def _manifest_entry(run_dir: Path) -> tuple[tuple[str, bool, str], dict[str, FileState]]:
    """manifest.json's line of the report and the state of every file it records."""
    try:
        manifest = read_manifest(run_dir)
    except RunDirError as err:
        return (MANIFEST_FILE, False, str(err)), {}
    if manifest is None:
        why = "the files cannot be verified (a run dir of an iclab before file digests, or it was deleted)"
        return (MANIFEST_FILE, False, f"missing: {why}"), {}
    states = {item.name: item for item in file_states(run_dir, manifest)}
    return (MANIFEST_FILE, True, f"{len(manifest.files)} files recorded, checksum ok"), states


def _unrecorded(run_dir: Path, recorded: set[str]) -> Report:
    """Files and folders of the run dir that manifest.json does not record (outputs of other verbs, and the
    folders of train.loggers: appended to while training, so never covered by digests)."""
    report = []
    for folder in (run_dir, run_dir / FIGURES_DIR):
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            name = path.relative_to(run_dir).as_posix()
            if name in recorded or name in (MANIFEST_FILE, LOCK_FILE, FIGURES_DIR) or TEMP_MARK in name:
                continue
            if name in LOGGER_DIRS.values() and path.is_dir():
                report.append((name, True, f"written by train.loggers, not recorded in {MANIFEST_FILE} (not verified)"))
                continue
            report.append((name, True, f"not recorded in {MANIFEST_FILE}: not written by iclab train (no digest)"))
    return report


def verify_run_dir(run_dir: str | Path) -> Report:
    """(file, ok, detail) for every file a run dir should or may hold; nothing is modified."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a folder")
    manifest_line, states = _manifest_entry(run_dir)
    found: dict[str, Any] = {}

    def config() -> str:
        cfg = found["config"] = read_config(run_dir)
        return f"task {cfg.task.name} d={cfg.task.d} n={cfg.task.n}, model {cfg.model.name}"

    def checkpoint() -> str:
        if "config" not in found:
            raise RunDirError(f"cannot be checked without a valid {CONFIG_FILE}")
        payload = found["checkpoint"] = read_train_checkpoint(run_dir, found["config"])
        return f"step {payload['step']}, checksum ok"

    def behind(step: int, name: str) -> None:
        """RunDirError when ``name`` (at ``step``) was not written from the checkpoint."""
        if "checkpoint" in found and step != found["checkpoint"]["step"]:
            raise RunDirError(
                f"{run_dir / name} is at step {step}, {CHECKPOINT_FILE} at step {found['checkpoint']['step']}: a "
                "save was interrupted (rerun iclab train with the same config to finish it)"
            )

    def weights() -> str:
        tensors, step = read_weights(run_dir)
        behind(step, MODEL_FILE)
        found["weights"] = tensor_digest(tensors)
        if "checkpoint" in found and found["weights"] != tensor_digest(found["checkpoint"]["model"]):
            raise RunDirError(f"{run_dir / MODEL_FILE} does not hold the weights of {CHECKPOINT_FILE}")
        return f"step {step}, checksum ok"

    def sidecar() -> str:
        sidecar_cfg, step, digest = read_sidecar(run_dir)
        if "config" in found and config_differences(found["config"], sidecar_cfg):
            raise RunDirError(f"{run_dir / SIDECAR_FILE} describes a different config than {CONFIG_FILE}")
        behind(step, SIDECAR_FILE)
        if "weights" in found and digest != found["weights"]:
            raise RunDirError(f"{run_dir / SIDECAR_FILE} describes other weights than {MODEL_FILE}")
        return f"step {step}"

    def metrics() -> str:
        return _metrics(run_dir, found.get("checkpoint"))

    def summary() -> str:
        payload = read_summary(run_dir)
        status = payload.get("status")
        if status not in ("finished", "diverged"):
            raise RunDirError(f"{run_dir / SUMMARY_FILE} has an unknown status {status!r}")
        if status == "finished" and "config" in found and payload.get("steps") != found["config"].train.steps:
            raise RunDirError(f"{run_dir / SUMMARY_FILE} is finished at step {payload.get('steps')}, not train.steps")
        return str(status)

    def figure() -> str:
        read_run_file(run_dir, LOSS_FIGURE)
        return "checksum ok" if states else "present"

    checks: list[tuple[str, bool, Callable[[], str]]] = [
        (CONFIG_FILE, True, config),
        (CHECKPOINT_FILE, False, checkpoint),
        (MODEL_FILE, False, weights),
        (SIDECAR_FILE, False, sidecar),
        (METRICS_FILE, False, metrics),
        (SUMMARY_FILE, False, summary),
        (LOSS_FIGURE, False, figure),
    ]
    report = [manifest_line]
    for name, required, check in checks:
        state = states.get(name)
        if state is not None and state.state != "current":
            report.append((name, False, STATE_TEXT[state.state]))
        elif not (run_dir / name).exists():
            report.append((name, not required, "missing" if required else "not written yet"))
        else:
            try:
                report.append((name, True, check()))
            except RunDirError as err:
                report.append((name, False, str(err)))
    checked = {name for name, _, _ in checks}
    report += [(name, False, STATE_TEXT[item.state]) for name, item in states.items()
               if name not in checked and item.state != "current"]  # fmt: skip
    if states:
        report += _unrecorded(run_dir, set(states) | checked)
    for path in stale_temp_files(run_dir):
        report.append((path.name, False, "temporary file left by an interrupted write (the next train removes it)"))
    return report


def _metrics(run_dir: Path, checkpoint: dict | None) -> str:
    """metrics.csv parsed; when the checkpoint was read, byte for byte the rows it holds."""
    path = run_dir / METRICS_FILE
    data = read_run_file(run_dir, METRICS_FILE)
    try:
        table = pd.read_csv(io.BytesIO(data))
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise RunDirError(f"{path} cannot be parsed ({str(err).splitlines()[0]})") from None
    if tuple(table.columns) != METRIC_COLUMNS:
        raise RunDirError(f"{path} has columns {list(table.columns)}, expected {list(METRIC_COLUMNS)}")
    if checkpoint is not None and data != metrics_csv(checkpoint["rows"]).encode():
        raise RunDirError(
            f"{path} does not hold the rows of {CHECKPOINT_FILE} (step {checkpoint['step']}): a save was "
            "interrupted (rerun iclab train with the same config to finish it)"
        )
    return f"{len(table)} rows, last step {int(table['step'].iloc[-1]) if len(table) else 0}"

"""``iclab check DIR``: verify every file of a run dir without changing anything."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from iclab.resume import config_differences
from iclab.rundir import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRIC_COLUMNS,
    METRICS_FILE,
    MODEL_FILE,
    SIDECAR_FILE,
    SUMMARY_FILE,
    RunDirError,
    load_checkpoint,
    read_config,
    read_json,
    read_sidecar,
    read_weights,
    stale_temp_files,
)


def _metrics(run_dir: Path) -> str:
    path = run_dir / METRICS_FILE
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise RunDirError(f"{path} cannot be parsed ({err})") from None
    if tuple(table.columns) != METRIC_COLUMNS:
        raise RunDirError(f"{path} has columns {list(table.columns)}, expected {list(METRIC_COLUMNS)}")
    if not table["step"].is_monotonic_increasing or table["train_loss"].isna().any():
        raise RunDirError(f"{path} is damaged: steps out of order or missing training losses")
    return f"{len(table)} rows, last step {int(table['step'].iloc[-1]) if len(table) else 0}"


def verify_run_dir(run_dir: str | Path) -> list[tuple[str, bool, str]]:
    """(file, ok, detail) for every file a run dir should or may hold; nothing is modified."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is not a folder")
    cfg = None

    def config() -> str:
        nonlocal cfg
        cfg = read_config(run_dir)
        return f"task {cfg.task.name} d={cfg.task.d} n={cfg.task.n}, model {cfg.model.name}"

    def checkpoint() -> str:
        step = load_checkpoint(run_dir / CHECKPOINT_FILE)["step"]
        return f"step {step}, checksum ok"

    def weights() -> str:
        return f"step {read_weights(run_dir)[1]}, checksum ok"

    def sidecar() -> str:
        sidecar_cfg, step, _ = read_sidecar(run_dir)
        if cfg is not None and config_differences(cfg, sidecar_cfg):
            raise RunDirError(f"{run_dir / SIDECAR_FILE} describes a different config than {CONFIG_FILE}")
        return f"step {step}"

    def summary() -> str:
        payload = read_json(run_dir / SUMMARY_FILE)
        if payload.get("status") not in ("finished", "diverged"):
            raise RunDirError(f"{run_dir / SUMMARY_FILE} has an unknown status {payload.get('status')!r}")
        return str(payload["status"])

    checks: list[tuple[str, bool, Callable[[], str]]] = [
        (CONFIG_FILE, True, config),
        (METRICS_FILE, False, lambda: _metrics(run_dir)),
        (CHECKPOINT_FILE, False, checkpoint),
        (MODEL_FILE, False, weights),
        (SIDECAR_FILE, False, sidecar),
        (SUMMARY_FILE, False, summary),
    ]
    report = []
    for name, required, check in checks:
        if not (run_dir / name).exists():
            report.append((name, not required, "missing" if required else "not written yet"))
            continue
        try:
            report.append((name, True, check()))
        except RunDirError as err:
            report.append((name, False, str(err)))
    for path in stale_temp_files(run_dir):
        report.append((path.name, False, "temporary file left by an interrupted write (the next train removes it)"))
    return report

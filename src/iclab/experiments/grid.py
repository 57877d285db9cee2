"""Train a grid of runs: one run dir per named config under ``root``, finished runs skipped."""

from __future__ import annotations

from pathlib import Path

from iclab.config import parse_config
from iclab.rundir import load_model
from iclab.train import train


def train_grid(specs: dict[str, list[str]], root: Path, device: str = "cpu", progress: bool = True) -> dict:
    """Train every ``{run_id: overrides}`` into ``root/run_id`` (resuming or skipping as ``train`` does);
    return ``{run_id: model}`` with the trained models loaded on ``device``."""
    models = {}
    for index, (run_id, overrides) in enumerate(specs.items(), start=1):
        if progress:
            print(f"[{index}/{len(specs)}] {run_id}", flush=True)
        train(parse_config({}, overrides), root / run_id, device=device, progress=progress, log=lambda _: None)
        models[run_id] = load_model(root / run_id, device=device)[0]
    return models

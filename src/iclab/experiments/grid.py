"""What every recipe shares: its training overrides, training a grid of runs (one run dir per named config
under ``root``, finished runs skipped), and the layout of report.md."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch

from iclab.config import parse_config
from iclab.plots import markdown_table
from iclab.rundir import SUMMARY_FILE, load_model, read_json
from iclab.train import TrainingDiverged, train


def train_grid(
    specs: dict[str, list[str]],
    root: Path,
    device: str = "cpu",
    progress: bool = True,
    jobs: int = 1,
    allow_diverged: bool = False,
) -> dict:
    """Train every ``{run_id: overrides}`` into ``root/run_id`` (resuming or skipping as ``train`` does);
    return ``{run_id: model}`` with the trained models loaded on ``device``.

    ``jobs > 1`` trains that many runs at once in worker processes (one torch thread each; on a GPU they
    share the device), printing a line as each finishes instead of progress bars. With ``allow_diverged`` a
    run that diverges (now or before) is reported and left out of the result instead of stopping the grid."""
    train_one = partial(_train_one, device=device, allow_diverged=allow_diverged)
    outcomes = {}
    if jobs > 1:
        context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            futures = {pool.submit(train_one, overrides, root / run_id): run_id for run_id, overrides in specs.items()}
            for done, future in enumerate(as_completed(futures), start=1):
                outcomes[futures[future]] = future.result()
                if progress:
                    print(f"[{done}/{len(specs)}] {futures[future]} {outcomes[futures[future]]}", flush=True)
    models = {}
    for index, (run_id, overrides) in enumerate(specs.items(), start=1):
        if jobs == 1:
            if progress:
                print(f"[{index}/{len(specs)}] {run_id}", flush=True)
            outcomes[run_id] = train_one(overrides, root / run_id, progress=progress)
            if progress and outcomes[run_id] != "done":
                print(f"{run_id}: {outcomes[run_id]}", flush=True)
        if outcomes[run_id] == "done":
            models[run_id] = load_model(root / run_id, device=device)[0]
    return models


def _train_one(overrides: list[str], out: Path, device: str, allow_diverged: bool, progress: bool = False) -> str:
    """Train one run; "done", or (with ``allow_diverged``) the divergence message."""
    if not progress:
        torch.set_num_threads(1)
    summary = read_json(out / SUMMARY_FILE) if (out / SUMMARY_FILE).exists() else {}
    if allow_diverged and summary.get("status") == "diverged":
        return str(summary.get("message"))
    try:
        train(parse_config({}, overrides), out, device=device, progress=progress, log=lambda _: None)
    except TrainingDiverged as err:
        if not allow_diverged:
            raise
        return str(err)
    return "done"


def training_overrides(steps: int, batch_size: int, lr: float) -> list[str]:
    """Adam with gradient clipping 1.0; 50 metrics rows and 5 held-out evaluations (1000 prompts) per run."""
    return [
        f"train.steps={steps}",
        f"train.batch_size={batch_size}",
        f"train.lr={lr}",
        "train.grad_clip=1.0",
        f"train.log_every={max(steps // 50, 1)}",
        f"eval.every={max(steps // 5, 1)}",
        "eval.batch_size=1000",
    ]


def report_text(title: str, quick: bool, size: object, setting: str, tables: dict, checks: dict[str, bool]) -> str:
    """report.md: the title and size, every field of the ``size`` dataclass, a line on the ``setting``, each
    ``{heading: DataFrame}`` as a markdown table, and the claim checks (yes/NO)."""
    lines = [f"# {title} ({'quick' if quick else 'full'} size)", "", "Settings:", ""]
    lines += [f"- {key}: {value}" for key, value in asdict(size).items()]
    lines += [f"- {setting}"]
    for heading, table in tables.items():
        lines += ["", f"## {heading}", "", markdown_table(table)]
    lines += ["", "## Claim checks", ""]
    lines += [f"- {claim}: {'yes' if ok else 'NO'}" for claim, ok in checks.items()]
    return "\n".join(lines) + "\n"

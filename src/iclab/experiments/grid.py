"""What every recipe shares: its training overrides, executing a plan (one run dir per run under ``root``,
finished runs skipped), loading the finished runs, and the layout of report.md."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from iclab.config import parse_config
from iclab.experiments.recipe import RunSpec
from iclab.interrupts import sigint_ignored
from iclab.models import InContextModel
from iclab.plots import markdown_table
from iclab.rundir import SUMMARY_FILE, read_json
from iclab.runs import load_model
from iclab.train import TrainingDiverged, train

DONE = "done"  # what train_run returns for a finished run


class Executor(Protocol):
    """Anything that runs ``fn(*args, **kwargs)`` somewhere and returns a handle with ``.result()``:
    a concurrent.futures executor, or an adapter to a cluster scheduler."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any: ...


def execute(
    specs: list[RunSpec],
    root: Path,
    device: str = "cpu",
    progress: bool = True,
    jobs: int = 1,
    executor: Executor | None = None,
    allow_diverged: bool = False,
) -> dict[str, Path]:
    """Train every spec into ``root/run_id`` (resuming or skipping as ``train`` does); return the finished
    run dirs ``{run_id: root/run_id}`` in plan order.

    Each run is ``executor.submit(train_run, overrides, run_dir, device, allow_diverged)``. Without an
    executor, ``jobs == 1`` trains in this process with progress bars, ``jobs > 1`` in that many spawned
    worker processes (one torch thread each; on a GPU they share the device; none outlives this process, see
    :func:`_in_workers`); with either executor a line is printed as each run finishes. With ``allow_diverged``
    a run that diverges (now or before) is reported and left out of the result instead of stopping the grid."""
    if executor is not None:
        outcomes = _submit_all(executor, specs, root, device, allow_diverged, progress)
    elif jobs > 1:
        outcomes = _in_workers(jobs, specs, root, device, allow_diverged, progress)
    else:
        outcomes = {}
        for index, spec in enumerate(specs, start=1):
            if progress:
                print(f"[{index}/{len(specs)}] {spec.run_id}", flush=True)
            outcome = train_run(list(spec.overrides), str(root / spec.run_id), device, allow_diverged, progress)
            if progress and outcome != DONE:
                print(f"{spec.run_id}: {outcome}", flush=True)
            outcomes[spec.run_id] = outcome
    return {spec.run_id: root / spec.run_id for spec in specs if outcomes[spec.run_id] == DONE}


def _worker_setup(parent: int) -> None:
    """In a worker process: exit at once (within 0.2 s) when ``parent``, the process that started it, is gone,
    even killed by SIGKILL, so that no worker trains on (or writes) for nobody. tqdm gets a thread lock (a
    worker shows no bars): its default lock is a named semaphore, reported as leaked when a worker is
    terminated."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    tqdm.set_lock(threading.RLock())
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _in_workers(
    jobs: int, specs: list[RunSpec], root: Path, device: str, allow_diverged: bool, progress: bool
) -> dict[str, str]:
    """Every spec trained in ``jobs`` spawned worker processes that never outlive this one: each exits when this
    process is gone (:func:`_worker_setup`); each starts with SIGINT ignored (spawned while it is), so a
    Ctrl-C reaches a worker only inside train's loop, which saves a checkpoint and stops, never as a traceback
    while it imports; and when this process stops waiting (Ctrl-C, an error) the queued runs are cancelled and
    the workers terminated (SIGTERM: a checkpoint inside the loop, an immediate end outside it)."""
    before = set(multiprocessing.active_children())
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    with ProcessPoolExecutor(jobs, context, initializer=_worker_setup, initargs=(os.getpid(),)) as pool:
        with sigint_ignored():
            submitted = _submit(pool, specs, root, device, allow_diverged)
        try:
            return _collect(submitted, len(specs), progress)
        except BaseException:
            for worker in set(multiprocessing.active_children()) - before:
                worker.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _submit(
    executor: Executor, specs: list[RunSpec], root: Path, device: str, allow_diverged: bool
) -> list[tuple[str, Any]]:
    """``[(run_id, handle)]``: every spec submitted to ``executor``."""
    return [
        (spec.run_id, executor.submit(train_run, list(spec.overrides), str(root / spec.run_id), device, allow_diverged))
        for spec in specs
    ]


def _submit_all(
    executor: Executor, specs: list[RunSpec], root: Path, device: str, allow_diverged: bool, progress: bool
) -> dict[str, str]:
    """Submit every spec, wait for all; ``{run_id: outcome}``."""
    return _collect(_submit(executor, specs, root, device, allow_diverged), len(specs), progress)


def _collect(submitted: list[tuple[str, Any]], total: int, progress: bool) -> dict[str, str]:
    """Wait for every submitted run; ``{run_id: outcome}``. concurrent.futures results are taken as they
    complete, other handles in plan order."""
    if all(isinstance(future, Future) for _, future in submitted):
        run_ids = {future: run_id for run_id, future in submitted}
        submitted = [(run_ids[future], future) for future in as_completed(run_ids)]
    outcomes = {}
    for done, (run_id, future) in enumerate(submitted, start=1):
        outcomes[run_id] = future.result()
        if progress:
            print(f"[{done}/{total}] {run_id} {outcomes[run_id]}", flush=True)
    return outcomes


def train_run(overrides: list[str], out: str, device: str, allow_diverged: bool, progress: bool = False) -> str:
    """Train one run dir (what ``iclab train *overrides --out out`` does); "done", or (with ``allow_diverged``)
    the divergence message. Without progress bars (a worker process) torch uses one thread."""
    if not progress:
        torch.set_num_threads(1)
    run_dir = Path(out)
    summary = read_json(run_dir / SUMMARY_FILE) if (run_dir / SUMMARY_FILE).exists() else {}
    if allow_diverged and summary.get("status") == "diverged":
        return str(summary.get("message"))
    try:
        train(parse_config({}, overrides), run_dir, device=device, progress=progress, log=lambda _: None)
    except TrainingDiverged as err:
        if not allow_diverged:
            raise
        return str(err)
    return DONE


def load_finished(runs: dict[str, Path], device: str = "cpu") -> dict[str, InContextModel]:
    """The trained model of every finished run dir ``{run_id: run dir}``, on ``device``."""
    return {run_id: load_model(run_dir, device=device)[0] for run_id, run_dir in runs.items()}


def training_overrides(steps: int, batch_size: int, lr: float, grad_clip: float = 1.0) -> list[str]:
    """Adam with gradient clipping; 50 metrics rows and 5 held-out evaluations (1000 prompts) per run."""
    return [
        f"train.steps={steps}",
        f"train.batch_size={batch_size}",
        f"train.lr={lr}",
        f"train.grad_clip={grad_clip}",
        f"train.log_every={max(steps // 50, 1)}",
        f"eval.every={max(steps // 5, 1)}",
        "eval.batch_size=1000",
    ]


def report_text(title: str, size_name: str, size: object, setting: str, tables: dict, checks: dict[str, bool]) -> str:
    """report.md: the title and size, every field of the ``size`` dataclass, a line on the ``setting``, each
    ``{heading: DataFrame}`` as a markdown table, and the claim checks (yes/NO)."""
    lines = [f"# {title} ({size_name} size)", "", "Settings:", ""]
    lines += [f"- {key}: {value}" for key, value in asdict(size).items()]
    lines += [f"- {setting}"]
    for heading, table in tables.items():
        lines += ["", f"## {heading}", "", markdown_table(table)]
    lines += ["", "## Claim checks", ""]
    lines += [f"- {claim}: {'yes' if ok else 'NO'}" for claim, ok in checks.items()]
    return "\n".join(lines) + "\n"

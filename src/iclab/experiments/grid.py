"""What every recipe shares: its training overrides, executing a plan (one run dir per run under ``root``,
finished runs skipped), loading the finished runs, and the layout of report.md."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from iclab.config import parse_config
from iclab.errors import ResourceError
from iclab.interrupts import sigint_ignored
from iclab.models import InContextModel
from iclab.rundir import SUMMARY_FILE, RunDirError, locked_run_dir, read_json
from iclab.runs import load_model
from iclab.train import TrainingDiverged, train

DONE = "done"  # what train_run returns for a run it trained (or resumed) to the end
ALREADY_DONE = "already done"  # what it returns for a run found finished, untouched
BUSY = "busy"  # what train_run returns, asked not to wait, for a run dir another process is writing
_worker_threads = 1  # torch threads of a run trained without progress bars (in a worker process)
SELF_STOP = 2.0  # seconds a worker reached by the same Ctrl-C has to end by itself before SIGTERM
STOP_GRACE = 10.0  # seconds a worker has after SIGTERM to save its checkpoint and end before SIGKILL


@dataclass(frozen=True)
class RunSpec:
    """One run of a plan: trained by ``iclab train *overrides --out ROOT/run_id``."""

    run_id: str
    overrides: tuple[str, ...]


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
    run dirs ``{run_id: root/run_id}`` in plan order; see :func:`run_plan`."""
    outcomes = run_plan(specs, root, device, progress, jobs, executor, allow_diverged)
    return {spec.run_id: root / spec.run_id for spec in specs if finished(outcomes[spec.run_id])}


def run_plan(
    specs: list[RunSpec],
    root: Path,
    device: str = "cpu",
    progress: bool = True,
    jobs: int = 1,
    executor: Executor | None = None,
    allow_diverged: bool = False,
) -> dict[str, str]:
    """Train every spec into ``root/run_id`` (resuming or skipping as ``train`` does); return the outcome of
    each run ``{run_id: outcome}``: "done" (trained, or resumed, to the end here), "already done" (found
    finished: by an earlier call, or by another process meanwhile) or, with ``allow_diverged``, the divergence
    message.

    Each run is ``executor.submit(train_run, overrides, run_dir, device, allow_diverged, False, if_busy)``.
    Without an executor, ``jobs == 1`` trains in this process with progress bars, ``jobs > 1`` in that many
    spawned worker processes (torch threads: the usable cores shared among them; on a GPU they share the device;
    none outlives this process, see :func:`_in_workers`); with either executor a line is printed as each run
    finishes. With ``allow_diverged`` a run that diverges (now or before) is reported instead of stopping the
    grid.

    Several processes (or cluster workers) may execute the same plan into the same ``root`` at once: a run dir
    is written by one of them at a time (its lock). A first pass skips the runs another process is writing
    (``if_busy="skip"``) and trains the others; a second pass waits for those (``if_busy="wait"``) and finds
    them finished (or resumes what a killed writer left), so no run is trained twice and the processes share
    the work."""
    if executor is not None:

        def through_executor(todo: list[RunSpec], if_busy: str) -> dict[str, str]:
            return _submit_all(executor, todo, root, device, allow_diverged, progress, if_busy)

        outcomes = _passes(through_executor, specs)
    elif jobs > 1:
        outcomes = _in_workers(jobs, specs, root, device, allow_diverged, progress)
    else:

        def in_process(todo: list[RunSpec], if_busy: str) -> dict[str, str]:
            outcomes = {}
            for index, spec in enumerate(todo, start=1):
                if progress:
                    print(f"[{index}/{len(todo)}] {spec.run_id}", flush=True)
                out = str(root / spec.run_id)
                outcome = train_run(list(spec.overrides), out, device, allow_diverged, progress, if_busy)
                if progress and not finished(outcome):
                    print(f"{spec.run_id}: {_outcome_text(outcome)}", flush=True)
                outcomes[spec.run_id] = outcome
            return outcomes

        outcomes = _passes(in_process, specs)
    return outcomes


def finished(outcome: str) -> bool:
    """Whether an outcome of :func:`train_run` is a finished run (trained now or found finished)."""
    return outcome in (DONE, ALREADY_DONE)


def _passes(run: Callable[[list[RunSpec], str], dict[str, str]], specs: list[RunSpec]) -> dict[str, str]:
    """``run(specs, "skip")``, then ``run(busy, "wait")`` for the runs another process was writing."""
    outcomes = run(specs, "skip")
    busy = [spec for spec in specs if outcomes[spec.run_id] == BUSY]
    if busy:
        outcomes.update(run(busy, "wait"))
    return outcomes


def _outcome_text(outcome: str) -> str:
    if outcome == BUSY:
        return "another process is writing it; waiting for it after the other runs"
    return outcome


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which a container or ``taskset`` narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_worker_threads(threads: int) -> None:
    """Torch threads of each run this process trains without progress bars (a worker's share of the cores)."""
    global _worker_threads
    _worker_threads = max(int(threads), 1)
    torch.set_num_threads(_worker_threads)


def _worker_setup(parent: int, threads: int = 1) -> None:
    """In a worker process: exit at once (within 0.2 s) when ``parent``, the process that started it, is gone,
    even killed by SIGKILL, so that no worker trains on (or writes) for nobody; torch uses ``threads`` threads.
    tqdm gets a thread lock (a worker shows no bars): its default lock is a named semaphore, reported as leaked
    when a worker is terminated."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    set_worker_threads(threads)
    tqdm.set_lock(threading.RLock())
    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _in_workers(
    jobs: int, specs: list[RunSpec], root: Path, device: str, allow_diverged: bool, progress: bool
) -> dict[str, str]:
    """Every spec trained in ``jobs`` spawned worker processes that never outlive this one: each exits when this
    process is gone (:func:`_worker_setup`); each starts with SIGINT ignored (spawned while it is), so a
    Ctrl-C reaches a worker only inside train's loop, which saves a checkpoint and stops, never as a traceback
    while it imports; and when this process stops waiting (Ctrl-C, an error) the queued runs are cancelled and
    the workers stopped (:func:`_stop_workers`: SIGTERM, a checkpoint inside the loop, an immediate end outside
    it; SIGKILL for one still there after ``STOP_GRACE`` seconds); a worker that
    ends abruptly (killed, out of memory) stops the others too, with a ResourceError saying to rerun. Each worker
    trains with ``usable_cores() // jobs`` torch threads (at least one), so the workers never oversubscribe
    the cores."""
    before = set(multiprocessing.active_children())
    context = multiprocessing.get_context("spawn")  # CUDA cannot be used in forked children
    threads = max(usable_cores() // jobs, 1)
    with ProcessPoolExecutor(jobs, context, initializer=_worker_setup, initargs=(os.getpid(), threads)) as pool:

        def in_pool(todo: list[RunSpec], if_busy: str) -> dict[str, str]:
            with sigint_ignored():
                submitted = _submit(pool, todo, root, device, allow_diverged, if_busy)
            return _collect(submitted, len(todo), progress)

        try:
            return _passes(in_pool, specs)
        except BaseException as err:
            _stop_workers(set(multiprocessing.active_children()) - before)
            pool.shutdown(wait=True, cancel_futures=True)
            if isinstance(err, BrokenProcessPool):
                raise ResourceError(
                    "a worker process ended abruptly while training (killed, or out of memory); the others were "
                    "stopped. Rerun the same command: finished runs are skipped, interrupted ones resume"
                ) from None
            raise


def _stop_workers(workers: set) -> None:
    """Stop the workers: ``SELF_STOP`` seconds for those a Ctrl-C reached too (they checkpoint and end by
    themselves), then SIGTERM for the rest (inside train's loop: a checkpoint, then the end), ``STOP_GRACE``
    seconds, and SIGKILL for any still there. A worker SIGTERM reaches outside the loop ends at once, perhaps
    holding the lock of the pool's result queue, on which another would then block for ever (its checkpoint
    already written): hence the SIGTERM only when needed, and the SIGKILL."""
    for wait, stop in ((SELF_STOP, "terminate"), (STOP_GRACE, "kill")):
        deadline = time.monotonic() + wait
        for worker in workers:
            worker.join(max(deadline - time.monotonic(), 0.0))
        for worker in workers:
            if worker.is_alive():
                getattr(worker, stop)()
    for worker in workers:
        worker.join()


def _submit(
    executor: Executor, specs: list[RunSpec], root: Path, device: str, allow_diverged: bool, if_busy: str
) -> list[tuple[str, Any]]:
    """``[(run_id, handle)]``: every spec submitted to ``executor``, its run dir as an absolute path (a Ray
    worker or a cluster job starts in a folder of its own)."""
    submitted = []
    for spec in specs:
        out = str((root / spec.run_id).absolute())
        submitted.append((spec.run_id, executor.submit(train_run, list(spec.overrides), out, device, allow_diverged,
                                                       False, if_busy)))  # fmt: skip
    return submitted


def _submit_all(
    executor: Executor,
    specs: list[RunSpec],
    root: Path,
    device: str,
    allow_diverged: bool,
    progress: bool,
    if_busy: str = "wait",
) -> dict[str, str]:
    """Submit every spec, wait for all; ``{run_id: outcome}``."""
    return _collect(_submit(executor, specs, root, device, allow_diverged, if_busy), len(specs), progress)


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
            print(f"[{done}/{total}] {run_id} {_outcome_text(outcomes[run_id])}", flush=True)
    return outcomes


def train_run(
    overrides: list[str],
    out: str,
    device: str,
    allow_diverged: bool,
    progress: bool = False,
    if_busy: str = "wait",
) -> str:
    """Train one run dir (what ``iclab train *overrides --out out --wait`` does); "done", "already done" (found
    finished, nothing trained) or (with ``allow_diverged``) the divergence message. Another process writing
    ``out``: wait for it (``if_busy="wait"``), then skip the run it finished or resume what it left, or
    (``"skip"``) return "busy" at once. Without progress bars (a worker process) torch uses the worker's share
    of the cores (:func:`set_worker_threads`, one thread unless set)."""
    if not progress:
        torch.set_num_threads(_worker_threads)
    run_dir = Path(out)
    summary = read_json(run_dir / SUMMARY_FILE) if (run_dir / SUMMARY_FILE).exists() else {}
    if allow_diverged and summary.get("status") == "diverged":
        return str(summary.get("message"))
    if if_busy == "skip" and summary.get("status") != "finished" and _written_elsewhere(run_dir):
        return BUSY
    said: list[str] = []
    try:
        train(parse_config({}, overrides), run_dir, device=device, progress=progress, log=said.append, wait=True)
    except TrainingDiverged as err:
        if not allow_diverged:
            raise
        return str(err)
    return ALREADY_DONE if any(line.startswith("already done") for line in said) else DONE  # train's own words


def _written_elsewhere(run_dir: Path) -> bool:
    """Whether another process holds the lock of ``run_dir`` (or it cannot be taken: train then says why)."""
    if not run_dir.is_dir():
        return False
    try:
        with locked_run_dir(run_dir, wait=False, log=lambda _: None):
            return False
    except RunDirError:
        return True


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


def next_example_overrides(
    steps: int, batch_size: int, lr: float, schedule: str, warmup_steps: int, evaluations: int = 10
) -> list[str]:
    """Garg et al.'s training of a GPT-2: the loss of each next example's label from the ones before it, Adam
    with warm-up and ``schedule`` (train.lr_schedule); 100 metrics rows, 10 checkpoints and ``evaluations``
    held-out evaluations (1000 prompts) per run."""
    return [
        f"train.steps={steps}",
        f"train.batch_size={batch_size}",
        f"train.lr={lr}",
        f"train.lr_schedule={schedule}",
        f"train.warmup_steps={warmup_steps}",
        "train.objective=next_example",
        f"train.log_every={max(steps // 100, 1)}",
        f"train.checkpoint_every={max(steps // 10, 1)}",
        f"eval.every={max(steps // evaluations, 1)}",
        "eval.batch_size=1000",
    ]

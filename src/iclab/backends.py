"""Where the runs of a sweep or a reproduction train: a local process pool (default), Ray, or Slurm through
submitit. A backend only decides where ``train_run`` executes (:func:`iclab.experiments.grid.execute` is the
seam): the local pool is execute's own worker pool, Ray and submitit are adapters with the executor protocol
(``submit(fn, *args)`` returning a handle with ``.result()``).

Every run is an ordinary run dir holding its lock while it is written, so any mix of processes, Ray workers
and cluster jobs may work on one folder: none trains a run twice, and a run whose worker was killed is resumed
by the next one from its checkpoint. ray and submitit are extras (``pip install 'iclab[ray]'``,
``'iclab[slurm]'``), imported only when their backend is asked for.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from iclab.errors import UsageError, UserError
from iclab.experiments.grid import Executor, set_worker_threads, usable_cores
from iclab.validate import check_flag

BACKENDS = ("local", "ray", "slurm")


class BackendError(UserError):
    """A run that failed where it ran (a Ray worker, a cluster job): one line with its error and where its log is."""


@dataclass(frozen=True)
class BackendOptions:
    """Where runs train and with what.

    ``workers``: local, the worker processes (default: the usable cores, at most one per run to train; one
    trains in this process); ray, the CPUs of the local Ray instance started here (default: the usable cores;
    a cluster given by ``ray_address`` has its own); slurm, the array jobs running at once (default: no limit).
    ``cpus_per_run`` (ray, slurm): cores (and torch threads) per run; ``gpus_per_run`` (ray: a fraction shares
    a GPU; slurm: a whole number). ``ray_address``: an existing Ray cluster ("auto", "ray://host:10001");
    default a local ``ray.init()``. ``partition``, ``time_min`` (minutes a job may run), ``slurm_local``:
    submitit's local executor instead of Slurm (jobs run as processes on this machine: to try a sweep, and in
    the tests)."""

    name: str = "local"
    workers: int | None = None
    cpus_per_run: int = 1
    gpus_per_run: float = 0.0
    ray_address: str | None = None
    partition: str | None = None
    time_min: int = 60
    slurm_local: bool = False

    def check(self) -> None:
        """UsageError (one line naming the flag) for a value out of range or a flag of another backend."""
        if self.name not in BACKENDS:
            raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.name!r}")
        if self.workers is not None:
            check_flag("--workers", self.workers, ge=1, integer=True)
        check_flag("--cpus-per-run", self.cpus_per_run, ge=1, integer=True)
        check_flag("--gpus-per-run", self.gpus_per_run, ge=0)
        check_flag("--time", self.time_min, ge=1, integer=True)
        foreign = {
            "--cpus-per-run": self.cpus_per_run != 1 and self.name == "local",
            "--gpus-per-run": self.gpus_per_run != 0 and self.name == "local",
            "--ray-address": self.ray_address is not None and self.name != "ray",
            "--partition": self.partition is not None and self.name != "slurm",
            "--time": self.time_min != 60 and self.name != "slurm",
            "--slurm-local": self.slurm_local and self.name != "slurm",
        }
        for flag, given in foreign.items():
            if given:
                owner = {"--ray-address": "ray", "--cpus-per-run": "ray or slurm", "--gpus-per-run": "ray or slurm"}
                raise UsageError(f"{flag} is a flag of --backend {owner.get(flag, 'slurm')}, not {self.name}")
        if self.name == "slurm" and self.gpus_per_run != int(self.gpus_per_run):
            raise UsageError(f"--gpus-per-run must be a whole number on Slurm, got {self.gpus_per_run:g}")
        if self.name == "ray" and importlib.util.find_spec("ray") is None:
            _import_ray()  # the one-line message naming the extra
        if self.name == "slurm" and importlib.util.find_spec("submitit") is None:
            _import_submitit()
        if self.name == "slurm" and not self.slurm_local and shutil.which("sbatch") is None:
            raise UsageError(
                "--backend slurm: no Slurm here (sbatch not found); submit from a cluster's login node, or use "
                "--backend local or ray (--slurm-local runs the jobs on this machine)"
            )

    def describe(self, jobs: int) -> str:
        """A few words for the progress line: the backend and its parallelism."""
        if self.name == "local":
            return "this process" if jobs == 1 else f"a local pool of {jobs} workers"
        if self.name == "ray":
            return f"Ray ({self.ray_address or 'local'}, {self.cpus_per_run} CPU a run)"
        return "submitit's local executor" if self.slurm_local else f"Slurm ({self.partition or 'default partition'})"


@contextmanager
def open_backend(options: BackendOptions, folder: Path, runs: int) -> Iterator[tuple[Executor | None, int]]:
    """``(executor, jobs)`` for :func:`iclab.experiments.grid.execute` while the context lasts: local is
    ``(None, workers)`` (execute's own pool), Ray and Slurm an adapter. ``folder`` keeps submitit's job files
    and logs; ``runs`` is the number of runs to train (the local pool starts no more workers than that).
    Leaving the context early (an error, Ctrl-C) cancels what is still queued or running; a Ray instance
    started here is shut down."""
    options.check()
    if options.name == "local":
        yield None, max(min(options.workers or usable_cores(), runs), 1)
    elif options.name == "ray":
        with _ray_executor(options) as executor:
            yield executor, 1
    else:
        executor = SubmititExecutor(options, Path(folder))
        try:
            yield executor, 1
        except BaseException:
            executor.cancel()
            raise


def _with_threads(threads: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a Ray worker or a cluster job, torch on ``threads`` threads."""
    set_worker_threads(threads)
    return fn(*args, **kwargs)


# --------------------------------------------------------------------------- Ray


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("the ray backend needs the ray extra: pip install 'iclab[ray]'") from None
    return ray


class RayExecutor:
    """Each submitted call is a Ray task with ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs; its handle is a
    concurrent.futures Future whose error is the task's own (a RunDirError stays a RunDirError)."""

    def __init__(self, cpus_per_run: int = 1, gpus_per_run: float = 0.0) -> None:
        ray = _import_ray()
        self._ray = ray
        self._threads = cpus_per_run
        self._remote = ray.remote(_with_threads).options(num_cpus=cpus_per_run, num_gpus=gpus_per_run)
        self._refs: list[Any] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        ref = self._remote.remote(self._threads, fn, *args, **kwargs)
        self._refs.append(ref)
        return _unwrapped(ref.future(), self._ray.exceptions.RayTaskError)

    def cancel(self) -> None:
        """Stop every task still queued or running (a killed run resumes from its checkpoint next time)."""
        for ref in self._refs:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 (finished, or the cluster is gone: nothing to stop)
                pass


def _unwrapped(inner: Future, wrapper: type[BaseException]) -> Future:
    """A Future with ``inner``'s result, or the error a task raised rather than Ray's wrapper around it."""
    outer: Future = Future()

    def copy(done: Future) -> None:
        error = done.exception()
        if error is None:
            outer.set_result(done.result())
        else:
            cause = getattr(error, "cause", None) if isinstance(error, wrapper) else None
            outer.set_exception(cause if isinstance(cause, BaseException) else error)

    inner.add_done_callback(copy)
    return outer


@contextmanager
def _ray_executor(options: BackendOptions) -> Iterator[RayExecutor]:
    """Ray connected (``ray.init`` here unless already initialised: a local instance with ``workers`` CPUs, or
    the cluster at ``ray_address``), a :class:`RayExecutor`; on leaving, its tasks cancelled if the context
    ended early and Ray shut down if it was started here."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        settings: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
        if options.ray_address is None:
            settings["num_cpus"] = options.workers or usable_cores()
        try:
            ray.init(address=options.ray_address, **settings)
        except (ConnectionError, ValueError, RuntimeError) as err:
            raise UsageError(f"--ray-address {options.ray_address}: cannot connect ({err})") from None
    executor = RayExecutor(options.cpus_per_run, options.gpus_per_run)
    try:
        yield executor
    except BaseException:
        executor.cancel()
        raise
    finally:
        if started:
            ray.shutdown()


# --------------------------------------------------------------------------- Slurm through submitit


def _import_submitit() -> Any:
    try:
        import submitit
    except ImportError:
        raise UsageError("the slurm backend needs the slurm extra: pip install 'iclab[slurm]'") from None
    return submitit


class SubmititExecutor:
    """Submitted calls are queued and go out together as one Slurm array job when the first result is asked
    for (``executor.batch()``); each job runs one call with ``cpus_per_run`` cores (its torch threads) and
    ``gpus_per_run`` GPUs, for at most ``time_min`` minutes. Job files and logs go to ``folder``. A job that
    fails raises :class:`BackendError` with the last line of its error and its log's path."""

    def __init__(self, options: BackendOptions, folder: Path) -> None:
        submitit = _import_submitit()
        self._executor = submitit.AutoExecutor(folder=folder, cluster="local" if options.slurm_local else "slurm")
        parameters: dict[str, Any] = {
            "name": "iclab",
            "timeout_min": options.time_min,
            "cpus_per_task": options.cpus_per_run,
            "gpus_per_node": int(options.gpus_per_run),
        }
        if not options.slurm_local:
            parameters["slurm_partition"] = options.partition
            if options.workers is not None:
                parameters["slurm_array_parallelism"] = options.workers
        self._executor.update_parameters(**{key: value for key, value in parameters.items() if value is not None})
        self._threads = options.cpus_per_run
        self._queued: list[tuple[_Job, Callable[..., Any], tuple, dict]] = []
        self.jobs: list[Any] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> _Job:
        handle = _Job(self)
        self._queued.append((handle, fn, args, kwargs))
        return handle

    def flush(self) -> None:
        """Submit everything queued as one batch (an array job on Slurm)."""
        queued, self._queued = self._queued, []
        if not queued:
            return
        with self._executor.batch():
            jobs = [self._executor.submit(_with_threads, self._threads, fn, *args, **kwargs)
                    for _, fn, args, kwargs in queued]  # fmt: skip
        for (handle, *_), job in zip(queued, jobs, strict=True):
            handle.job = job
        self.jobs += jobs

    def cancel(self) -> None:
        """Cancel the jobs not yet done (a cancelled run resumes from its checkpoint next time)."""
        self._queued = []
        for job in self.jobs:
            try:
                if not job.done():
                    job.cancel(check=False)
            except Exception:  # noqa: BLE001 (already gone: nothing to cancel)
                pass


class _Job:
    """The handle of a queued submitit call: asking for its result submits the queue first."""

    def __init__(self, owner: SubmititExecutor) -> None:
        self._owner = owner
        self.job: Any = None

    def result(self) -> Any:
        if self.job is None:
            self._owner.flush()
        try:
            return self.job.result()
        except _import_submitit().core.utils.UncompletedJobError as err:
            lines = [line for line in str(err).splitlines() if line.strip()]
            reason = lines[-1].strip() if lines else type(err).__name__
            raise BackendError(f"job {self.job.job_id} failed: {reason} (log: {self.job.paths.stderr})") from None

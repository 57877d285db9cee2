"""Memory a request needs, measured before anything is allocated, against what the machine has free.

:func:`training_memory` runs what a training run holds at its peak on PyTorch's ``meta`` device, where tensors
have shapes but no data, so nothing is allocated: the task's fixed parts, the model, the held-out set, one
training step (forward and backward), an evaluation chunk and the final evaluation (streamed: one chunk of
prompts and a float64 loss per prompt). A dispatch mode adds up the bytes of the tensor storages alive at each
moment, so the peak is measured for any task or model family, not guessed per family; AdamW's two moments and
the copies a checkpoint makes are added to it (they are made outside the traced code). What it does not see
(glibc's heap, the CPU kernels' work space) puts real peaks at 1.0–1.7 times the estimate for LSA runs of a
few hundred MiB (tests/test_hardening.py checks a factor of 2.5), more where a loop over context prefixes
fragments the heap (train.objective=all_prefixes or next_example with a model that has no one-pass
predict_prefixes: 2.4 times the live tensors, which the estimate of such a training step includes). A model
with more than 16 layers is traced at 8 and 16 layers and the peak of each phase extrapolated (each grows
linearly with depth, a training step faster than an evaluation that streams its layers; tracing 10⁵ layers
would take minutes). :func:`check_memory` refuses a request above the free memory of the
device: on a CPU the smallest of the memory the kernel reports available, the cgroup's limit and the
address-space limit (``ulimit -v``); on a GPU its free memory.
"""

from __future__ import annotations

import inspect
import os
import resource
import weakref
from pathlib import Path
from typing import Any, get_args

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from iclab.config import Config, TaskConfig
from iclab.errors import ResourceError

TRACED_LAYERS = 16  # deeper models are traced at 8 and 16 layers and extrapolated
STEP_PHASE = "a training step"
PREFIX_OBJECTIVES = ("all_prefixes", "next_example")  # objectives that call predict_prefixes
PREFIX_LOOP_HEAP = 2.4  # measured RSS / live tensors of a training step looping over prefixes (glibc's heap)


class _LiveBytes(TorchDispatchMode):
    """While active: the bytes of every tensor storage created and still alive (``live``) and their peak, with
    the phase (a label the caller sets) in which the peak was reached, and the peak of each phase."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self.phase = self.peak_phase = ""
        self.phase_peaks: dict[str, int] = {}
        self.prefix_loop = False  # the model's predict_prefixes is the default loop over prefixes
        self._seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                storage = value.untyped_storage()
                if storage not in self._seen:
                    self._seen[storage] = size = storage.nbytes()
                    weakref.finalize(storage, self._release, size)
                    self.hold(size)
        return out

    def hold(self, size: int) -> None:
        """Count ``size`` more bytes as alive from now on."""
        self.live += size
        self.spike(0)

    def spike(self, size: int) -> None:
        """Count ``size`` bytes alive for a moment (copies made outside the traced code)."""
        self.phase_peaks[self.phase] = max(self.phase_peaks.get(self.phase, 0), self.live + size)
        if self.live + size > self.peak:
            self.peak, self.peak_phase = self.live + size, self.phase

    def _release(self, size: int) -> None:
        self.live -= size


def _size_text(size: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size / 2**10:.1f} KiB"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_free() -> int | None:
    """The memory this process's cgroup (v2) may still use, or None without a limit."""
    try:
        line = next(line for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::"))
    except (OSError, StopIteration):
        return None
    folder = Path("/sys/fs/cgroup") / line[3:].lstrip("/")
    limit, used = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
    return None if limit is None or used is None else limit - used


def available_memory(device: str = "cpu") -> int:
    """Bytes a new allocation can take on ``device``: a GPU's free memory; on the CPU the smallest of the
    memory the kernel reports available, the cgroup's remaining limit and the address space left under
    ``ulimit -v``."""
    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    page = os.sysconf("SC_PAGE_SIZE")
    free = [page * os.sysconf("SC_AVPHYS_PAGES")]
    try:
        meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        free = [int(meminfo["MemAvailable"].split()[0]) * 1024]
    except (OSError, KeyError, ValueError):
        pass
    cgroup = _cgroup_free()
    if cgroup is not None:
        free.append(cgroup)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        in_use = int(Path("/proc/self/statm").read_text().split()[0]) * page
        free.append(soft - in_use)
    return max(min(free), 0)


def check_memory(needed: int, what: str, lower: str, device: str = "cpu") -> None:
    """Raise ResourceError (one line: the estimate, what is free, what to lower) when ``what`` needs more than
    ``device`` has free."""
    free = available_memory(device)
    if needed > free:
        raise ResourceError(
            f"{what} needs about {_size_text(needed)} of memory, {_size_text(free)} is free on {device}; lower {lower}"
        )


def prompt_bytes(task: TaskConfig, count: int, itemsize: int) -> int:
    """At least what ``count`` prompts of ``task`` take: xs, ys, xq and yq."""
    return count * (task.n + task.n_queries) * (task.d + 1) * itemsize


def _model_keys(cfg: Config) -> list[str]:
    """The model's integer size keys, as dotted keys (e.g. model.layers, model.heads)."""
    fields = type(cfg.model).model_fields
    return [f"model.{name}" for name, field in fields.items() if int in (field.annotation, *get_args(field.annotation))]


def _traced_peak(cfg: Config, objective: Any) -> _LiveBytes:
    """The peak bytes of one training run of ``cfg``, traced on the meta device (see the module docstring)."""
    from iclab.evaluate import query_loss
    from iclab.learners import from_model
    from iclab.models import InContextModel, build_model
    from iclab.seeding import make_generator
    from iclab.tasks import make_task
    from iclab.train import DTYPES

    chunk = inspect.signature(query_loss).parameters["chunk_size"].default
    dtype = DTYPES[cfg.train.dtype]
    generator = make_generator(cfg.seed, "train")
    with torch.device("meta"), _LiveBytes() as live:
        live.phase = "the model"
        task = make_task(cfg.task, cfg.seed)
        model = build_model(cfg.model, task, make_generator(cfg.seed, "init")).to(dtype=dtype)
        live.prefix_loop = type(model).predict_prefixes is InContextModel.predict_prefixes
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        live.hold(2 * params)  # AdamW's two moments
        live.phase = "the held-out set"
        heldout = task.sample(cfg.eval.batch_size, generator, dtype=dtype)
        live.phase = STEP_PHASE
        batch = task.sample(cfg.train.batch_size, generator, dtype=dtype)
        objective(model, batch).backward()
        live.phase = "a checkpoint"
        live.spike(10 * params)  # weights and moments: serialised, taken out, put behind the checksum; model file
        live.phase = "the evaluation"
        from_model(model).predict(*_inputs(heldout.slice(0, chunk)))
        live.phase = "the final evaluation"  # streamed: one chunk of prompts and a float64 loss per prompt
        live.hold(8 * cfg.eval.batch_size)
        final = task.sample(min(chunk, cfg.eval.batch_size), generator, dtype=dtype)
        from_model(model).predict(*_inputs(final))
    return live


def _inputs(prompts: Any) -> tuple:
    return prompts.xs, prompts.ys, prompts.xq, prompts.descriptor


def training_memory(cfg: Config, objective: Any = None) -> tuple[int, str]:
    """(peak bytes of a training run of ``cfg``, the phase that reaches it), nothing allocated."""
    from iclab.objectives import OBJECTIVES

    objective = OBJECTIVES[cfg.train.objective] if objective is None else objective
    layers = getattr(cfg.model, "layers", None)
    try:
        if isinstance(layers, int) and layers > TRACED_LAYERS:
            half, traced = (
                _traced_peak(cfg.model_copy(update={"model": cfg.model.with_changes(layers=depth)}), objective)
                for depth in (TRACED_LAYERS // 2, TRACED_LAYERS)
            )
            # Each phase's peak grows linearly with depth at its own rate (a training step's saved activations
            # do, an evaluation's streamed layers need not): extrapolate each, then take the largest.
            extra = (layers - TRACED_LAYERS) / (TRACED_LAYERS - TRACED_LAYERS // 2)
            peak, phase = max(
                (int(full + extra * max(full - half.phase_peaks.get(name, 0), 0)), name)
                for name, full in traced.phase_peaks.items()
            )
        else:
            traced = _traced_peak(cfg, objective)
            peak, phase = traced.peak, traced.peak_phase
    except (RuntimeError, TypeError) as err:
        if "verflow" not in str(err):  # only sizes beyond 64-bit counts are a user's error
            raise
        return 2**63, "the model or the prompts (their sizes overflow 64-bit counts)"
    looped = traced.prefix_loop and cfg.train.objective in PREFIX_OBJECTIVES and phase == STEP_PHASE
    return (int(peak * PREFIX_LOOP_HEAP) if looped else peak), phase


def check_training_memory(cfg: Config, device: str = "cpu", objective: Any = None) -> None:
    """ResourceError when a training run of ``cfg`` needs more memory than ``device`` has free; the prompts are
    counted first, so that a huge request is refused without tracing it."""
    dtype_size = 8 if cfg.train.dtype == "float64" else 4
    model_keys = "/".join(_model_keys(cfg)) or "the model's size"
    lower = f"train.batch_size, eval.batch_size, task.n, task.n_queries, task.d or {model_keys}"
    floor = prompt_bytes(cfg.task, cfg.train.batch_size + cfg.eval.batch_size, dtype_size)
    check_memory(floor, "this run's prompts", lower, device)
    needed, phase = training_memory(cfg, objective)
    check_memory(needed, f"this run ({phase} at its peak)", lower, device)


def probe_memory(cfg: Config, prompts: int, fit_prompts: int, queries: int, prefixes: int, iterations: int) -> int:
    """What ``iclab probe`` holds at most on the run of ``cfg``: its float64 prompts (``prompts`` matched,
    ``fit_prompts`` for the linear probes, ``queries`` each), every layer's read-out after each of the
    ``prefixes`` compared context lengths, each layer's query states as probe features (three copies while a
    probe is fitted), and the candidate paths (up to five iterative families, each over its grid of
    hyper-parameter values and every iteration count 0..``iterations``), with the full-context path of one
    family, the iterates and the Gram blocks of functional GD while they are made. The model's depth and width
    are read from it, built on the meta device."""
    from iclab.models import build_model
    from iclab.probe.candidates import GRID_POINTS
    from iclab.seeding import make_generator
    from iclab.tasks import make_task

    task_cfg = cfg.task.with_changes(n_queries=1)
    with torch.device("meta"):
        task = make_task(task_cfg, cfg.seed)
        model = build_model(cfg.model, task, make_generator(cfg.seed, "init"))
        states = model.layer_states(*_inputs(task.sample(1, make_generator(cfg.seed, "probe"))))
    layers, width = len(states), states[-1].shape[-1]
    n, d = task_cfg.n, task_cfg.d
    with_queries = task_cfg.with_changes(n_queries=queries)
    samples = prompt_bytes(with_queries, prompts + fit_prompts, 8)
    readouts = layers * prompts * prefixes * queries * 8
    features = 3 * layers * fit_prompts * queries * (width + 1) * 8
    path = GRID_POINTS * (iterations + 1) * prompts * queries * 8
    iterates = (iterations + 1) * prompts * n * d * 8
    gram = prompts * n * n * (n + queries) * 8
    return samples + readouts + features + 5 * path * prefixes + path * n + iterates + gram

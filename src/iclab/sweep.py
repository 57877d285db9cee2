"""Sweeps: ``iclab sweep [key=value …] --grid key=v1,v2 [--seeds N] --out DIR``.

A sweep is a list of configs: the base overrides, every combination of the grid's values (in the order the
keys are given, the last key varying fastest) and, with ``seeds = N``, N seeds each (``seed`` = the base seed,
0 unless set, plus 0..N-1; the seed varies fastest). A run's id is a hash of its whole resolved config
(:func:`config_id`), so the same config is one run whatever the order or spelling of its overrides, and its run
dir is ``DIR/<run-id>/``, an ordinary run dir: finished runs are skipped, interrupted ones resume from their
checkpoint, and a run dir is written by one process at a time (its lock), so reruns and concurrent sweeps on
one DIR only do what is missing. ``DIR/results.csv`` has one row per run of the sweep, in plan order (see
:mod:`iclab.results`). Where the runs train is a backend (:mod:`iclab.backends`). A config with
``train.ensemble = E > 1`` stands for its E members (:func:`iclab.ensemble.member_configs`: seed + i, its own
learning rate): each is a run of the sweep, with the id of its own config, trained alone by the backend (equal
to what the batched ensemble gives it, to float rounding).

A sweep file (``--sweep FILE``, YAML) holds the same three parts::

    base:                 # a mapping (nested or dotted keys) or a list of key=value
      task: {d: 2}
      train.steps: 200
    grid:                 # key: list of values (a value may itself be a list, e.g. task.x_cov_diag)
      task.n: [4, 8, 16]
      train.lr: [0.01, 0.001]
    seeds: 3

Overrides, ``--grid`` and ``--seeds`` on the command line are added to the file's and win where both say (an
override of a key the file sweeps fixes it); a grid key replaces the base's value of that key.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from iclab.backends import BackendOptions, open_backend
from iclab.config import (
    MAX_CONFIG_BYTES,
    Config,
    ConfigError,
    config_to_dict,
    flat_keys,
    parse_config,
    parse_overrides,
    read_yaml,
)
from iclab.errors import UsageError
from iclab.experiments.grid import ALREADY_DONE, DONE, RunSpec, run_plan
from iclab.results import RESULTS_FILE, results_table, write_results
from iclab.rundir import SUMMARY_FILE, RunDirError, check_writable_folder, read_json

RUN_ID_LENGTH = 12  # hex digits of the config's SHA-256: 48 bits, no collision in any sweep's lifetime
MAX_RUNS = 10_000  # runs one sweep may plan
SWEEP_FILE_KEYS = ("base", "grid", "seeds")

__all__ = ["SweepOutcome", "SweepRun", "SweepSpec", "config_id", "parse_grid", "plan_sweep", "read_sweep_file",
           "run_sweep"]  # fmt: skip


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its id, the ``iclab train`` overrides that make its config, and the config."""

    run_id: str
    overrides: tuple[str, ...]
    config: Config


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep is made of: base ``key=value`` overrides, the grid ``{key: [value text, …]}`` and the number
    of seeds (None: the base seed only)."""

    base: tuple[str, ...] = ()
    grid: dict[str, list[str]] = field(default_factory=dict)
    seeds: int | None = None

    def merged(self, other: SweepSpec) -> SweepSpec:
        """This spec with ``other``'s overrides, grid keys and seeds added, ``other`` winning where both say (a
        key ``other`` overrides is no longer swept here)."""
        added = parse_overrides(list(other.base))
        base = {**parse_overrides(list(self.base)), **added}
        grid = {key: values for key, values in self.grid.items() if key not in added}
        return SweepSpec(
            tuple(f"{key}={value}" for key, value in base.items()),
            {**grid, **other.grid},
            other.seeds if other.seeds is not None else self.seeds,
        )


def config_id(cfg: Config) -> str:
    """The run id of ``cfg``: the first 12 hex digits of the SHA-256 of its resolved config as canonical JSON
    (every key, sorted, no spaces). Equal configs, however they were spelled, have the same id."""
    text = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:RUN_ID_LENGTH]


def override_text(value: Any) -> str:
    """A YAML value as the text of a ``key=value`` override (lists joined by commas, none, true/false)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return ",".join(override_text(item) for item in value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        raise UsageError(f"a sweep value must be a number, a word or a list, got the mapping {value!r}")
    return str(value)


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["task.n=4,8", "train.lr=0.01,0.001"]`` → ``{"task.n": ["4", "8"], …}``; UsageError (one line) for an
    item that is not key=v1,v2,…, an empty value or a key given twice."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        parts = [part.strip() for part in values.split(",")]
        if not sep or not key or not all(parts):
            raise UsageError(f"--grid must look like key=v1,v2,… (e.g. task.n=4,8,16), got {item!r}")
        if key in grid:
            raise UsageError(f"--grid {key} is given twice; give its values once (key=v1,v2,…)")
        grid[key] = parts
    return grid


def read_sweep_file(path: Path) -> SweepSpec:
    """The sweep in the YAML file ``path`` (see the module's docstring); UsageError naming the file and the
    problem for anything else."""
    path = Path(path)
    what = f"--sweep {path}"
    if not path.is_file():
        reason = "a folder" if path.is_dir() else "not found"
        raise UsageError(f"--sweep must name a YAML file, got {str(path)!r} ({reason})")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
        text = data.decode("utf-8")
    except OSError as err:
        raise UsageError(f"{what} cannot be read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{what} is not UTF-8 text; save it as UTF-8") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UsageError(f"{what} is larger than {MAX_CONFIG_BYTES >> 20} MiB; a sweep file is YAML text")
    try:
        document = read_yaml(text)
    except ConfigError as err:
        raise UsageError(f"{what}: {err}") from None
    except yaml.YAMLError as err:
        raise UsageError(f"{what} is not valid YAML: {str(err).splitlines()[0]}") from None
    document = {} if document is None else document
    if not isinstance(document, dict) or any(key not in SWEEP_FILE_KEYS for key in document):
        found = ", ".join(map(str, document)) if isinstance(document, dict) else type(document).__name__
        raise UsageError(f"{what} must be a mapping with keys {', '.join(SWEEP_FILE_KEYS)}; got {found}")
    base = document.get("base") or {}
    if isinstance(base, list) and all(isinstance(item, str) for item in base):
        base_items = [item.strip() for item in base]
    elif isinstance(base, dict):
        base_items = [f"{key}={override_text(value)}" for key, value in flat_keys(base).items()]
    else:
        raise UsageError(f"{what}: base must be a mapping of keys or a list of key=value, got {base!r}")
    grid = document.get("grid") or {}
    if not isinstance(grid, dict):
        raise UsageError(f"{what}: grid must be a mapping of key: [values], got {grid!r}")
    values = {}
    for key, listed in flat_keys(grid).items():
        listed = listed if isinstance(listed, list) else [listed]
        if not listed:
            raise UsageError(f"{what}: grid {key} has no values")
        values[key] = [override_text(value) for value in listed]
    seeds = document.get("seeds")
    if seeds is not None:
        _check_seeds(seeds, f"{what}: seeds")
    try:
        parse_overrides(base_items)
    except ConfigError as err:
        raise UsageError(f"{what}: base: {err}") from None
    return SweepSpec(tuple(base_items), values, seeds)


def _check_seeds(seeds: object, name: str) -> int:
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_RUNS:
        raise UsageError(f"{name} must be an integer from 1 to {MAX_RUNS}, got {seeds!r}")
    return seeds


def plan_sweep(spec: SweepSpec) -> list[SweepRun]:
    """Every run of ``spec`` in plan order (grid keys in order, the last varying fastest, then the seeds), each
    config validated (a ConfigError names the key); runs with equal configs are listed once."""
    base = parse_overrides(list(spec.base))
    if spec.seeds is not None:
        _check_seeds(spec.seeds, "--seeds")
        if "seed" in spec.grid:
            raise UsageError("seed is both a --grid key and set by --seeds; give one of them")
    count = math.prod(len(values) for values in spec.grid.values()) * (spec.seeds or 1)
    if count > MAX_RUNS:
        raise UsageError(f"the sweep has {count} runs, at most {MAX_RUNS} are allowed: use fewer --grid values")
    seeds: list[str | None] = [None]
    if spec.seeds is not None:
        first = base.get("seed", "0").strip()
        if not first.isdigit():
            raise ConfigError(f"seed must be an integer >= 0, got {first!r}")
        seeds = [str(int(first) + i) for i in range(spec.seeds)]
    fixed = {key: value for key, value in base.items() if key not in spec.grid}
    runs: dict[str, SweepRun] = {}
    for point in itertools.product(*spec.grid.values()):
        for seed in seeds:
            items = {**fixed, **dict(zip(spec.grid, point, strict=True))}
            if seed is not None:
                items["seed"] = seed
            overrides = tuple(f"{key}={value}" for key, value in items.items())
            for member_overrides, cfg in _members(overrides, parse_config({}, list(overrides))):
                run_id = config_id(cfg)
                runs.setdefault(run_id, SweepRun(run_id, member_overrides, cfg))
    return list(runs.values())


ENSEMBLE_KEYS = ("seed", "train.lr", "train.ensemble", "train.ensemble_lrs")  # what a member's overrides set anew


def _members(overrides: tuple[str, ...], cfg: Config) -> list[tuple[tuple[str, ...], Config]]:
    """An ensemble's config (train.ensemble = E > 1) as the runs of its E members (:func:`iclab.ensemble.
    member_configs`: each an ordinary run, its overrides with its own seed and learning rate); any other config
    as its own run."""
    if cfg.train.ensemble == 1:
        return [(overrides, cfg)]
    from iclab.ensemble import member_configs

    kept = tuple(item for item in overrides if item.partition("=")[0].strip() not in ENSEMBLE_KEYS)
    return [((*kept, f"seed={member.seed}", f"train.lr={member.train.lr!r}"), member)
            for member in member_configs(cfg)]  # fmt: skip


def train_commands(runs: list[SweepRun], out: Path) -> list[str]:
    """One ``iclab train … --out DIR/<run-id> --quiet`` command per run, for any scheduler."""
    return [shlex.join(["iclab", "train", *run.overrides, "--out", str(Path(out) / run.run_id), "--quiet"])
            for run in runs]  # fmt: skip


@dataclass(frozen=True)
class SweepOutcome:
    """What a sweep did: ``outcomes`` ``{run_id: "done" | "already done" | divergence message}`` ("done": trained
    here; "already done": found finished, by an earlier sweep or another process) and the results ``table``
    written to ``DIR/results.csv``."""

    outcomes: dict[str, str]
    table: pd.DataFrame

    @property
    def trained(self) -> list[str]:
        return [run_id for run_id, outcome in self.outcomes.items() if outcome == DONE]

    @property
    def skipped(self) -> list[str]:
        return [run_id for run_id, outcome in self.outcomes.items() if outcome == ALREADY_DONE]

    @property
    def diverged(self) -> list[str]:
        """The runs that diverged, now or before."""
        return list(self.table.loc[self.table["status"] == "diverged", "run_id"])


def _ended(run_dir: Path) -> str | None:
    """The outcome of a run dir that says it ended: "already done" if finished, its message if diverged; None
    for anything else (its files are verified when the results are read)."""
    try:
        summary = read_json(run_dir / SUMMARY_FILE) if (run_dir / SUMMARY_FILE).exists() else {}
    except RunDirError:
        return None
    if not isinstance(summary, dict) or summary.get("status") not in ("finished", "diverged"):
        return None
    return ALREADY_DONE if summary["status"] == "finished" else str(summary.get("message"))


def run_sweep(
    runs: list[SweepRun],
    out: Path,
    backend: BackendOptions | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> SweepOutcome:
    """Train every run of ``runs`` not yet finished into ``out/<run-id>`` on ``backend`` (default: the local
    pool), then write ``out/results.csv`` (one row per run, in plan order). A run that diverges is recorded
    (status "diverged") and the others go on."""
    out = Path(out)
    backend = BackendOptions() if backend is None else backend
    backend.check()
    check_writable_folder(out, "--out")
    ended = {run.run_id: _ended(out / run.run_id) for run in runs}
    outcomes = {run_id: outcome for run_id, outcome in ended.items() if outcome is not None}
    todo = [RunSpec(run.run_id, run.overrides) for run in runs if run.run_id not in outcomes]
    if progress:
        print(f"{len(runs)} runs in {out}: {len(outcomes)} already ended, {len(todo)} to train", flush=True)
    if todo:
        with open_backend(backend, out / ".submitit", len(todo)) as (executor, jobs):
            if progress:
                print(f"training on {backend.describe(jobs)}", flush=True)
            outcomes.update(run_plan(todo, out, device, progress, jobs, executor, allow_diverged=True))
    table = results_table(out, [out / run.run_id for run in runs])
    write_results(table, out / RESULTS_FILE)
    return SweepOutcome({run.run_id: outcomes[run.run_id] for run in runs}, table)

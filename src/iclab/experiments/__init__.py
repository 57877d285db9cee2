"""Reproductions of published claims: ``iclab reproduce NAME [--quick | --size SIZE]``.

Each recipe module defines ``RECIPE`` (:class:`Recipe`): its plan lists the runs (run id and ``iclab train``
overrides), executing the plan trains each into an ordinary, resumable run dir ``out/runs/<run_id>`` (here,
in worker processes or through any executor; or elsewhere, from ``list_run_commands``), and its analysis
evaluates the finished runs and writes ``results.csv``, figures and ``report.md`` into ``out``, returning the
headline numbers and the claim checks.
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

from iclab.errors import UsageError
from iclab.experiments import (
    functional_gd,
    garg,
    mahankali,
    mlp_lsa,
    nath,
    newton,
    newton_gpt2,
    oswald,
    task_descriptors,
    zfb,
)
from iclab.experiments.grid import Executor, execute
from iclab.experiments.recipe import Recipe, RunSpec
from iclab.rundir import SUMMARY_FILE, atomic_write_text, read_json

RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        functional_gd.RECIPE,
        mlp_lsa.RECIPE,
        oswald.RECIPE,
        newton.RECIPE,
        newton_gpt2.RECIPE,
        mahankali.RECIPE,
        task_descriptors.RECIPE,
        zfb.RECIPE,
        nath.RECIPE,
        garg.RECIPE,
    )
}

__all__ = ["RECIPES", "Executor", "Recipe", "RunSpec", "list_run_commands", "reproduce"]


def reproduce(
    name: str,
    out: Path,
    size: str = "full",
    device: str = "cpu",
    progress: bool = True,
    jobs: int = 1,
    executor: Executor | None = None,
) -> dict:
    """Plan, execute and analyse the recipe ``name`` at ``size`` into ``out``: train its runs under ``out/runs``
    (``jobs`` at a time, or through ``executor``; finished runs are skipped) and return the analysis."""
    recipe = _recipe(name, size)
    out = Path(out)
    start = time.perf_counter()
    runs = execute(
        recipe.plan(size),
        _runs_root(out),
        device=device,
        progress=progress,
        jobs=jobs,
        executor=executor,
        allow_diverged=recipe.allow_diverged,
    )
    result = recipe.analyse(out, size, runs, device, progress)
    _finish_report(out / "report.md", name, size, runs, time.perf_counter() - start)
    return result


def _finish_report(path: Path, name: str, size: str, runs: dict[str, Path], seconds: float) -> None:
    """Append to report.md (where the analysis wrote one) the exact commands that remake it and the time it took:
    this invocation's wall time and the training time its runs' summary.json files record (runs trained earlier
    count there too)."""
    if not path.exists():
        return
    flag = "--quick" if size == "quick" else f"--size {size}"
    out = path.parent
    trained = sum(read_json(run / SUMMARY_FILE).get("wall_seconds", 0.0) for run in runs.values())
    text = path.read_text() + "\n## Commands\n\nAll of it (trains what is missing, then analyses):\n\n```bash\n"
    text += f"iclab reproduce {name} {flag} --out {out}\n```\n\n"
    text += "One run each, for any scheduler (then the command above only analyses):\n\n```bash\n"
    text += "\n".join(list_run_commands(name, out, size)) + "\n```\n\n## Time\n\n"
    count = f"{len(runs)} run" + ("" if len(runs) == 1 else "s")
    text += f"- training: {_duration(trained)} in {count} (the sum of their summary.json wall_seconds)\n"
    text += f"- this invocation: {_duration(seconds)} wall-clock, training what was missing and the analysis\n"
    atomic_write_text(path, text)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def list_run_commands(name: str, out: Path, size: str = "full") -> list[str]:
    """One shell command ``iclab train <overrides…> --out OUT/runs/<run_id> --quiet`` per planned run: run them
    with any scheduler, then ``iclab reproduce NAME --out OUT`` only analyses."""
    root = _runs_root(Path(out))
    return [
        shlex.join(["iclab", "train", *spec.overrides, "--out", str(root / spec.run_id), "--quiet"])
        for spec in _recipe(name, size).plan(size)
    ]


def _recipe(name: str, size: str) -> Recipe:
    if name not in RECIPES:
        raise UsageError(f"unknown reproduction {name!r}; choose from {', '.join(RECIPES)}")
    if size not in RECIPES[name].sizes:
        raise UsageError(f"--size must be one of {', '.join(RECIPES[name].sizes)} for {name}, got {size!r}")
    return RECIPES[name]


def _runs_root(out: Path) -> Path:
    """Where a reproduction in ``out`` keeps its run dirs."""
    return out / "runs"

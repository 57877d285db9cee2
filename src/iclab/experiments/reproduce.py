"""``iclab reproduce``: a recipe's runs at every seed, its claims evaluated on every seed, its report.

:func:`reproduce` plans the recipe's runs at a size for each seed (run dirs ``OUT/runs/seed<S>/<run_id>``,
``seed=S`` first among the overrides), trains them through the existing backends (finished runs are skipped,
interrupted ones resume), measures each seed, evaluates every claim on every seed with its negative controls
(:mod:`iclab.experiments.claims`) and writes ``claims.csv``, ``claims_by_seed.csv``, the recipe's own CSVs and
figures and ``report.md`` into ``OUT``.

With ``untrained=True`` every run is "trained" for 0 steps: the analysis then reads the models at their
initialisation, a negative control of the whole recipe, in which no reproduction claim may pass.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

from iclab.errors import UsageError
from iclab.experiments.claims import (
    MIN_SEEDS,
    REPRODUCED,
    REPRODUCTION,
    ClaimResult,
    Counts,
    claims_frame,
    counts,
    evaluate,
    failures,
    seeds_frame,
)
from iclab.experiments.grid import Executor, RunSpec, execute
from iclab.experiments.recipe import Context, Recipe, get_recipe
from iclab.plots import markdown_table
from iclab.rundir import SUMMARY_FILE, atomic_write_text, read_json

UNTRAINED = ("train.steps=0", "train.warmup_steps=0")  # appended to every run of the untrained control


@dataclass(frozen=True)
class Reproduction:
    """What :func:`reproduce` found: the evaluated claims, their counts, each seed's measurements."""

    recipe: Recipe
    size_name: str
    seeds: tuple[int, ...]
    results: list[ClaimResult]
    measurements: dict[int, Any]
    untrained: bool = False

    @property
    def counts(self) -> Counts:
        return counts(self.results)

    @property
    def failed(self) -> list[ClaimResult]:
        """Claims tested and not reproduced (or not discriminating, or theory checks that fail)."""
        return failures(self.results)

    @property
    def passed_untrained(self) -> list[ClaimResult]:
        """Reproduction claims reproduced (untrained control: each one is a defect of its claim)."""
        return [r for r in self.results if r.claim.kind == REPRODUCTION and r.status == REPRODUCED]

    @property
    def held_somewhere(self) -> list[ClaimResult]:
        """Reproduction claims whose test said yes at some seed but not at all (untrained control: shown)."""
        return [r for r in self.results if r.claim.kind == REPRODUCTION and 0 < r.held < r.seeds]


def seeds_of(seeds: int, seed_offset: int = 0) -> tuple[int, ...]:
    """The seeds S, S + 1, …, S + K − 1; raises UsageError below :data:`MIN_SEEDS` seeds or a negative offset."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < MIN_SEEDS:
        raise UsageError(f"--seeds must be an integer >= {MIN_SEEDS} (every claim runs at {MIN_SEEDS} seeds or "
                         f"more), got {seeds!r}")  # fmt: skip
    if isinstance(seed_offset, bool) or not isinstance(seed_offset, int) or seed_offset < 0:
        raise UsageError(f"--seed-offset must be an integer >= 0, got {seed_offset!r}")
    return tuple(range(seed_offset, seed_offset + seeds))


def check_size(recipe: Recipe, size: str) -> None:
    """Raises UsageError when ``recipe`` has no size ``size``."""
    if size not in recipe.sizes:
        raise UsageError(f"--size must be one of {', '.join(recipe.sizes)} for {recipe.name}, got {size!r}")


def seed_run_id(seed: int, run_id: str) -> str:
    """Where one seed's run lives under ``OUT/runs``."""
    return f"seed{seed}/{run_id}"


def seeded_plan(recipe: Recipe, size: str, seeds: tuple[int, ...], untrained: bool = False) -> list[RunSpec]:
    """Every run of the recipe at ``size`` for every seed: ``seed=S`` first, then the recipe's overrides (and
    the untrained control's). Raises ValueError for a recipe whose plan sets the seed itself."""
    specs = recipe.plan(recipe.sizes[size])
    for spec in specs:
        if any(o.startswith("seed=") for o in spec.overrides):
            raise ValueError(f"recipe {recipe.name}: run {spec.run_id} sets the seed; the framework sets it")
    return [RunSpec(seed_run_id(seed, spec.run_id), (f"seed={seed}", *_untrained(spec.overrides, untrained)))
            for seed in seeds for spec in specs]  # fmt: skip


def _untrained(overrides: tuple[str, ...], untrained: bool) -> tuple[str, ...]:
    """The overrides, with those of :data:`UNTRAINED` replacing the same keys where ``untrained``."""
    if not untrained:
        return overrides
    keys = {o.split("=", 1)[0] for o in UNTRAINED}
    return (*(o for o in overrides if o.split("=", 1)[0] not in keys), *UNTRAINED)


def reproduce(
    name: str,
    out: Path,
    size: str = "full",
    seeds: int = MIN_SEEDS,
    seed_offset: int = 0,
    device: str = "cpu",
    progress: bool = True,
    jobs: int = 1,
    executor: Executor | None = None,
    untrained: bool = False,
) -> Reproduction:
    """Plan, train, measure and judge the recipe ``name`` at ``size`` for ``seeds`` seeds from ``seed_offset``,
    into ``out``: train its runs under ``out/runs`` (``jobs`` at a time, or through ``executor``; finished runs
    are skipped), evaluate every claim at every seed and write the report. Raises UsageError for an unknown
    recipe or size, fewer than three seeds or a negative offset."""
    recipe = get_recipe(name)
    check_size(recipe, size)
    chosen = seeds_of(seeds, seed_offset)
    out = Path(out)
    start = time.perf_counter()
    plan = seeded_plan(recipe, size, chosen, untrained)
    runs = execute(plan, out / "runs", device=device, progress=progress, jobs=jobs, executor=executor,
                   allow_diverged=recipe.allow_diverged)  # fmt: skip
    context = Context(recipe, size, recipe.sizes[size], out, chosen, device, progress)
    measurements = {}
    for seed in chosen:
        prefix = seed_run_id(seed, "")
        own = {run_id.removeprefix(prefix): path for run_id, path in runs.items() if run_id.startswith(prefix)}
        measurements[seed] = recipe.measure(context, seed, own)
    results = evaluate(recipe.claims(context.size), measurements)
    table = claims_frame(results).assign(size=size, seed_list=",".join(map(str, chosen)))
    atomic_write_text(out / "claims.csv", table.to_csv(index=False))
    atomic_write_text(out / "claims_by_seed.csv", seeds_frame(results).to_csv(index=False))
    tables = recipe.write(context, measurements, results)
    outcome = Reproduction(recipe, size, chosen, results, measurements, untrained)
    report = report_text(context, outcome, tables)
    report += commands_text(recipe, size, out, chosen, untrained, plan)
    report += time_text(runs, time.perf_counter() - start)
    atomic_write_text(out / "report.md", report)
    return outcome


def report_text(context: Context, outcome: Reproduction, tables: dict) -> str:
    """report.md up to its commands: title, counts, settings, the claims (one row each: place, kind, claim,
    the paper's statement, iclab's value per seed with its interval, the test, k of K seeds, every control and
    whether it was rejected, the verdict), the claims not reproduced with their reasons, the recipe's tables."""
    recipe, results = context.recipe, outcome.results
    title = f"# {recipe.title} ({context.size_name} size{', untrained control' if outcome.untrained else ''})"
    lines = [title, "", f"{recipe.paper}. Seeds: {', '.join(map(str, context.seeds))}.", ""]
    lines += [f"**{outcome.counts.text()}.**", ""]
    if outcome.untrained:
        passed = "; ".join(r.claim.key for r in outcome.passed_untrained)
        found = f"**These are reproduced on them: {passed}.**" if passed else "None is reproduced on them."
        partly = "; ".join(f"{r.claim.key} ({r.held} of {r.seeds})" for r in outcome.held_somewhere)
        found += f" Held at some seeds only: {partly}." if partly else " None held at any seed."
        lines += ["Every run was trained for 0 steps: the models are at their initialisation, and no reproduction "
                  f"claim may be reproduced on them. {found}", ""]  # fmt: skip
    lines += ["Settings:", ""]
    if is_dataclass(context.size):
        lines += [f"- {key}: {value}" for key, value in asdict(context.size).items()]
    lines += [f"- {context.setting}", "", "## Claims", ""]
    lines += ["Each claim: where the paper states it, its kind (a reproduction with trained models, or a theory "
              "check), the paper's statement, iclab's value at each seed (with its interval where it is an "
              "estimate), the test that decides it, at how many seeds it holds, the negative controls (wrong "
              "answers measured the same way, which the test must reject) and the verdict. A claim is reproduced "
              "only when it holds at every seed and every control is rejected at every seed.", ""]  # fmt: skip
    rows = []
    for index, r in enumerate(results, start=1):
        shown = r.values_text() or "—"
        rows.append({"#": index, "place": r.claim.place, "kind": r.claim.kind, "claim": r.claim.claim,
                     "paper": r.claim.paper, "iclab (per seed)": shown, "test": r.claim.test.text or "—",
                     "seeds": f"{r.held} of {r.seeds}" if r.seeds else "—",
                     "controls": r.controls_text() or "—", "verdict": r.verdict_text()})  # fmt: skip
    lines += [_markdown(rows)]
    failed = outcome.failed
    if failed:
        lines += ["", "## Not reproduced, and why", ""]
        for r in failed:
            lines.append(f"- **{r.claim.claim}** ({r.claim.place}): {r.verdict_text()}; measured "
                         + " · ".join(f"seed {v.seed}: {v.estimate.shown()}" for v in r.verdicts)
                         + (f". {r.claim.note}" if r.claim.note else ""))  # fmt: skip
    for heading, frame in tables.items():
        lines += ["", f"## {heading}", "", markdown_table(frame)]
    return "\n".join(lines) + "\n"


def _markdown(rows: list[dict]) -> str:
    """A markdown table of text cells (pipes escaped)."""
    columns = list(rows[0]) if rows else []
    cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row[c]) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def commands_text(recipe: Recipe, size: str, out: Path, seeds: tuple[int, ...], untrained: bool,
                  plan: list[RunSpec]) -> str:  # fmt: skip
    """The exact commands that remake the report: all of it, and one ``iclab train`` per run."""
    flags = reproduce_flags(size, seeds, untrained)
    text = "\n## Commands\n\nAll of it (trains what is missing, then analyses):\n\n```bash\n"
    text += shlex.join(["iclab", "reproduce", recipe.name, *flags, "--out", str(out)]) + "\n```\n\n"
    text += "One run each, for any scheduler (then the command above only analyses):\n\n```bash\n"
    text += "\n".join(train_commands(plan, out)) + "\n```\n"
    return text


def reproduce_flags(size: str, seeds: tuple[int, ...], untrained: bool = False) -> list[str]:
    """The ``iclab reproduce`` flags of a size and its seeds (defaults left out)."""
    flags = ["--quick"] if size == "quick" else ["--size", size]
    if len(seeds) != MIN_SEEDS:
        flags += ["--seeds", str(len(seeds))]
    if seeds[0]:
        flags += ["--seed-offset", str(seeds[0])]
    return flags + (["--untrained"] if untrained else [])


def train_commands(plan: list[RunSpec], out: Path) -> list[str]:
    """One ``iclab train <overrides…> --out OUT/runs/<seed>/<run_id> --quiet`` per planned run."""
    root = Path(out) / "runs"
    return [shlex.join(["iclab", "train", *spec.overrides, "--out", str(root / spec.run_id), "--quiet"])
            for spec in plan]  # fmt: skip


def time_text(runs: dict[str, Path], seconds: float) -> str:
    """How long it took: the runs' training (their summary.json wall_seconds) and this invocation."""
    trained = sum(read_json(run / SUMMARY_FILE).get("wall_seconds", 0.0) for run in runs.values())
    count = f"{len(runs)} run" + ("" if len(runs) == 1 else "s")
    return (f"\n## Time\n\n- training: {_duration(trained)} in {count} (the sum of their summary.json "
            f"wall_seconds)\n- this invocation: {_duration(seconds)} wall-clock, training what was missing and the "
            "analysis\n")  # fmt: skip


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def list_run_commands(name: str, out: Path, size: str = "full", seeds: int = MIN_SEEDS, seed_offset: int = 0,
                      untrained: bool = False) -> list[str]:  # fmt: skip
    """One shell command ``iclab train <overrides…> --out OUT/runs/seed<S>/<run_id> --quiet`` per planned run
    and seed: run them with any scheduler, then ``iclab reproduce NAME --out OUT`` (same size and seeds) only
    analyses."""
    recipe = get_recipe(name)
    check_size(recipe, size)
    return train_commands(seeded_plan(recipe, size, seeds_of(seeds, seed_offset), untrained), Path(out))


def verdict_line(result: ClaimResult) -> str:
    """One line of ``iclab reproduce``'s output for a claim: yes/NO (or ``--``, untested), kind, place, claim,
    its values and verdict."""
    mark = {REPRODUCED: "yes"}.get(result.status, "-- " if not result.verdicts else "NO ")
    values = result.values_text()
    kind = "theory" if result.claim.kind != REPRODUCTION else "paper"
    detail = f" ({values})" if values else ""
    return f"{mark}  [{kind}, {result.claim.place}] {result.claim.claim}{detail}: {result.verdict_text()}"

"""A reproduction as data: the runs it needs (its plan) and what it makes of them once trained (its analysis)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd


@dataclass(frozen=True)
class RunSpec:
    """One run of a plan: trained by ``iclab train *overrides --out OUT/runs/run_id``."""

    run_id: str
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Recipe:
    """A published claim and how to check it.

    ``plan(size)`` lists the runs of one of its ``sizes`` (by name: "quick" is the one CI runs, "full" the
    paper's, others in between); ``analyse(out, size, runs, device, progress)`` evaluates the finished runs
    ``{run_id: run dir}``, writes results, figures and report.md into ``out`` and returns the headline numbers
    with the claim checks under "checks". With ``allow_diverged`` a diverged run is left out of ``runs``
    instead of stopping the reproduction (the analysis reports it)."""

    name: str
    paper: str
    claim: str
    plan: Callable[[str], list[RunSpec]]
    analyse: Callable[[Path, str, dict[str, Path], str, bool], dict]
    sizes: tuple[str, ...] = ("quick", "full")
    allow_diverged: bool = False


@dataclass(frozen=True)
class Claim:
    """One checked claim of a reproduction: what is claimed (and where), the paper's statement or number, iclab's
    measured number (with its interval where it has one), the tolerance it is held to, and whether it holds."""

    claim: str
    paper: str
    iclab: str
    tolerance: str
    holds: bool


def claims_frame(claims: list[Claim]) -> pd.DataFrame:
    """claims.csv's table: one row per :class:`Claim`."""
    return pd.DataFrame([asdict(claim) for claim in claims], columns=list(Claim.__dataclass_fields__))


def claim_checks(claims: list[Claim]) -> dict[str, bool]:
    """What ``reproduce`` prints and exits on: ``{claim (iclab's number; tolerance): holds}``."""
    return {f"{c.claim} ({c.iclab}; tolerance {c.tolerance})": c.holds for c in claims}

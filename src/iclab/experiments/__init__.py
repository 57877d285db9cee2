"""Reproductions of published claims: ``iclab reproduce NAME [--quick]``.

Each recipe module has ``run(out, quick, device, progress, jobs) -> dict`` that trains its grid of runs (each an
ordinary, resumable run dir under ``out/runs/``), evaluates them, and writes ``results.csv``, figures and
``report.md`` into ``out``; the returned dict holds the headline numbers and the claim checks.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from iclab.experiments import functional_gd, mlp_lsa, newton, nonlinear_responses

RECIPES: dict[str, Callable[..., dict]] = {
    "functional_gd": functional_gd.run,
    "mlp_lsa": mlp_lsa.run,
    "newton": newton.run,
    "nonlinear_responses": nonlinear_responses.run,
}


def reproduce(
    name: str, out: Path, quick: bool = False, device: str = "cpu", progress: bool = True, jobs: int = 1
) -> dict:
    """Run the recipe ``name`` into ``out``, training ``jobs`` runs at a time."""
    if name not in RECIPES:
        raise ValueError(f"unknown reproduction {name!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[name](Path(out), quick=quick, device=device, progress=progress, jobs=jobs)

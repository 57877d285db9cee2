"""Reproductions of published claims: ``iclab reproduce NAME [--quick | --size SIZE] [--seeds K]``.

A recipe (:class:`Recipe`, found by name in :data:`RECIPES`) declares its sizes, the runs one seed needs, what a
seed's finished runs measure, its claims (:mod:`iclab.experiments.claims`: the paper's statement and place,
reproduction or theory check, the test, negative controls) and its figures; :func:`reproduce` runs the plan at
every seed (``OUT/runs/seed<S>/<run_id>``, resumable run dirs, through any executor), evaluates every claim at
every seed and writes ``claims.csv``, ``claims_by_seed.csv``, figures and ``report.md`` into ``OUT``.
"""

from __future__ import annotations

from iclab.experiments.grid import Executor, RunSpec
from iclab.experiments.recipe import RECIPES, Context, Recipe, all_recipes, get_recipe, register_recipe
from iclab.experiments.reproduce import Reproduction, list_run_commands, reproduce

__all__ = ["RECIPES", "Context", "Executor", "Recipe", "Reproduction", "RunSpec", "all_recipes", "get_recipe",
           "list_run_commands", "register_recipe", "reproduce"]  # fmt: skip

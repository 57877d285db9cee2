"""A reproduction as data: its sizes, the runs one seed needs at a size (its plan), what one seed's finished runs
measure, the claims those measurements decide, and the figures and tables it writes. The framework
(:mod:`iclab.experiments.reproduce`) runs the plan at every seed, evaluates the claims and writes the report.

Recipes are found by name in :data:`RECIPES` (a :class:`~iclab.registry.Registry`, like the tasks and models):
iclab's own are imported on first use; one defined anywhere else joins with :func:`register_recipe`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from iclab.errors import UsageError, UserError
from iclab.experiments.claims import Claim, ClaimResult
from iclab.experiments.grid import RunSpec
from iclab.plots import recipe_caption
from iclab.registry import Registry


@dataclass(frozen=True)
class Context:
    """What a recipe's steps see: the recipe, the size (its name and its settings), the output folder, the seeds
    of this reproduction, the device and whether to show progress."""

    recipe: Recipe
    size_name: str
    size: Any
    out: Path
    seeds: tuple[int, ...]
    device: str = "cpu"
    progress: bool = False

    @property
    def setting(self) -> str:
        return self.recipe.setting(self.size)

    @property
    def caption(self) -> str:
        """The line under every figure: the command, the size's settings, the setting in words, the seeds."""
        seeds = f"seeds {', '.join(map(str, self.seeds))}"
        return recipe_caption(self.recipe.name, self.size_name, self.out, self.size, f"{self.setting}; {seeds}")


@dataclass(frozen=True)
class Recipe:
    """A paper's claims and how iclab checks them.

    - ``sizes``: ``{name: settings}`` ("quick" is what CI runs, "full" the paper's; others in between), each a
      frozen dataclass;
    - ``plan(size)``: the runs of one seed (the framework trains them at every seed, ``seed=S`` first);
    - ``measure(context, seed, runs)``: one seed's measurements from its finished runs ``{run_id: run dir}``
      (a diverged run is missing where ``allow_diverged``), in any form the claims read;
    - ``claims(size)``: every claim of the paper this recipe knows, tested or not at ``size``;
    - ``write(context, measurements, results)``: the recipe's CSVs and figures into ``context.out``, from every
      seed's measurements ``{seed: …}`` and the evaluated claims; returns the tables for report.md
      ``{heading: DataFrame}``;
    - ``setting(size)``: the setting in words (report and figure captions)."""

    name: str
    paper: str
    claim: str
    title: str
    sizes: Mapping[str, Any]
    plan: Callable[[Any], list[RunSpec]]
    measure: Callable[[Context, int, dict[str, Path]], Any]
    claims: Callable[[Any], list[Claim]]
    write: Callable[[Context, dict[int, Any], list[ClaimResult]], dict[str, pd.DataFrame]]
    setting: Callable[[Any], str]
    allow_diverged: bool = False


BUILTIN = ("functional_gd", "mlp_lsa", "oswald", "newton", "newton_gpt2", "mahankali", "task_descriptors", "zfb",
           "nath", "garg")  # fmt: skip
RECIPES = Registry("recipe", {name: f"iclab.experiments.{name}" for name in BUILTIN})


def register_recipe(recipe: Recipe) -> Recipe:
    """Make ``recipe`` known to ``iclab reproduce`` by its name; returns it."""
    RECIPES.register(recipe.name, None, lambda: recipe, recipe.claim)
    return recipe


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; raises UsageError naming the known ones."""
    try:
        return RECIPES.get(name).build()
    except UserError:
        raise UsageError(f"unknown reproduction {name!r}; choose from {', '.join(RECIPES.names())}") from None


def all_recipes() -> list[Recipe]:
    """Every known recipe (iclab's own first, in their listed order)."""
    return [entry.build() for entry in RECIPES]

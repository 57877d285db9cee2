"""The recipe framework end to end on a toy recipe: runs at every seed, claims at every seed with their controls,
the report, the counts, the exit codes, the untrained control, and a recipe added from outside iclab."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iclab.cli import main
from iclab.experiments import RECIPES, Recipe, RunSpec, get_recipe, register_recipe
from iclab.experiments.claims import REPRODUCTION, THEORY, Claim, Estimate, below, untested
from iclab.rundir import read_json
from iclab.theory.lsa import lsa_optimum


@dataclasses.dataclass(frozen=True)
class ToySize:
    d: int = 2
    n: int = 8
    steps: int = 400
    limit: float = 0.45  # the claim: trained loss below limit × the zero predictor's (L*: 0.27)


def toy_plan(size: ToySize) -> list[RunSpec]:
    model = ("model.layers=1", "model.param=sparse", "model.init=balanced")
    training = (f"train.steps={size.steps}", "train.batch_size=256", "train.log_every=10", "eval.every=150")
    return [RunSpec("lsa", (f"task.d={size.d}", f"task.n={size.n}", *model, *training, "eval.batch_size=4000"))]


def toy_measure(context, seed: int, runs: dict[str, Path]) -> dict:
    summary = read_json(runs["lsa"] / "summary.json")
    return {"loss": summary["final_eval_loss"], "seed": seed, "run": runs["lsa"]}


def toy_claims(size: ToySize) -> list[Claim]:
    zero = float(size.d)  # E y_q² for x, w ~ N(0, I), no noise
    optimum = lsa_optimum(size.n, np.eye(size.d)).loss
    return [
        Claim("learns", "the trained LSA learns in context", "one layer is one GD step", "Fig. 1", REPRODUCTION,
              lambda m: Estimate(m["loss"] / zero), below(size.limit, f"loss / E y² < {size.limit}"),
              {"the zero predictor": lambda _: Estimate(1.0)}),
        Claim("optimum", "L* = d(d + 1)/(n + d + 1)", "closed form", "Thm 1", THEORY,
              lambda _: Estimate(abs(optimum - size.d * (size.d + 1) / (size.n + size.d + 1))),
              below(1e-12, "< 1e-12"), {"d/(n + d)": lambda _: Estimate(abs(optimum - size.d / (size.n + size.d)))}),
        untested("deep", "deeper is better", "Fig. 2", "Fig. 2", REPRODUCTION, "the toy trains one layer"),
    ]  # fmt: skip


def toy_write(context, measurements: dict, results) -> dict:
    table = pd.DataFrame([{"seed": s, "loss": m["loss"]} for s, m in measurements.items()])
    (context.out / "toy.csv").write_text(table.to_csv(index=False))
    return {"Losses": table}


def toy_recipe(name: str = "toy", **size) -> Recipe:
    sizes = {"quick": ToySize(**size), "full": ToySize(steps=800, **size)}
    return Recipe(name, "Toy et al. 2026", "a toy claim", "A toy recipe", sizes, toy_plan, toy_measure, toy_claims,
                  toy_write, lambda s: f"d = {s.d}, n = {s.n}")  # fmt: skip


@pytest.fixture
def toy():
    register_recipe(toy_recipe())
    register_recipe(toy_recipe("toy_strict", limit=1e-9))
    yield
    RECIPES.unregister("toy")
    RECIPES.unregister("toy_strict")


def test_a_recipe_runs_at_three_seeds_and_reports_every_claim(tmp_path, capsys, toy):
    out = tmp_path / "toy"
    assert main(["reproduce", "toy", "--quick", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "toy (quick, seeds 0, 1, 2): 1 of 2 paper claims reproduced, 0 not reproduced, 1 not tested at this " \
           "size (the toy trains one layer); 1 of 1 theory checks hold" in printed  # fmt: skip
    assert printed.count("yes  [") == 2 and "--   [paper, Fig. 2] deeper is better: not tested" in printed
    for seed in range(3):  # one run dir per seed, trained with its seed
        assert read_json(out / "runs" / f"seed{seed}" / "lsa" / "summary.json")["config"]["seed"] == seed
    claims = pd.read_csv(out / "claims.csv")
    assert list(claims["key"]) == ["learns", "optimum", "deep"]
    assert list(claims["status"]) == ["reproduced", "reproduced", "not tested"]
    assert (claims.loc[:1, "seeds_held"] == 3).all() and set(claims["size"]) == {"quick"}
    assert set(claims["seed_list"]) == {"0,1,2"}
    by_seed = pd.read_csv(out / "claims_by_seed.csv")
    zero = by_seed[by_seed.subject == "the zero predictor"]
    assert len(zero) == 3 and not zero["passes"].any()  # the control, rejected at every seed
    losses = pd.read_csv(out / "toy.csv")["loss"]
    learns = by_seed[(by_seed.key == "learns") & (by_seed.subject == "model")]["value"].to_numpy()
    assert np.allclose(learns, losses.to_numpy() / 2)  # the seed's measurement, read by its claim
    report = (out / "report.md").read_text()
    assert report.startswith("# A toy recipe (quick size)") and "**1 of 2 paper claims reproduced" in report
    for header in ("place", "kind", "claim", "paper", "iclab (per seed)", "test", "seeds", "controls", "verdict"):
        assert f" {header} |" in report
    assert "the zero predictor: 1 → rejected at 3 of 3 seeds" in report and "## Losses" in report
    assert "iclab reproduce toy --quick --out" in report and report.count("iclab train seed=") == 3


def test_seed_offset_and_seed_count_choose_the_seeds(tmp_path, capsys, toy):
    out = tmp_path / "toy"
    assert main(["reproduce", "toy", "--quick", "--seeds", "4", "--seed-offset", "7", "--list-runs", "--out",
                 str(out)]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines] == ["seed=7", "seed=8", "seed=9", "seed=10"]
    assert all(f"{out}/runs/seed{s}/lsa" in line for s, line in zip(range(7, 11), lines, strict=True))
    assert main(["reproduce", "toy", "--quick", "--seeds", "2", "--out", str(out)]) == 2
    assert "--seeds must be an integer >= 3" in capsys.readouterr().err
    assert main(["reproduce", "toy", "--quick", "--seed-offset", "-1", "--out", str(out)]) == 2
    assert "--seed-offset must be an integer >= 0" in capsys.readouterr().err
    assert main(["reproduce", "toy", "--size", "huge", "--out", str(out)]) == 2
    assert "--size must be one of quick, full for toy" in capsys.readouterr().err


def test_a_claim_not_reproduced_exits_3_and_names_it(tmp_path, capsys, toy):
    out = tmp_path / "strict"
    assert main(["reproduce", "toy_strict", "--quick", "--out", str(out), "--quiet"]) == 3
    captured = capsys.readouterr()
    assert "NO   [paper, Fig. 1] the trained LSA learns in context" in captured.out
    assert "learns (not reproduced (0 of 3 seeds))" in captured.err
    report = (out / "report.md").read_text()
    assert "## Not reproduced, and why" in report and "0 of 2 paper claims reproduced, 1 not reproduced" in report


def test_the_untrained_control_fails_every_reproduction_claim(tmp_path, capsys, toy):
    assert main(["reproduce", "toy", "--quick", "--untrained", "--out", str(tmp_path / "u"), "--quiet"]) == 0
    report = (tmp_path / "u" / "report.md").read_text()
    assert "untrained control" in report and "None is reproduced on them. None held at any seed." in report
    for seed in range(3):
        assert read_json(tmp_path / "u" / "runs" / f"seed{seed}" / "lsa" / "summary.json")["steps"] == 0
    claims = pd.read_csv(tmp_path / "u" / "claims.csv").set_index("key")
    assert claims.loc["learns", "seeds_held"] == 0 and claims.loc["optimum", "status"] == "reproduced"


def test_a_recipe_that_sets_the_seed_itself_is_refused(tmp_path):
    bad = toy_recipe("toy_seeded")
    bad = dataclasses.replace(bad, plan=lambda size: [RunSpec("lsa", ("seed=3", *toy_plan(size)[0].overrides))])
    register_recipe(bad)
    try:
        from iclab.experiments import reproduce

        with pytest.raises(ValueError, match="sets the seed"):
            reproduce("toy_seeded", tmp_path, size="quick", progress=False)
    finally:
        RECIPES.unregister("toy_seeded")


def test_every_builtin_recipe_is_found_by_name_and_declares_three_seed_claims():
    from iclab.experiments.recipe import BUILTIN, all_recipes

    assert [recipe.name for recipe in all_recipes()] == list(BUILTIN)
    for recipe in all_recipes():
        assert get_recipe(recipe.name) is recipe and "quick" in recipe.sizes
        for size in recipe.sizes.values():
            found = recipe.claims(size)
            assert found and len({c.key for c in found}) == len(found)
            assert all(c.controls or c.untested for c in found), recipe.name  # every claim has a control
            assert all(c.place and c.paper for c in found), recipe.name

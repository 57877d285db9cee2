"""Garg et al.'s distribution shifts: each one does what it says (checked on the prompts themselves), labels
are recomputed from w, and `iclab eval RUN --shifts all` writes its table and figure."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from iclab.cli import main
from iclab.config import parse_config
from iclab.evaluate import query_loss
from iclab.learners import LeastSquares
from iclab.shifts import SHIFTS
from iclab.tasks import make_task

F64 = torch.float64


def base_prompts(n: int = 12, d: int = 4, m: int = 3, batch: int = 200):
    task = make_task(parse_config({}, [f"task.d={d}", f"task.n={n}", f"task.n_queries={m}"]).task)
    return task.sample(batch, torch.Generator().manual_seed(0), dtype=F64)


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_labels_stay_those_of_w(name):
    shifted = SHIFTS[name](base_prompts(), torch.Generator().manual_seed(1))
    w = shifted.w.unsqueeze(-1)
    torch.testing.assert_close(shifted.yq, (shifted.xq @ w).squeeze(-1))
    if name != "noisy_labels":
        torch.testing.assert_close(shifted.ys, (shifted.xs @ w).squeeze(-1))


def test_each_shift_changes_what_it_names():
    base = base_prompts()
    generator = torch.Generator().manual_seed(2)
    noise = SHIFTS["noisy_labels"](base, generator).ys - base.ys
    assert abs(float(noise.var()) - 1.0) < 0.1 and torch.equal(SHIFTS["noisy_labels"](base, generator).xs, base.xs)
    torch.testing.assert_close(SHIFTS["scaled_inputs"](base, generator).xq, 3 * base.xq)
    orthant = SHIFTS["orthant"](base, generator).xs
    assert ((orthant > 0).all(1) | (orthant < 0).all(1)).all()  # one sign per coordinate in each prompt
    orthogonal = SHIFTS["orthogonal_query"](base, generator)  # ⟂ the first d − 1 = 3 context inputs
    assert float((orthogonal.xs[:, :3] @ orthogonal.xq.transpose(-1, -2)).abs().max()) < 1e-10
    assert float(orthogonal.xq.norm(dim=-1).min()) > 0
    inside = SHIFTS["query_in_context"](base, generator)
    distance = torch.cdist(inside.xq, inside.xs).amin(-1)
    assert float(distance.max()) == 0.0 and query_loss(LeastSquares(), inside)[0] < 1e-20  # n ≥ d: fitted
    low = SHIFTS["subspace"](base, generator)
    ranks = torch.linalg.matrix_rank(torch.cat([low.xs, low.xq], 1))
    assert (ranks == 2).all()  # ⌈4/2⌉


def test_skewed_covariance_has_the_skewed_spectrum():
    base = base_prompts(n=20000, d=3, m=1, batch=2)
    skewed = SHIFTS["skewed_covariance"](base, torch.Generator().manual_seed(3))
    eigen = torch.linalg.eigvalsh(skewed.xs.transpose(-1, -2) @ skewed.xs / 20000).flip(-1)  # (2, 3), descending
    expected = torch.tensor([1.0, 1 / 4, 1 / 9], dtype=F64)
    expected = expected * 3 / expected.sum()
    torch.testing.assert_close(eigen, expected.expand(2, 3), rtol=0.05, atol=0.01)


def test_eval_shifts_writes_table_and_figure(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "task.d=3", "task.n=8", "train.steps=30", "eval.batch_size=100", "--out", str(run),
                 "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["eval", str(run), "--shifts", "all", "--batch-size", "200"]) == 0
    printed = capsys.readouterr().out
    assert "orthogonal_query" in printed and "k=3" in printed and "k=8" in printed
    table = pd.read_csv(run / "shifts.csv")
    assert len(table) == (1 + len(SHIFTS)) * 2 * 8  # (none + shifts) × (model, least squares) × k
    ols = table[table["learner"] == "least_squares"].set_index(["shift", "k"])["normalised"]
    assert ols["none", 8] < 1e-20 and ols["query_in_context", 8] < 1e-20
    assert abs(ols["orthogonal_query", 2] - 1 / 3) < 0.1  # x_q ⟂ both points: 0 predicted, E(wᵀx_q)² = 1 of 3
    assert (run / "figures" / "shifts.png").stat().st_size > 5000
    assert main(["eval", str(run), "--shifts", "sideways"]) == 2
    assert "--shifts must be all or names from" in capsys.readouterr().err


def test_shifts_need_prompts_that_carry_w(tmp_path, capsys):
    run = tmp_path / "gp"
    assert main(["train", "task.name=gp", "task.d=2", "task.n=5", "train.steps=5", "eval.batch_size=50", "--out",
                 str(run), "--quiet"]) == 0  # fmt: skip
    assert main(["eval", str(run), "--shifts", "all"]) == 2
    assert "carry no w" in capsys.readouterr().err

"""The probe against models whose algorithm is known: hand-set constructions and a trained optimum."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import task_config
from iclab.cli import main
from iclab.config import parse_config
from iclab.constructions import functional_gd_model, gd_model
from iclab.kernels import Kernel
from iclab.learners import LeastSquares, from_model
from iclab.models.lsa import LSA, LSAShape
from iclab.probe import ProbeSettings, fit_linear_probes, probe_model
from iclab.probe.candidates import candidate_families
from iclab.probe.piecewise import plateau_stats, summarise, sweep_queries
from iclab.probe.run import plot_iterations
from iclab.probe.weights import compare_with_gd_construction
from iclab.seeding import make_generator
from iclab.tasks import make_task
from iclab.theory import isotropic_gd_optimum
from iclab.train import train

F64 = torch.float64
QUICK = ProbeSettings(prompts=150, probe_prompts=300, queries=3, first_prefix=1, max_iterations=6, sweeps=3)


def prompts(variant: str = "isotropic", *extra: str, batch: int = 40):
    task = make_task(task_config(variant, "task.d=4", "task.n=9", "task.n_queries=2", *extra), seed=0)
    return task, task.sample(batch, make_generator(0, "probe-test"), dtype=F64)


@pytest.mark.parametrize("variant", ["isotropic", "gp_relu_sphere"])
def test_every_candidate_path_equals_its_learner(variant):
    """path(value, counts)[i] (all prefixes, one run of the iteration; GD's in closed form) =
    learner(counts[i], value).predict_prefixes, for the counts 0..4 and for counts out of order with gaps."""
    task, p = prompts(variant)
    kernels = (Kernel("relu"), Kernel("exp", 2.0))
    for family in candidate_families(p, kernels, preconditioner=torch.diag(torch.tensor([2.0, 1, 0.5, 1]))):
        value = family.grid[len(family.grid) // 2] if family.grid else None
        for counts in ((0, 1, 2, 3, 4), (7, 0, 3)):
            path = family.path(value, counts)
            assert path.shape[0] == (len(counts) if family.iterative else 1)
            for k, predictions in zip(counts, path, strict=False):
                expected = family.learner(k if family.iterative else None, value).predict_prefixes(p.xs, p.ys, p.xq)
                torch.testing.assert_close(predictions, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("layers", "lr"), [(3, 0.37), (2, 0.9)])
def test_probe_names_gd_with_the_right_steps_and_rate_on_the_construction(layers, lr):
    task = make_task(task_config("isotropic", "task.d=4", "task.n=12"), seed=0)
    result = probe_model(gd_model(4, layers, lr), task, QUICK, progress=False)
    for layer, row in result.layers.set_index("layer").iterrows():
        assert row["best"] == f"gd(k={layer}, lr={lr:.4g})", row["best"]
        assert row["difference"] < 1e-12 and row["sime"] > 1 - 1e-12 and row["sensitivity"] > 1 - 1e-12
    fitted = result.candidates[result.candidates["family"] == "gd"]["value"].to_numpy()
    np.testing.assert_allclose(fitted, lr, rtol=1e-5)
    assert all(min(w.kq_cosine, w.pv_cosine, w.pv_label_cosine) > 1 - 1e-12 for w in result.weights)


def test_gd_tried_on_a_log_grid_of_steps_still_names_each_layer_of_the_construction(tmp_path):
    """GD at 0, 1, 2, 3, 8, 64 and 4096 steps (closed form): each layer of the 3-layer construction is GD-k at its
    rate; the grid holds exactly those counts for GD and 0..6 for Newton–Schulz; the heatmap is drawn; every
    prompt's cosine of errors is kept, their mean the SimE."""
    task = make_task(task_config("isotropic", "task.d=4", "task.n=12"), seed=0)
    steps = (0, 1, 2, 3, 8, 64, 4096)
    result = probe_model(gd_model(4, 3, 0.37), task, replace(QUICK, gd_steps=steps), progress=False)
    assert result.layers["gd_k"].tolist() == [1, 2, 3]
    assert result.layers["best"].tolist() == [f"gd(k={k}, lr=0.37)" for k in (1, 2, 3)]
    grid = result.grid
    assert sorted(set(grid.loc[grid.family == "gd", "iterations"])) == list(steps)
    assert sorted(set(grid.loc[grid.family == "newton", "iterations"])) == list(range(7))
    plot_iterations(result, tmp_path / "iterations.png")
    assert (tmp_path / "iterations.png").stat().st_size > 10_000
    for row in result.candidates.itertuples():  # SimE is the mean of the per-prompt cosines kept for paired tests
        cosines = result.cosines[(row.layer, row.family)]
        assert cosines.shape == (150,) and cosines.mean() == pytest.approx(row.sime, abs=1e-12)


def test_similarity_of_errors_alone_also_finds_gd():
    task = make_task(task_config("isotropic", "task.d=4", "task.n=12"), seed=0)
    settings = ProbeSettings(**{**QUICK.__dict__, "metric": "sime"})
    result = probe_model(gd_model(4, 2, 0.5), task, settings, progress=False)
    assert result.layers["best"].str.startswith("gd(k=").all()
    assert result.layers["gd_k"].tolist() == [1, 2]
    fitted = result.candidates[result.candidates["family"] == "gd"]["value"].to_numpy()
    np.testing.assert_allclose(fitted, 0.5, rtol=1e-3)


def test_probe_names_functional_gd_on_the_kernel_construction():
    task = make_task(task_config("gp_relu_sphere", "task.d=4", "task.n=10"), seed=0)
    result = probe_model(functional_gd_model(4, 2, "relu", 1.3), task, QUICK, progress=False)
    assert result.layers["best"].tolist() == ["fgd-relu(k=1, lr=1.3)", "fgd-relu(k=2, lr=1.3)"]


def test_one_layer_lsa_trained_to_the_optimum_matches_one_gd_step(tmp_path):
    """d=3, n=10 noiseless: the trained 1-layer LSA's top match is one GD step near lr* = n/(n+d+1)."""
    cfg = parse_config({}, ["task.d=3", "task.n=10", "train.steps=1500", "eval.batch_size=2000"])
    train(cfg, tmp_path / "run", progress=False)
    from iclab.runs import load_model

    model, cfg, _ = load_model(tmp_path / "run")
    settings = ProbeSettings(prompts=400, probe_prompts=400, queries=5, max_iterations=6, sweeps=2)
    result = probe_model(model, make_task(cfg.task, cfg.seed), settings, progress=False)
    top = result.candidates.iloc[0]
    assert (top["family"], top["iterations"]) == ("gd", 1)
    assert abs(top["value"] / isotropic_gd_optimum(3, 10).lr - 1) < 0.02
    assert top["difference"] < 1e-3 < result.candidates.iloc[1]["difference"]


def test_linear_probe_recovers_a_linear_read_out():
    """Fitted to the model's own layer-ℓ read-out (minus the label slot), the probe is −e_label, intercept 0."""
    task, p = prompts(batch=300)
    model = gd_model(4, 2, 0.5)
    for layer, readout in enumerate(model.layer_readouts(p.xs, p.ys, p.xq), start=1):
        p.yq = readout
        coef = fit_linear_probes(model, p, alpha=0.0)[layer - 1].coef
        expected = torch.zeros(6, dtype=F64)
        expected[4] = -1.0
        torch.testing.assert_close(coef, expected, atol=1e-8, rtol=0)


def test_plateau_statistics_of_a_staircase_and_a_line():
    t = np.linspace(0, 1, 401)
    stairs = plateau_stats(np.floor(5 * t), threshold=0.01)
    assert stairs.plateaus == 5 and stairs.flat_fraction > 0.98 and math.isclose(stairs.total_variation, 5.0)
    line = plateau_stats(t, threshold=0.1 / 400)
    assert line.plateaus == 0 and line.flat_fraction == 0.0


def test_sharp_softmax_attention_is_piecewise_constant_and_linear_attention_is_not():
    """Softmax attention with large scores ≈ nearest neighbour: plateaus; one GD step: none (the control)."""
    task = make_task(task_config("gp_relu_sphere", "task.d=3", "task.n=8"), seed=0)
    p = task.sample(10, make_generator(0, "sweep"), dtype=F64)
    reference = LeastSquares()
    sharp = LSA(LSAShape(d=3, param="sparse", activation="softmax")).double()
    with torch.no_grad():
        sharp.blocks[0].attn.kq_block.copy_(40 * torch.eye(3, dtype=F64).unsqueeze(0))
        sharp.blocks[0].attn.value.fill_(-1.0)
    stats = {}
    for name, model in (("softmax", sharp), ("gd", gd_model(3, 1, 0.5))):
        sweeps = sweep_queries(from_model(model), reference, p, sphere=True, generator=make_generator(0, "lines"))
        stats[name] = summarise(sweeps)
    softmax, gd = stats["softmax"], stats["gd"]
    assert softmax["plateaus_model"] >= 3 and softmax["flat_fraction_model"] > 0.5 > softmax["flat_fraction_reference"]
    assert gd["plateaus_model"] == gd["plateaus_reference"] and gd["flat_fraction_model"] < 0.1


def test_weights_are_sign_normalised_and_scale_free():
    model = gd_model(3, 2, 0.7)
    with torch.no_grad():
        model.blocks[1].attn.kq_block.mul_(-3.0)
        model.blocks[1].attn.value.mul_(-1.0)
    rows = compare_with_gd_construction(model)
    assert [round(r.kq_cosine, 12) for r in rows] == [1.0, 1.0]
    with torch.no_grad():
        model.blocks[0].attn.kq_block.add_(torch.ones(1, 3, 3, dtype=F64))
    assert compare_with_gd_construction(model)[0].kq_cosine < 0.9


def test_probe_cli_writes_the_report(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "task.d=3", "task.n=6", "model.layers=2", "train.steps=20", "eval.batch_size=64",
                 "--out", str(run), "--quiet"]) == 0  # fmt: skip
    argv = ["probe", str(run), "--prompts", "40", "--queries", "2", "--max-iterations", "3", "--sweeps", "2",
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "best" in out and "report:" in out
    folder = run / "probe"
    layers = pd.read_csv(folder / "layers.csv")
    assert layers["layer"].tolist() == [1, 2] and {"gd_k", "newton_k"} <= set(layers.columns)
    for name in ("iterations", "layer_curves", "weights", "piecewise"):
        assert (folder / "figures" / f"{name}.png").stat().st_size > 1000
    report = (folder / "report.md").read_text()
    assert "Which algorithm" in report and "Piecewise constancy" in report


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--prompts", "1"], "--prompts"),
        (["--first-prefix", "99"], "first_prefix"),
        (["--metric", "cosine"], "--metric"),
    ],
)
def test_probe_cli_usage_errors(argv, fragment, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "task.d=3", "task.n=6", "train.steps=3", "eval.batch_size=16", "--out", str(run),
                 "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["probe", str(run), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1


def test_ridge_and_least_squares_candidates_are_the_learners_solved_from_x():
    """The probe's ridge and ols families give the learners' own predictions at every prefix, solved from X:
    with two nearly equal input coordinates (κ(X) ≈ 1e7, so κ(XᵀX) ≈ 1e14) least squares from XᵀX is off by
    2e8, and prefixes shorter than d are rank-deficient."""
    from iclab.learners import Ridge
    from iclab.prompts import Prompts

    generator = torch.Generator().manual_seed(3)
    xs = torch.randn(6, 8, 5, generator=generator, dtype=torch.float64)
    xs[..., 4] = xs[..., 3] + 1e-7 * torch.randn(6, 8, generator=generator, dtype=torch.float64)  # κ(X) ≈ 1e7
    ys, xq = torch.randn(6, 8, generator=generator, dtype=torch.float64), torch.randn(6, 2, 5, dtype=torch.float64)
    prompts = Prompts(xs=xs, ys=ys, xq=xq, yq=torch.zeros(6, 2, dtype=torch.float64))
    families = {family.name: family for family in candidate_families(prompts)}
    ols = families["ols"].path(None, (0,))[0]
    torch.testing.assert_close(ols, LeastSquares().predict_prefixes(xs, ys, xq), rtol=1e-10, atol=1e-10)
    alpha = families["ridge"].grid[0]
    ridge = families["ridge"].path(alpha, (0,))[0]
    torch.testing.assert_close(ridge, Ridge(alpha).predict_prefixes(xs, ys, xq), rtol=1e-10, atol=1e-10)
    assert torch.isfinite(ridge).all()


def test_probe_readout_fits_one_least_squares_read_out_per_layer_over_every_prefix():
    """Fu et al.'s read-out: for each layer, y_q ≈ [state, 1]·c fitted on the queries after every prefix k₀..n
    at once equals numpy's lstsq on the same stacked states (float64); the all-prefix read-outs apply it."""
    from iclab.probe.readout import all_prefix_probe_readouts

    cfg = parse_config({}, ["model.name=gpt2", "model.layers=2", "model.width=16", "model.heads=2", "task.d=3",
                            "task.n=6", "task.n_queries=2"])  # fmt: skip
    task = make_task(cfg.task, seed=0)
    from iclab.models import build_model

    model = build_model(cfg.model, task, torch.Generator().manual_seed(0)).double()
    fit = task.sample(200, make_generator(0, "fit"), dtype=F64)
    probes = fit_linear_probes(model, fit, alpha=0.0, first_prefix=3)
    for layer, probe in enumerate(probes):
        rows, targets = [], []
        for k in range(3, 7):
            part = fit.prefix(k)
            with torch.no_grad():
                state = model.layer_states(part.xs, part.ys, part.xq)[layer]
            flat = state.reshape(-1, state.shape[-1]).numpy()
            rows.append(np.concatenate([flat, np.ones((len(flat), 1))], 1))
            targets.append(part.yq.reshape(-1).numpy())
        features = np.concatenate(rows)
        expected = np.linalg.lstsq(features, np.concatenate(targets), rcond=None)[0]
        # the fitted values (an untrained model's stream is ill-conditioned: normal equations lose ~1e-8 there)
        np.testing.assert_allclose(features @ probe.coef.numpy(), features @ expected, rtol=0, atol=1e-6)
    test = task.sample(30, make_generator(1, "test"), dtype=F64)
    readouts = all_prefix_probe_readouts(model, probes, test, first_prefix=3)  # (L, B, 4, m)
    assert readouts.shape == (2, 30, 4, 2)
    with torch.no_grad():
        last = model.layer_states(test.xs, test.ys, test.xq)[1]
    torch.testing.assert_close(readouts[1, :, -1], last @ probes[1].coef[:-1] + probes[1].coef[-1])
    settings = ProbeSettings(prompts=40, probe_prompts=80, queries=2, first_prefix=3, max_iterations=2, sweeps=2,
                             readout="probe")  # fmt: skip
    result = probe_model(model, task, settings, progress=False)
    assert len(result.layers) == 2 and result.layers["sensitivity"].between(-1, 1).all()

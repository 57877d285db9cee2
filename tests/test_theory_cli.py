"""``iclab theory``: optimum, compare, flow, descriptors, nonlinear; bad values exit with code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest

from iclab.cli import main
from iclab.runs import load_model
from iclab.theory import effective_gamma, lsa_loss, lsa_optimum, task_problem

TINY = ["task.d=3", "task.n=8", "train.steps=40", "train.batch_size=128", "eval.batch_size=200", "eval.every=40"]


def run_json(argv, capsys):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_optimum_json_and_text(capsys):
    got = run_json(
        ["theory", "optimum", "--d", "3", "--n", "20", "--noise", "0.5", "--x-cov-diag", "2,1,0.25", "--json"], capsys
    )
    expected = lsa_optimum(20, np.diag([2, 1, 0.25]), noise_std=0.5)
    np.testing.assert_allclose(got["gamma"], expected.gamma, rtol=1e-12)
    assert got["loss"] == pytest.approx(expected.loss) and got["step_size"] is None
    assert main(["theory", "optimum", "--d", "5", "--n", "20"]) == 0
    text = capsys.readouterr().out
    assert "step size η = 0.769231" in text and "L* = 1.15385" in text  # 20/26, 30/26
    assert run_json(["theory", "optimum", "--d", "2", "--n", "inf", "--json"], capsys)["loss"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["theory", "optimum", "--d", "3", "--n", "x"], "--n must be an integer >= 1 or inf"),
        (["theory", "optimum", "--d", "3", "--n", "5", "--x-cov-diag", "1,2"], "--x-cov-diag needs 3 values"),
        (["theory", "optimum", "--d", "2", "--n", "5", "--x-cov-diag", "1,-2"], "comma-separated positive"),
        (["theory", "optimum", "--d", "2", "--n", "5", "--noise", "-1"], "noise_std must be a finite number >= 0"),
        (["theory", "compare", "{tmp}"], "holds no trained model"),
        (["theory", "flow", "task.d=0", "--out", "{tmp}/f.png"], "task.d must be >= 1"),
        (["theory", "flow", "--init", "ones", "--out", "{tmp}/f.png"], "init must be one of"),
    ],
)
def test_usage_errors_exit_2(argv, fragment, tmp_path, capsys):
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    assert fragment in capsys.readouterr().err


def test_compare_a_trained_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "model.layers=1", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    got = run_json(["theory", "compare", str(out), "--json"], capsys)
    model, cfg, _ = load_model(out)
    gamma, opt = effective_gamma(model), lsa_optimum(8, np.eye(3))
    assert got["optimal_loss"] == pytest.approx(opt.loss, rel=1e-12)  # 3·4/12 = 1
    assert got["model_exact_loss"] == pytest.approx(lsa_loss(gamma, 8, np.eye(3)), rel=1e-12)
    assert got["relative_distance"] == pytest.approx(np.linalg.norm(gamma - opt.gamma) / np.linalg.norm(opt.gamma))
    assert got["gap"] == pytest.approx(got["trained_loss"] - opt.loss)
    assert main(["theory", "compare", str(out)]) == 0
    assert "‖Γ − Γ*‖_F / ‖Γ*‖_F" in capsys.readouterr().out


def test_compare_a_descriptor_run(tmp_path, capsys):
    out = tmp_path / "run"
    extra = ["task.x_mean_std=1", "task.descriptor=mean", "model.param=sparse", "model.init=balanced"]
    assert main(["train", *TINY, *extra, "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    got = run_json(["theory", "compare", str(out), "--json"], capsys)
    _, cfg, _ = load_model(out)
    assert got["weights"] == "B"
    assert got["optimal_loss"] == pytest.approx(task_problem(cfg.task).optimum()[1], rel=1e-12)
    assert got["model_exact_loss"] >= got["optimal_loss"]
    assert main(["theory", "compare", str(tmp_path / "missing")]) == 2


def test_flow_writes_the_figure(tmp_path, capsys):
    figure = tmp_path / "flow.png"
    argv = ["theory", "flow", "task.d=2", "task.n=6", "--t-max", "200", "--sgd-steps", "20", "--sgd-lr", "0.01"]
    got = run_json([*argv, "--sgd-batch", "200", "--out", str(figure), "--json"], capsys)
    assert abs(got["final_gap"]) < 1e-6 and got["time_to_1e-6"] is not None
    assert got["sgd_final_loss"] < got["initial_loss"]
    assert figure.stat().st_size > 10_000
    got = run_json(["theory", "flow", "task.d=2", "task.x_mean_std=1", "task.descriptor=mean", "--n-infinite",
                    "--out", str(figure), "--json"], capsys)  # fmt: skip
    assert abs(got["optimal_loss"]) < 1e-10 and abs(got["final_gap"]) < 1e-6


def test_descriptor_and_nonlinear_tables(capsys):
    rows = run_json(["theory", "descriptors", "--d", "3", "--n", "10,inf", "--json"], capsys)
    assert [r["n"] for r in rows] == [10, "inf"]
    assert rows[0]["gap"] > 0 and abs(rows[1]["with"]) < 1e-10
    assert rows[1]["xx"] == pytest.approx(1.0) and rows[1]["sx"] == pytest.approx(-1.0)  # standardisation
    rows = run_json(["theory", "nonlinear", "--d", "3", "--n", "10", "--json"], capsys)
    steps = {r["response"]: r["step_size"] for r in rows}
    assert steps["identity"] == pytest.approx(10 / 14) and steps["relu"] == pytest.approx(10 / 19)
    assert all(r["loss"] <= r["loss_linear_step"] + 1e-12 for r in rows)


def test_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["theory", "--help"])
    assert info.value.code == 0 and "optimum" in capsys.readouterr().out


def test_compare_uses_the_theory_of_the_run_response(tmp_path, capsys):
    """task.response=relu, σ = 0.5 was compared with the linear optimum; its optimum is one GD step with
    η* = n/(n + 2d + 3 + 4σ²) (mean normalisation) and L* = c − dα²/κ, α = 1/4, c = d/2 + σ²."""
    out = tmp_path / "run"
    assert main(["train", *TINY, "model.layers=1", "task.response=relu", "task.noise_std=0.5", "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    capsys.readouterr()
    got = run_json(["theory", "compare", str(out), "--json"], capsys)
    d, n, s2 = 3, 8, 0.25
    eta = n / (n + 2 * d + 3 + 4 * s2)
    alpha, c = 0.25, d / 2 + s2
    assert got["optimal_loss"] == pytest.approx(c - d * alpha * eta, rel=1e-12)
    model, _, _ = load_model(out)
    gamma = effective_gamma(model)
    kappa = alpha / eta  # L(Γ) = κ‖Γ‖²_F − 2α tr Γ + c
    assert got["model_exact_loss"] == pytest.approx(
        kappa * (gamma**2).sum() - 2 * alpha * np.trace(gamma) + c, rel=1e-10
    )
    assert got["relative_distance"] == pytest.approx(np.linalg.norm(gamma - eta * np.eye(d)) / (eta * np.sqrt(d)))
    assert got["model_exact_loss"] >= got["optimal_loss"]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["task.response=square"], "no exact theory for task.response=square"),
        (["task.response=tanh", "task.condition_number=4"], "this run sets task.condition_number"),
    ],
)
def test_compare_refuses_responses_without_theory_in_one_line(extra, fragment, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "model.layers=1", *extra, "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["theory", "compare", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1


def test_flow_without_out_writes_nothing(tmp_path, capsys, monkeypatch):
    """`iclab theory flow` writes a figure only where --out asks: nothing appears in the current directory."""
    monkeypatch.chdir(tmp_path)
    got = run_json(["theory", "flow", "task.d=2", "task.n=6", "--t-max", "20", "--json"], capsys)
    assert got["figure"] is None and abs(got["final_gap"]) < 1e-6
    assert main(["theory", "flow", "task.d=2", "task.n=6", "--t-max", "20"]) == 0
    assert "figure: none written (--out PNG writes one)" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- issue 12 item 4: one-hot descriptors


def test_descriptors_print_losses_zero_up_to_rounding_as_zero(capsys):
    """d = 10, n = ∞: the optimum with μ has loss 0 (float64 gives ~1e-12); text and JSON say 0."""
    rows = run_json(["theory", "descriptors", "--d", "10", "--n", "inf", "--json"], capsys)
    assert rows[0]["with"] == 0.0 and rows[0]["gap"] == rows[0]["without"] > 9
    assert rows[0]["xs"] == 0.0 and rows[0]["ss"] == 0.0
    assert main(["theory", "descriptors", "--d", "10", "--n", "inf"]) == 0
    line = capsys.readouterr().out.splitlines()[-1].split()
    assert line[0] == "inf" and line[2] == "0" and "e-" not in " ".join(line)


def test_descriptors_with_one_hot_over_fixed_means(capsys):
    """--descriptor onehot --means K: the K means a run with seed=S task.n_means=K draws; the losses are the
    theory's (descriptor_problem with those means); n = ∞ standardises (B_sx = −M: coefficient −1)."""
    from iclab.config import parse_config
    from iclab.tasks import make_task
    from iclab.theory import descriptor_problem

    argv = ["theory", "descriptors", "--d", "3", "--tau", "1.5", "--descriptor", "onehot", "--means", "5", "--seed",
            "4", "--n", "10,inf", "--json"]  # fmt: skip
    rows = run_json(argv, capsys)
    cfg = parse_config({}, ["task.d=3", "task.x_mean_std=1.5", "task.n_means=5", "task.descriptor=onehot"]).task
    means = make_task(cfg, 4).means.numpy()
    for n, row in zip((10, float("inf")), rows, strict=True):
        without = descriptor_problem(n, 3, descriptor="none", means=means).optimum()[1]
        with_side = descriptor_problem(n, 3, descriptor="onehot", means=means).optimum()[1]
        assert row["without"] == pytest.approx(without, rel=1e-10)
        assert row["with"] == pytest.approx(with_side, rel=1e-10, abs=1e-9)
    assert rows[0]["gap"] > 0 and rows[1]["with"] == 0.0
    assert rows[1]["xx"] == pytest.approx(1.0) and rows[1]["sx"] == pytest.approx(-1.0)
    assert main(argv[:-1]) == 0
    assert "one-hot" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--descriptor", "onehot"], "--descriptor onehot needs --means K >= 1"),
        (["--means", "3", "--tau", "0"], "--tau must be > 0 with --means"),
        (["--means", "-1"], "--means"),
        (["--descriptor", "ids"], "--descriptor"),
    ],
)
def test_descriptors_usage_errors(argv, fragment, capsys):
    assert main(["theory", "descriptors", "--d", "3", "--n", "5", *argv]) == 2
    err = capsys.readouterr().err
    assert fragment in err and len(err.strip().splitlines()) == 1

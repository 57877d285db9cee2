"""Descriptor-aware learners (issue 12 item 3): centred GD and the exact finite-n optimum of a one-layer LSA,
against float64 numpy, the exact theory (Monte Carlo within 3 standard errors), `iclab eval` and the probe."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import task_config
from iclab.cli import main
from iclab.errors import UserError
from iclab.learners import Bilinear, CentredGD
from iclab.learners.specs import LearnerSpecError, parse_learner
from iclab.seeding import make_generator
from iclab.tasks import make_task
from iclab.theory import mc_loss
from iclab.theory.descriptors import (
    centred_gd_loss,
    centred_gd_step,
    descriptor_problem,
    standardising_predictor,
    task_problem,
)

F64 = torch.float64
SAMPLES = 40_000  # Monte Carlo prompts (3 s.e. ≈ 2 % of the loss here)
# d = 3, n = 10: Gaussian means with the mean descriptor, and 4 fixed means with the one-hot descriptor
TASKS = {
    "mean": ["task.d=3", "task.n=10", "task.x_mean_std=1", "task.descriptor=mean"],
    "onehot": ["task.d=3", "task.n=10", "task.x_mean_std=1.5", "task.n_means=4", "task.descriptor=onehot"],
}


def make(kind: str, *extra: str):
    return make_task(task_config("isotropic", *TASKS[kind], *extra), seed=3)


def numpy_prompts(task, batch: int = 7):
    p = task.sample(batch, make_generator(0, "descriptor-learners"), dtype=F64)
    return p, (p.xs.numpy(), p.ys.numpy(), p.xq.numpy(), p.descriptor.numpy())


@pytest.mark.parametrize("kind", sorted(TASKS))
def test_centred_gd_equals_numpy(kind):
    """ŷ = x_qᵀ (lr/k) Σ_{i ≤ k} y_i (x_i − μ) for every prompt and prefix, by a float64 numpy loop."""
    task = make(kind, "task.n_queries=2")
    p, (xs, ys, xq, side) = numpy_prompts(task)
    learner = parse_learner("centred_gd:lr=0.7", task)
    means = task.means.numpy() if kind == "onehot" else np.eye(3)
    expected = np.zeros((p.batch, p.n, 2))
    for b in range(p.batch):
        mu = side[b] @ means  # the mean itself, or Mᵀ onehot
        for k in range(1, p.n + 1):
            w = 0.7 / k * sum(ys[b, i] * (xs[b, i] - mu) for i in range(k))
            expected[b, k - 1] = xq[b] @ w
    np.testing.assert_allclose(learner.predict_prefixes(p.xs, p.ys, p.xq, p.descriptor).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(learner.predict(p.xs, p.ys, p.xq, p.descriptor).numpy(), expected[:, -1], rtol=1e-12)


@pytest.mark.parametrize("kind", sorted(TASKS))
def test_descriptor_optimum_equals_numpy(kind):
    """ŷ = h_fᵀ B* f_q with f = (x, s), h_f = (1/k) Σ y_i f_i, B* = task_problem(task).optimum()."""
    task = make(kind, "task.n_queries=2")
    p, (xs, ys, xq, side) = numpy_prompts(task)
    learner = parse_learner("descriptor_optimum", task)
    b_star, loss = task_problem(task.cfg, task.seed).optimum()
    np.testing.assert_allclose(learner.b.numpy(), b_star, rtol=0, atol=0)
    assert learner.loss == loss and learner.name == "descriptor_optimum(n=10)"
    expected = np.zeros((p.batch, p.n, 2))
    for b in range(p.batch):
        f = np.concatenate([xs[b], np.tile(side[b], (p.n, 1))], axis=1)
        fq = np.concatenate([xq[b], np.tile(side[b], (2, 1))], axis=1)
        for k in range(1, p.n + 1):
            h = (ys[b, :k, None] * f[:k]).mean(0)
            expected[b, k - 1] = fq @ b_star.T @ h
    got = learner.predict_prefixes(p.xs, p.ys, p.xq, p.descriptor).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("kind", sorted(TASKS))
@pytest.mark.parametrize("spec", ["centred_gd", "centred_gd:lr=0.3", "centred_gd:n=inf"])
def test_centred_gd_monte_carlo_matches_the_exact_loss_of_its_b(kind, spec):
    """Centred GD is B = lr · standardising_predictor (Λ = I): its Monte Carlo loss is QuadraticLoss.loss(B)
    within 3 s.e., and the closed form centred_gd_loss equals that exact loss."""
    task = make(kind, "task.noise_std=0.5")
    learner = parse_learner(spec, task)
    means = None if kind == "mean" else task.means.numpy()
    problem = task_problem(task.cfg, task.seed)
    exact = problem.loss(learner.lr * standardising_predictor(3, task.cfg.descriptor, means))
    fixed = {"tau": 1.0} if kind == "mean" else {"means": means}
    assert centred_gd_loss(learner.lr, 10, 3, **fixed, noise_std=0.5) == pytest.approx(exact, rel=1e-12)
    estimate = mc_loss(learner, task, SAMPLES, seed=11)
    print(f"{kind} {learner.name}: MC {estimate.mean:.4f} ± {estimate.sem:.4f}, exact {exact:.4f}")
    assert abs(estimate.z_score(exact)) < 3


@pytest.mark.parametrize("kind", sorted(TASKS))
def test_descriptor_optimum_monte_carlo_matches_l_star(kind):
    """The finite-n optimum's Monte Carlo loss is the theory's L* within 3 s.e.; it beats centred GD at its
    best step, which beats predicting 0."""
    task = make(kind)
    optimum = parse_learner("descriptor_optimum", task)
    estimate = mc_loss(optimum, task, SAMPLES, seed=12)
    centred = mc_loss(parse_learner("centred_gd", task), task, SAMPLES, seed=12)
    zero = mc_loss(parse_learner("zero", task), task, SAMPLES, seed=12)
    print(f"{kind}: optimum MC {estimate.mean:.4f} ± {estimate.sem:.4f}, L* {optimum.loss:.4f}; "
          f"centred {centred.mean:.4f}; zero {zero.mean:.4f}")  # fmt: skip
    assert abs(estimate.z_score(optimum.loss)) < 3
    assert estimate.mean < centred.mean < zero.mean


def test_centred_gd_default_step_is_optimal_at_n_and_one_at_infinity():
    """lr* = T₂/T₁ minimises the exact loss (against a grid) at n; n = ∞ gives 1 for Λ = I, n/(n + 2(d + 1))
    for Λ = Σ_w = I, τ = 1, σ = 0; with an anisotropic Λ the n → ∞ step is tr(ΛΣ_wE)/tr(ΛΣ_wΛE)."""
    task = make("mean")
    assert parse_learner("centred_gd", task).lr == pytest.approx(10 / 18, rel=1e-12)
    assert parse_learner("centred_gd:n=inf", task).lr == pytest.approx(1.0, rel=1e-12)
    rng = np.random.default_rng(0)
    means, root = rng.normal(size=(4, 3)), rng.normal(size=(3, 3))
    x_cov = root @ root.T + 0.3 * np.eye(3)
    setting = {"means": means, "x_cov": x_cov, "w_cov": np.diag([1.0, 2.0, 0.5]), "noise_std": 0.3}
    for n in (5, 40, math.inf):
        best = centred_gd_step(n, 3, **setting)
        grid = best * np.linspace(0.9, 1.1, 21)
        losses = [centred_gd_loss(lr, n, 3, **setting) for lr in grid]
        assert int(np.argmin(losses)) == 10
        exact = descriptor_problem(n, 3, descriptor="onehot", **setting)  # the closed form against Q, r, c
        b = best * standardising_predictor(3, "onehot", means)
        assert centred_gd_loss(best, n, 3, **setting) == pytest.approx(exact.loss(b), rel=1e-10)
    second = x_cov + means.T @ means / 4
    lw = x_cov @ setting["w_cov"]
    assert centred_gd_step(math.inf, 3, **setting) == pytest.approx(
        np.trace(lw @ second) / np.trace(lw @ x_cov @ second), rel=1e-12
    )


def test_learners_refuse_prompts_without_a_descriptor():
    plain = make_task(task_config("isotropic", "task.d=3"), seed=0)
    for spec in ("centred_gd", "descriptor_optimum"):
        with pytest.raises(LearnerSpecError, match=f"{spec} reads the prompts' descriptor"):
            parse_learner(spec, plain)
    task = make("mean")
    p = task.sample(4, make_generator(0, "x"), dtype=F64)
    for learner in (parse_learner("centred_gd", task), parse_learner("descriptor_optimum", task)):
        for call in (learner.predict, learner.predict_prefixes):
            with pytest.raises(UserError, match=r"^(centred_gd|descriptor_optimum\(n=10\)) needs prompts with a "):
                call(p.xs, p.ys, p.xq, None)
    with pytest.raises(LearnerSpecError, match="n must be an integer"):
        parse_learner("descriptor_optimum:n=0", task)
    with pytest.raises(LearnerSpecError, match="not both"):
        parse_learner("centred_gd:lr=1:n=5", task)
    with pytest.raises(LearnerSpecError, match="give lr"):
        parse_learner("centred_gd", make_task(task_config("mean_shift", "task.condition_number=3",
                                                          "task.rotation=per_prompt"), seed=0))  # fmt: skip
    with pytest.raises(LearnerSpecError, match="task.response=identity"):
        parse_learner("descriptor_optimum", make("mean", "task.response=relu"))
    with pytest.raises(ValueError, match="square"):
        Bilinear(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="lr"):
        CentredGD(0.0)


def test_eval_cli_centred_gd_beats_zero_and_matches_the_theory(tmp_path, capsys):
    """Acceptance: `iclab eval RUN --learners centred_gd zero` on a mean-descriptor run: centred GD beats 0 and
    its loss at k = n is the theory's one-step loss within 3 s.e."""
    run = tmp_path / "run"
    assert main(["train", *TASKS["mean"], "train.steps=50", "eval.batch_size=500", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--learners", "centred_gd", "zero", "descriptor_optimum", "--batch-size", "4000",
                 "--json"]) == 0  # fmt: skip
    curves = {c["name"]: c for c in json.loads(capsys.readouterr().out)}
    centred, zero, optimum = curves["centred_gd(lr=0.5556)"], curves["zero"], curves["descriptor_optimum(n=10)"]
    exact = centred_gd_loss(10 / 18, 10, 3, tau=1.0)  # 2.6667
    print(f"eval: centred_gd {centred['mse'][-1]:.4f} ± {centred['sem'][-1]:.4f} (theory {exact:.4f}), "
          f"optimum {optimum['mse'][-1]:.4f}, zero {zero['mse'][-1]:.4f}")  # fmt: skip
    assert centred["mse"][-1] + 3 * centred["sem"][-1] < zero["mse"][-1] - 3 * zero["sem"][-1]
    assert abs(centred["mse"][-1] - exact) < 3 * centred["sem"][-1]
    assert optimum["mse"][-1] < centred["mse"][-1]


@pytest.mark.parametrize("kind", sorted(TASKS))
def test_descriptor_candidate_paths_equal_their_learners(kind):
    """The probe's descriptor families: path(value) = learner(value).predict_prefixes; none without a descriptor."""
    from iclab.probe.candidates import descriptor_families

    task = make(kind, "task.n_queries=2")
    p = task.sample(20, make_generator(0, "paths"), dtype=F64)
    families = descriptor_families(p, task)
    assert [f.name for f in families] == ["centred_gd", "descriptor_optimum"]
    for family in families:
        value = family.grid[7] if family.grid else None
        expected = family.learner(None, value).predict_prefixes(p.xs, p.ys, p.xq, p.descriptor)
        torch.testing.assert_close(family.path(value, 3)[0], expected, rtol=1e-12, atol=1e-12)
    plain = make_task(task_config("isotropic", "task.d=3"), seed=0)
    assert descriptor_families(plain.sample(5, make_generator(0, "paths"), dtype=F64), plain) == []


def test_probe_names_the_descriptor_optimum_on_a_trained_descriptor_lsa(tmp_path):
    """A one-layer sparse LSA with the mean descriptor, trained close to its optimum (d = 3, n = 10): the probe's
    best candidate is the exact finite-n optimum, ahead of ridge, GD and centred GD."""
    from iclab.config import parse_config
    from iclab.probe import ProbeSettings, probe_model
    from iclab.runs import load_model
    from iclab.train import train

    overrides = [*TASKS["mean"], "model.param=sparse", "model.init=balanced", "train.steps=500", "train.lr=0.05",
                 "train.batch_size=256", "eval.batch_size=500"]  # fmt: skip
    train(parse_config({}, overrides), tmp_path / "run", progress=False)
    model, cfg, _ = load_model(tmp_path / "run")
    settings = ProbeSettings(prompts=300, probe_prompts=300, queries=5, max_iterations=3, sweeps=2)
    result = probe_model(model, make_task(cfg.task, cfg.seed), settings, progress=False)
    ranked = result.candidates.set_index("family")["difference"]
    print(ranked.to_string())
    assert result.candidates.iloc[0]["family"] == "descriptor_optimum"
    assert {"centred_gd", "ridge", "gd"} <= set(ranked.index)
    assert result.layers.iloc[0]["best"] == "descriptor_optimum"

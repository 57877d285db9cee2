"""Every learner (algorithms and models) × every task variant through the same checks:
shape (B, m), dtype preserved, finite, deterministic, no cross-talk between prompts, prefixes consistent."""

from __future__ import annotations

import pytest
import torch

from conftest import TASK_VARIANTS, task_config
from iclab.config import parse_config
from iclab.kernels import Kernel
from iclab.learners import (
    Averaging,
    FunctionalGD,
    GPPosterior,
    GradientDescent,
    KernelRidge,
    KNearest,
    LeastSquares,
    PreconditionedGD,
    Ridge,
    Zero,
    from_model,
)
from iclab.models import build_model
from iclab.tasks import make_task

MODELS = {
    "lsa-full-1": ["model.param=full"],
    "lsa-sparse-2": ["model.param=sparse", "model.layers=2"],
    "relu_attention-2": ["model.name=kernel_attention", "model.activation=relu", "model.layers=2"],
    "softmax_attention-1": ["model.name=kernel_attention", "model.activation=softmax", "model.param=sparse"],
    "exp_attention-1": ["model.name=kernel_attention", "model.activation=exp"],
    "mlp_lsa-1": ["model.name=mlp_lsa", "model.mlp_hidden=8", "model.feature_dim=4"],
}


def make_learner(name: str, task):
    if name in MODELS:
        cfg = parse_config({}, [*MODELS[name], "model.heads=2"]).model
        return from_model(build_model(cfg, task, torch.Generator().manual_seed(0)).double())
    return {
        "least_squares": LeastSquares(),
        "ridge": Ridge(0.1),
        "gd": GradientDescent(3, 0.5),
        "pgd": PreconditionedGD(2, 0.5, torch.eye(task.d) * 0.7),
        "averaging": Averaging(),
        "knn": KNearest(2),
        "zero": Zero(),
        "functional_gd": FunctionalGD(Kernel("exp", 2.0), 3, 0.5),
        "kernel_ridge": KernelRidge(Kernel("relu"), 0.1),
        "gp_posterior": GPPosterior(Kernel("linear"), 0.1),
    }[name]


LEARNER_NAMES = [
    "least_squares", "ridge", "gd", "pgd", "averaging", "knn", "zero", "functional_gd", "kernel_ridge",
    "gp_posterior", *MODELS,
]  # fmt: skip


@pytest.mark.parametrize("variant", sorted(TASK_VARIANTS))
@pytest.mark.parametrize("name", LEARNER_NAMES)
def test_conformance(name, variant):
    task = make_task(task_config(variant, "task.n=6"), seed=0)
    learner = make_learner(name, task)
    for dtype in (torch.float32, torch.float64):
        p = task.sample(5, torch.Generator().manual_seed(1), dtype=dtype)
        out = learner.predict(p.xs, p.ys, p.xq, p.descriptor)
        assert out.shape == (5, task.cfg.n_queries) and out.dtype == dtype
        assert torch.isfinite(out).all()
        assert torch.equal(out, learner.predict(p.xs, p.ys, p.xq, p.descriptor))  # deterministic
        part = p.slice(1, 3)
        alone = learner.predict(part.xs, part.ys, part.xq, part.descriptor)
        tol = 2e-3 if dtype == torch.float32 else 1e-9  # float32: ill-conditioned n≈d least squares
        torch.testing.assert_close(alone, out[1:3], rtol=tol, atol=tol)  # no cross-talk
        prefixes = learner.predict_prefixes(p.xs, p.ys, p.xq, p.descriptor)
        assert prefixes.shape == (5, p.n, task.cfg.n_queries)
        torch.testing.assert_close(prefixes[:, -1], out, rtol=tol, atol=tol)

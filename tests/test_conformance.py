"""Every learner (each registered spec and each registered model family) × every task variant (the named ones
and the defaults of each registered task family) through the same checks: shape (B, m), dtype preserved,
finite, deterministic, no cross-talk between prompts, prefixes consistent. Built from the registries, so a
new family or spec is checked without editing this file."""

from __future__ import annotations

import pytest
import torch

from conftest import TASK_VARIANTS, task_config
from iclab.config import parse_config
from iclab.learners import from_model
from iclab.learners.specs import LEARNER_SPECS, LearnerSpecError, parse_learner
from iclab.models import build_model
from iclab.registry import MODELS, TASKS
from iclab.tasks import make_task

# small sizes for models with widths (applied only to families that have the key)
MODEL_SIZES = {"heads": "2", "mlp_hidden": "8", "feature_dim": "4", "layers": "2"}
# a few extra model settings worth checking beside each family's defaults
MODEL_VARIANTS = {
    "lsa-sparse": ["model.name=lsa", "model.param=sparse"],
    "lsa-block": ["model.name=lsa", "model.param=block", "model.init=zero_block"],
    "relu-attention": ["model.name=kernel_attention", "model.activation=relu"],
    "softmax-attention": ["model.name=kernel_attention", "model.activation=softmax", "model.param=sparse"],
    "exp-attention": ["model.name=kernel_attention", "model.activation=exp", "model.layers=1"],
}
SPEC_ARGS = {
    "gd": "gd:steps=3:lr=0.5",
    "pgd": "pgd:steps=2:lr=0.5",
    "fgd": "fgd:steps=3:lr=0.5",
    "net": "net:hidden=8:steps=30",
    "boosted_trees": "boosted_trees:trees=5:depth=2",
}  # fast sizes


def model_overrides(name: str) -> list[str]:
    if name in MODEL_VARIANTS:
        overrides = MODEL_VARIANTS[name]
        family = overrides[0].split("=")[1]
    else:
        overrides, family = [f"model.name={name}"], name
    fields = MODELS.get(family).config.model_fields
    given = {item.split("=")[0] for item in overrides}
    return [
        *overrides,
        *(f"model.{k}={v}" for k, v in MODEL_SIZES.items() if k in fields and f"model.{k}" not in given),
    ]


TASK_CASES = sorted(TASK_VARIANTS) + [f"family:{name}" for name in TASKS.names()]
LEARNER_CASES = [f"spec:{name}" for name in LEARNER_SPECS] + [f"model:{m}" for m in [*MODELS.names(), *MODEL_VARIANTS]]


def make_case_task(case: str):
    if case.startswith("family:"):
        return make_task(parse_config({}, [f"task.name={case[7:]}", "task.n=6", "task.n_queries=2"]).task, seed=0)
    return make_task(task_config(case, "task.n=6"), seed=0)


def make_learner(case: str, task):
    kind, name = case.split(":", 1)
    if kind == "model":
        cfg = parse_config({}, model_overrides(name)).model
        try:
            cfg.check_task(task.cfg)
        except ValueError as err:
            pytest.skip(f"{name} cannot read this task's prompts: {err}")
        return from_model(build_model(cfg, task, torch.Generator().manual_seed(0)).double())
    try:
        return parse_learner(SPEC_ARGS.get(name, name), task, default_lr=0.5)
    except LearnerSpecError as err:
        pytest.skip(f"{name} does not apply to this task: {err}")


@pytest.mark.parametrize("task_case", TASK_CASES)
@pytest.mark.parametrize("learner_case", LEARNER_CASES)
def test_conformance(learner_case, task_case):
    task = make_case_task(task_case)
    learner = make_learner(learner_case, task)
    m = task.cfg.n_queries
    for dtype in (torch.float32, torch.float64):
        p = task.sample(5, torch.Generator().manual_seed(1), dtype=dtype)
        out = learner.predict(p.xs, p.ys, p.xq, p.descriptor)
        assert out.shape == (5, m) and out.dtype == dtype
        assert torch.isfinite(out).all()
        assert torch.equal(out, learner.predict(p.xs, p.ys, p.xq, p.descriptor))  # deterministic
        part = p.slice(1, 3)
        alone = learner.predict(part.xs, part.ys, part.xq, part.descriptor)
        tol = 2e-3 if dtype == torch.float32 else 1e-9  # float32: ill-conditioned n≈d least squares
        torch.testing.assert_close(alone, out[1:3], rtol=tol, atol=tol)  # no cross-talk
        prefixes = learner.predict_prefixes(p.xs, p.ys, p.xq, p.descriptor)
        assert prefixes.shape == (5, p.n, m)
        torch.testing.assert_close(prefixes[:, -1], out, rtol=tol, atol=tol)


@pytest.mark.parametrize("family", MODELS.names())
def test_every_model_family_implements_the_interface(family):
    """num_layers, per-layer states and read-outs (the last one is the prediction) for each registered family."""
    task = make_case_task("family:linear")
    cfg = parse_config({}, model_overrides(family)).model
    model = build_model(cfg, task, torch.Generator().manual_seed(0)).double()
    p = task.sample(4, torch.Generator().manual_seed(2), dtype=torch.float64)
    states = model.layer_states(p.xs, p.ys, p.xq, p.descriptor)
    readouts = model.layer_readouts(p.xs, p.ys, p.xq, p.descriptor)
    assert len(states) == len(readouts) == model.num_layers >= 1
    assert all(state.shape[:2] == (4, task.cfg.n_queries) for state in states)
    torch.testing.assert_close(readouts[-1], model.predict(p.xs, p.ys, p.xq, p.descriptor), rtol=0, atol=1e-12)

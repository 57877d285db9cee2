"""Effective Γ / B of one-layer LSAs and the reverse map, checked on the models' own predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import task_config
from iclab.config import parse_config
from iclab.learners import PreconditionedGD
from iclab.models import build_model
from iclab.models.lsa import LSA, LSAShape
from iclab.tasks import make_task
from iclab.theory import effective_bilinear, effective_gamma, lsa_from_bilinear, lsa_from_gamma

F64 = torch.float64


def prompts(variant: str, *extra: str, batch: int = 16):
    task = make_task(task_config(variant, *extra), seed=0)
    return task, task.sample(batch, torch.Generator().manual_seed(2), dtype=F64)


def bilinear_prediction(b: np.ndarray, p) -> torch.Tensor:
    """ŷ = h_fᵀ B f_q computed by hand, f = (x, descriptor)."""
    side = [] if p.descriptor is None else [p.descriptor]
    fs = torch.cat([p.xs, *[s.unsqueeze(1).expand(-1, p.n, -1) for s in side]], dim=-1)
    fq = torch.cat([p.xq, *[s.unsqueeze(1).expand(-1, p.xq.shape[1], -1) for s in side]], dim=-1)
    h = torch.einsum("bnf,bn->bf", fs, p.ys) / p.n
    return torch.einsum("bf,fg,bmg->bm", h, torch.from_numpy(b), fq)


@pytest.mark.parametrize("heads", [1, 3])
def test_sparse_model_gamma_reproduces_its_predictions(heads):
    task, p = prompts("many_queries", "task.d=4")
    cfg = parse_config({}, ["model.param=sparse", f"model.heads={heads}", "model.init=gaussian"]).model
    model = build_model(cfg, task, torch.Generator().manual_seed(1)).double()
    gamma = effective_gamma(model)
    attn = model.blocks[0].attn
    manual = -torch.einsum("h,hij->ji", attn.value, attn.kq_block).detach().numpy()  # Γ = −Σ v_h A_hᵀ
    np.testing.assert_allclose(gamma, manual, rtol=1e-12)
    expected = PreconditionedGD(1, 1.0, torch.from_numpy(gamma)).predict(p.xs, p.ys, p.xq)
    torch.testing.assert_close(model.predict(p.xs, p.ys, p.xq), expected, rtol=1e-10, atol=1e-10)


def test_full_model_with_only_the_sparse_blocks():
    task, p = prompts("mean_shift", "task.d=3")
    cfg = parse_config({}, ["model.param=full", "model.init=zero_block", "model.heads=2"]).model
    model = build_model(cfg, task, torch.Generator().manual_seed(4)).double()
    b = effective_bilinear(model)
    assert b.shape == (6, 6)
    torch.testing.assert_close(
        model.predict(p.xs, p.ys, p.xq, p.descriptor), bilinear_prediction(b, p), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("param", ["sparse", "full"])
def test_lsa_from_gamma_round_trip(param):
    _, p = prompts("isotropic", "task.d=3", "task.n=9")
    gamma = np.random.default_rng(0).normal(size=(3, 3))
    model = lsa_from_gamma(gamma, param)
    np.testing.assert_allclose(effective_gamma(model), gamma, rtol=1e-12, atol=1e-14)
    expected = PreconditionedGD(1, 1.0, torch.from_numpy(gamma)).predict(p.xs, p.ys, p.xq)
    torch.testing.assert_close(model.predict(p.xs, p.ys, p.xq), expected, rtol=1e-10, atol=1e-10)
    attn = model.blocks[0].attn
    assert torch.linalg.matrix_norm(attn.kq()[0]).item() == pytest.approx(abs(attn.pv()[0, 3, 3].item()))  # balanced


@pytest.mark.parametrize("variant", ["mean_shift", "fixed_means_onehot"])
def test_lsa_from_bilinear_with_a_descriptor(variant):
    task, p = prompts(variant)
    features = task.d + task.descriptor_dim
    b = np.random.default_rng(1).normal(size=(features, features))
    model = lsa_from_bilinear(b, task.d)
    np.testing.assert_allclose(effective_bilinear(model), b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        model.predict(p.xs, p.ys, p.xq, p.descriptor), bilinear_prediction(b, p), rtol=1e-10, atol=1e-10
    )


def test_errors():
    with pytest.raises(ValueError, match="one-layer LSA, got model.layers=2"):
        effective_gamma(LSA(LSAShape(d=2, layers=2)))
    with pytest.raises(ValueError, match="must be an iclab LSA"):
        effective_bilinear(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="gamma must be square"):
        lsa_from_gamma(np.ones((2, 3)))
    with pytest.raises(ValueError, match="param must be one of sparse, full"):
        lsa_from_gamma(np.eye(2), "dense")


@pytest.mark.parametrize("variant", ["isotropic", "mean_shift"])
def test_full_model_bilinear_is_the_part_odd_in_the_labels(variant):
    """A random full LSA: its prediction's odd part in y, (ŷ(y) − ŷ(−y))/2, is exactly h_fᵀ B f_q — this
    includes the term the label rows of W_PV and W_KQ contribute."""
    task, p = prompts(variant, "task.n_queries=2")
    cfg = parse_config({}, ["model.param=full", "model.heads=2"]).model
    model = build_model(cfg, task, torch.Generator().manual_seed(4)).double()
    up = model.predict(p.xs, p.ys, p.xq, p.descriptor)
    down = model.predict(p.xs, -p.ys, p.xq, p.descriptor)
    expected = bilinear_prediction(effective_bilinear(model), p)
    torch.testing.assert_close((up - down) / 2, expected, rtol=1e-10, atol=1e-10)

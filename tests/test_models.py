"""The LSA model: read-out sign, the GD construction, masking, hooks, inits, token formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import task_config
from iclab.config import parse_config
from iclab.constructions import gd_model
from iclab.learners import GradientDescent, from_model
from iclab.models import build_model, hook_names, run_with_cache
from iclab.models.lsa import LSA, LSAShape
from iclab.prompts import interleaved_tokens, stacked_tokens
from iclab.tasks import make_task

F64 = torch.float64


def sample(variant: str = "isotropic", *extra: str, batch: int = 4):
    task = make_task(task_config(variant, *extra), seed=0)
    return task, task.sample(batch, torch.Generator().manual_seed(3), dtype=F64)


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("lr", [0.3, 0.9])
def test_gd_construction_equals_gradient_descent(layers, lr):
    _, p = sample("many_queries", "task.d=4")
    model = gd_model(4, layers, lr)  # von Oswald et al.: W_KQ = I on x, W_PV = −lr on the label
    got = model.predict(p.xs, p.ys, p.xq)
    expected = GradientDescent(layers, lr).predict(p.xs, p.ys, p.xq)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def test_one_layer_effective_preconditioner():
    """ŷ = x_qᵀ Γ (1/n) Σ y_i x_i with Γ = −v Aᵀ for a sparse one-layer LSA."""
    _, p = sample("isotropic", "task.d=3", "task.n=8")
    model = LSA(LSAShape(d=3, param="sparse")).double()
    a = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    with torch.no_grad():
        model.blocks[0].attn.kq_block.copy_(a.unsqueeze(0))
        model.blocks[0].attn.value.fill_(0.7)
    h = torch.einsum("bnd,bn->bd", p.xs, p.ys) / p.n
    expected = torch.einsum("bmd,de,be->bm", p.xq, -0.7 * a.T, h)
    torch.testing.assert_close(model.predict(p.xs, p.ys, p.xq), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("param", ["full", "sparse", "block"])
def test_hooked_and_fast_paths_agree_and_queries_are_masked(param):
    task, p = sample("mean_shift", "task.n_queries=3")
    cfg = parse_config({}, [f"model.param={param}", "model.layers=2", "model.heads=2"]).model
    model = build_model(cfg, task, torch.Generator().manual_seed(0)).double()
    fast = model.predict(p.xs, p.ys, p.xq, p.descriptor)
    hooked, cache = run_with_cache(model, lambda: model.predict(p.xs, p.ys, p.xq, p.descriptor))
    torch.testing.assert_close(fast, hooked, rtol=1e-10, atol=1e-10)
    assert set(cache) == set(hook_names(model))
    n, m, width = p.n, 3, task.d + 1 + task.d
    assert cache["blocks.1.attn.scores"].shape == (4, 2, n + m, n)
    assert cache["blocks.0.resid_post"].shape == (4, n + m, width)
    # a query never influences the context or another query
    moved = p.xq.clone()
    moved[:, 0] += 1.0
    _, cache2 = run_with_cache(model, lambda: model.predict(p.xs, p.ys, moved, p.descriptor))
    resid, resid2 = cache["blocks.1.resid_post"], cache2["blocks.1.resid_post"]
    torch.testing.assert_close(resid[:, :n], resid2[:, :n], rtol=0, atol=0)
    torch.testing.assert_close(resid[:, n + 1 :], resid2[:, n + 1 :], rtol=0, atol=0)


def _attention_reference(model: LSA, tokens, n: int):
    """Every token's residual stream after each layer in float64 numpy, straight from the definition:
    z_j ← z_j + (1/n) Σ_h Σ_{i ≤ n} (z_iᵀ W_KQ^h z_j) W_PV^h z_i."""
    z = tokens.numpy().astype("float64")
    streams = []
    for block in model.blocks:
        kq, pv = block.attn.kq().detach().double().numpy(), block.attn.pv().detach().double().numpy()
        scores = np.einsum("bid,hde,bje->bhji", z[:, :n], kq, z)  # (B, H, N, n)
        z = z + np.einsum("bhji,hde,bie->bjd", scores, pv, z[:, :n]) / n
        streams.append(z)
    return streams


@pytest.mark.parametrize("param", ["full", "sparse", "block"])
@pytest.mark.parametrize(("d", "n", "queries", "layers", "heads"), [(3, 2, 1, 1, 1), (4, 30, 1, 2, 2),
                                                                      (2, 5, 7, 3, 1), (6, 12, 3, 1, 3)])  # fmt: skip
def test_predict_and_hooked_streams_equal_the_attention_definition(param, d, n, queries, layers, heads):
    """The prediction (whose last layer updates only the queries, Gram or direct products chosen by cost) and
    every hooked stream equal the definition computed in float64 numpy, for sizes that take each product
    order; a float32 model agrees to float32 rounding."""
    task, p = sample("isotropic", f"task.d={d}", f"task.n={n}", f"task.n_queries={queries}", batch=5)
    cfg = parse_config({}, [f"model.param={param}", f"model.layers={layers}", f"model.heads={heads}"]).model
    model = build_model(cfg, task, torch.Generator().manual_seed(1)).double()
    with torch.no_grad():
        for param_tensor in model.parameters():
            param_tensor.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(param_tensor.numel()))
    streams = _attention_reference(model, model.tokens(p.xs, p.ys, p.xq), n)
    expected = torch.from_numpy(-streams[-1][:, n:, d])
    torch.testing.assert_close(model.predict(p.xs, p.ys, p.xq), expected, rtol=1e-10, atol=1e-10)
    _, cache = run_with_cache(model, lambda: model.predict(p.xs, p.ys, p.xq))
    for layer, stream in enumerate(streams):
        got = cache[f"blocks.{layer}.resid_post"]
        torch.testing.assert_close(got, torch.from_numpy(stream), rtol=1e-10, atol=1e-10)
    single = model.float().predict(p.xs.float(), p.ys.float(), p.xq.float())
    torch.testing.assert_close(single.double(), expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_balanced_init_and_parameter_counts():
    task = make_task(task_config("isotropic"), seed=0)
    for param in ("full", "sparse", "block"):
        cfg = parse_config({}, [f"model.param={param}", "model.init=balanced", "model.init_scale=0.3"]).model
        attn = build_model(cfg, task, torch.Generator().manual_seed(0)).blocks[0].attn
        kq, pv = attn.kq(), attn.pv()
        assert torch.allclose(torch.linalg.matrix_norm(kq), torch.tensor(0.3))
        assert torch.allclose(pv[:, task.d, task.d], torch.tensor(-0.3))
        assert torch.count_nonzero(pv) == 1 and torch.count_nonzero(kq[:, task.d]) == 0
    full = parse_config({}, ["model.param=full"]).model
    sparse = parse_config({}, ["model.param=sparse"]).model
    count = lambda c: sum(t.numel() for t in build_model(c, task, torch.Generator()).parameters())  # noqa: E731
    assert count(full) == 2 * 6 * 6 and count(sparse) == 5 * 5 + 1
    assert count(parse_config({}, ["model.param=block"]).model) == 2 * 5 * 5 + 1


def test_block_form_transforms_the_inputs_like_gd_plus_plus():
    """W_KQ = I, W_PV features block = −γI: every token's x becomes (I − γ XᵀX/n) x (von Oswald et al.)."""
    task, p = sample("isotropic")
    model = LSA(LSAShape(d=task.d, param="block")).double()
    with torch.no_grad():
        model.blocks[0].attn.kq_block.copy_(torch.eye(task.d, dtype=F64).unsqueeze(0))
        model.blocks[0].attn.pv_block.copy_(-0.3 * torch.eye(task.d, dtype=F64).unsqueeze(0))
    _, cache = run_with_cache(model, lambda: model.predict(p.xs, p.ys, p.xq))
    gram = p.xs.transpose(1, 2) @ p.xs / p.n
    tokens = torch.cat([p.xs, p.xq], dim=1)
    expected = tokens - 0.3 * tokens @ gram  # gram is symmetric
    torch.testing.assert_close(cache["blocks.0.resid_post"][..., : task.d], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("param", "linear"), [("block", True), ("sparse", True), ("full", False)])
def test_which_forms_predict_linearly_in_the_context_labels(param, linear):
    task, p = sample("isotropic")
    cfg = parse_config({}, [f"model.param={param}", "model.layers=3", "model.init_scale=0.3"]).model
    model = build_model(cfg, task, torch.Generator().manual_seed(0)).double()
    other = torch.randn(p.ys.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    combined = model.predict(p.xs, p.ys + 2 * other, p.xq)
    separate = model.predict(p.xs, p.ys, p.xq) + 2 * model.predict(p.xs, other, p.xq)
    assert torch.allclose(combined, separate, rtol=1e-9, atol=1e-9) == linear


def test_from_model_preserves_dtype_and_device():
    task, p = sample()
    model = build_model(parse_config({}, []).model, task, torch.Generator().manual_seed(0))  # float32
    out = from_model(model).predict(p.xs, p.ys, p.xq)
    assert out.dtype == F64
    torch.testing.assert_close(out, model.predict(p.xs.float(), p.ys.float(), p.xq.float()).double())


def test_token_formats():
    _, p = sample("fixed_means_onehot", "task.d=2", "task.n=3", "task.n_queries=2", batch=1)
    z = stacked_tokens(p.xs, p.ys, p.xq, p.descriptor)
    assert z.shape == (1, 5, 2 + 1 + 4)
    torch.testing.assert_close(z[0, 1], torch.cat([p.xs[0, 1], p.ys[0, 1:2], p.descriptor[0]]))
    torch.testing.assert_close(z[0, 4], torch.cat([p.xq[0, 1], torch.zeros(1, dtype=F64), p.descriptor[0]]))
    seq = interleaved_tokens(p.xs, p.ys, p.xq)  # one sequence per query: no query sees another
    assert seq.shape == (1, 2, 7, 2)
    for j in range(2):
        torch.testing.assert_close(seq[0, j, 2], p.xs[0, 1])
        torch.testing.assert_close(seq[0, j, 3], torch.stack([p.ys[0, 1], torch.tensor(0.0, dtype=F64)]))
        torch.testing.assert_close(seq[0, j, 6], p.xq[0, j])
    with pytest.raises(ValueError, match="no descriptor"):
        interleaved_tokens(p.xs, p.ys, p.xq, p.descriptor)


def test_unknown_hook_is_an_error():
    task = make_task(task_config("isotropic"), seed=0)
    model = build_model(parse_config({}, []).model, task, torch.Generator())
    with pytest.raises(ValueError, match="unknown hook"):
        run_with_cache(model, lambda: None, names=["blocks.9.nope"])


def test_run_with_cache_takes_one_name_or_several():
    """names="blocks.1.attn.scores" was split into characters; one name caches exactly that hook."""
    task = make_task(task_config("isotropic"), seed=0)
    model = build_model(parse_config({}, ["model.layers=2"]).model, task, torch.Generator().manual_seed(0)).double()
    p = task.sample(3, torch.Generator().manual_seed(1), dtype=F64)
    run = lambda: model.predict(p.xs, p.ys, p.xq)  # noqa: E731
    _, one = run_with_cache(model, run, names="blocks.1.attn.scores")
    _, every = run_with_cache(model, run)
    _, listed = run_with_cache(model, run, names=("blocks.1.attn.scores", "blocks.0.resid_post"))
    assert list(one) == ["blocks.1.attn.scores"]
    torch.testing.assert_close(one["blocks.1.attn.scores"], every["blocks.1.attn.scores"])
    assert set(listed) == {"blocks.1.attn.scores", "blocks.0.resid_post"}
    with pytest.raises(ValueError, match=r"unknown hook name\(s\) \['blocks.9.attn'\]"):
        run_with_cache(model, run, names="blocks.9.attn")

"""GPT-2 (model.name=gpt2): parity with the `transformers` GPT-2 on copied weights, every prefix in one pass,
queries that never see each other, hooks, configs, and a short training run."""

from __future__ import annotations

import pytest
import torch

from iclab.config import ConfigError, parse_config
from iclab.models import build_model, run_with_cache
from iclab.models.gpt2 import GPT2
from iclab.prompts import interleaved_tokens
from iclab.tasks import make_task
from iclab.train import train


def small_model(*extra: str, n: int = 6, m: int = 2, d: int = 3):
    cfg = parse_config({}, ["model.name=gpt2", f"task.d={d}", f"task.n={n}", f"task.n_queries={m}", *extra])
    task = make_task(cfg.task)
    return build_model(cfg.model, task, torch.Generator().manual_seed(0)).double(), task


def huggingface_copy(model: GPT2):
    """A `transformers` GPT2Model with the same blocks, positions and final LayerNorm."""
    transformers = pytest.importorskip("transformers", reason="the parity test needs the `transformers` extra")
    width, layers = model.read_in.out_features, model.num_layers
    config = transformers.GPT2Config(n_positions=model.positions.num_embeddings, n_embd=width, n_layer=layers,
                                     n_head=model.blocks[0].attn.heads, resid_pdrop=0.0, embd_pdrop=0.0,
                                     attn_pdrop=0.0, use_cache=False)  # fmt: skip
    reference = transformers.GPT2Model(config).double().eval()
    state = {"wpe.weight": model.positions.weight, "ln_f.weight": model.ln_f.weight, "ln_f.bias": model.ln_f.bias}
    for i, block in enumerate(model.blocks):
        ours = {"ln_1": block.ln_1, "ln_2": block.ln_2, "attn.c_attn": block.attn.qkv, "attn.c_proj": block.attn.proj,
                "mlp.c_fc": block.fc, "mlp.c_proj": block.fc_proj}  # fmt: skip
        for name, module in ours.items():
            transposed = name.startswith(("attn", "mlp"))  # GPT-2's Conv1D stores (in, out)
            state[f"h.{i}.{name}.weight"] = module.weight.T if transposed else module.weight
            state[f"h.{i}.{name}.bias"] = module.bias
    missing, unexpected = reference.load_state_dict({k: v.detach() for k, v in state.items()}, strict=False)
    assert set(missing) == {"wte.weight"} and not unexpected  # tokens enter as embeddings
    return reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parity_with_transformers_gpt2(dtype):
    model, task = small_model("model.size=tiny", n=7, m=3)
    reference = huggingface_copy(model).to(dtype)
    model = model.to(dtype)
    p = task.sample(16, torch.Generator().manual_seed(1), dtype=dtype)
    sequences = interleaved_tokens(p.xs, p.ys, p.xq).flatten(0, 1)  # (B·m, 2n + 1, d), one per query
    with torch.no_grad():
        hidden = reference(inputs_embeds=model.read_in(sequences)).last_hidden_state
        expected = model.read_out(hidden[:, -1]).view(16, 3)
        ours = model.predict(p.xs, p.ys, p.xq)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(ours, expected, rtol=tol, atol=tol)


def test_one_pass_gives_every_prefix_and_queries_never_see_each_other():
    model, task = small_model(n=6, m=3)
    p = task.sample(5, torch.Generator().manual_seed(2), dtype=torch.float64)
    prefixes = model.predict_prefixes(p.xs, p.ys, p.xq)
    for k in range(1, 7):
        torch.testing.assert_close(
            prefixes[:, k - 1], model.predict(p.xs[:, :k], p.ys[:, :k], p.xq), rtol=0, atol=1e-12
        )
    moved = p.xq.clone()
    moved[:, 1:] += 10.0  # other queries change; query 0's prediction must not
    torch.testing.assert_close(model.predict(p.xs, p.ys, moved)[:, 0], model.predict(p.xs, p.ys, p.xq)[:, 0])
    alone = model.predict(p.xs, p.ys, p.xq[:, :1])[:, 0]  # the plain causal sequence of one query
    torch.testing.assert_close(alone, model.predict(p.xs, p.ys, p.xq)[:, 0], rtol=0, atol=1e-12)


def test_attention_pattern_hook_is_causal_and_changes_nothing():
    model, task = small_model(n=4, m=2)
    p = task.sample(3, torch.Generator().manual_seed(3), dtype=torch.float64)
    plain = model.predict(p.xs, p.ys, p.xq)
    names = [f"blocks.{i}.attn.pattern" for i in range(model.num_layers)]
    hooked, cache = run_with_cache(model, lambda: model.predict(p.xs, p.ys, p.xq), names)
    torch.testing.assert_close(hooked, plain, rtol=0, atol=1e-12)
    pattern = cache["blocks.0.attn.pattern"]  # (B, H, T, T), T = 2n + m = 10
    assert pattern.shape == (3, 2, 10, 10)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(3, 2, 10, dtype=torch.float64))
    assert float(pattern[..., :8, :8].triu(1).abs().max()) == 0.0  # context tokens: causal
    assert float(pattern[..., 8, 9].abs().max()) == 0.0 == float(pattern[..., 9, 8].abs().max())  # queries apart


def test_sizes_and_config_errors():
    assert [small_model(f"model.size={s}")[0].num_layers for s in ("tiny", "small", "standard")] == [3, 6, 12]
    model, _ = small_model("model.size=small", "model.layers=2", "model.width=32")
    assert model.num_layers == 2 and model.read_in.out_features == 32 and model.blocks[0].attn.heads == 4
    with pytest.raises(ConfigError, match="model.width must be a multiple of model.heads=4"):
        parse_config({}, ["model.name=gpt2", "model.size=small", "model.width=30"])
    with pytest.raises(ConfigError, match="no descriptor"):
        parse_config({}, ["model.name=gpt2", "task.x_mean_std=1", "task.descriptor=mean"])
    with pytest.raises(ValueError, match="up to 6 examples"):
        model.predict(torch.zeros(1, 7, 3, dtype=torch.float64), torch.zeros(1, 7, dtype=torch.float64),
                      torch.zeros(1, 1, 3, dtype=torch.float64))  # fmt: skip


def test_a_tiny_gpt2_learns_linear_regression_in_context(tmp_path):
    """d = 1, n = 6, 800 Adam steps on every prefix: the query error after 6 examples falls well below the
    zero predictor's E y² = 1 (measured: 0.28 ± 0.06)."""
    cfg = parse_config({}, ["model.name=gpt2", "model.layers=2", "model.width=32", "task.d=1", "task.n=6",
                            "train.steps=800", "train.batch_size=64", "train.lr=3e-3", "train.lr_schedule=constant",
                            "train.objective=all_prefixes", "eval.batch_size=2000", "eval.every=800"])  # fmt: skip
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["final_eval_loss"] < 0.5


@pytest.mark.parametrize("family", ["gpt2", "lsa"])
def test_next_example_objective_is_garg_sequence_loss(family):
    """train.objective=next_example: the mean over k = 1..n of the error of predicting x_{k+1}'s label (the
    query's for k = n) from the first k examples, computed here one prefix at a time; GPT-2's one causal pass
    equals the generic default (the diagonal of predict_prefixes)."""
    from iclab.models.base import InContextModel
    from iclab.objectives import OBJECTIVES

    if family == "gpt2":
        model, task = small_model(n=6, m=2)
    else:
        cfg = parse_config({}, ["task.d=3", "task.n=6", "task.n_queries=2", "model.layers=2"])
        task = make_task(cfg.task)
        model = build_model(cfg.model, task, torch.Generator().manual_seed(0)).double()
    p = task.sample(5, torch.Generator().manual_seed(4), dtype=torch.float64)
    following = torch.cat([p.xs[:, 1:], p.xq[:, :1]], dim=1)
    targets = torch.cat([p.ys[:, 1:], p.yq[:, :1]], dim=1)
    one_by_one = torch.stack(
        [model.predict(p.xs[:, :k], p.ys[:, :k], following[:, k - 1 : k])[:, 0] for k in range(1, 7)], dim=1
    )
    torch.testing.assert_close(model.predict_next(p.xs, p.ys, p.xq), one_by_one, rtol=0, atol=1e-12)
    generic = InContextModel.predict_next(model, p.xs, p.ys, p.xq)
    torch.testing.assert_close(generic, one_by_one, rtol=0, atol=1e-12)
    loss = OBJECTIVES["next_example"](model, p)
    torch.testing.assert_close(loss, ((one_by_one - targets) ** 2).mean(), rtol=1e-12, atol=0)

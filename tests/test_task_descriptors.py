"""Deep LSAs on mean-shifted x (Huang & Ge's data): why the full form diverges, and the default that trains."""

from __future__ import annotations

import math

import pytest
import torch

from iclab.config import parse_config
from iclab.models.lsa import LSA, LSAShape
from iclab.theory.descriptors import descriptor_problem
from iclab.train import train

SHIFTED = ["task.d=3", "task.n=12", "task.x_mean_std=1", "task.descriptor=mean"]


@pytest.mark.parametrize("family", ["lsa", "kernel_attention", "mlp_lsa"])
def test_param_auto_is_sparse_on_mean_shifted_x_and_full_otherwise(family):
    """``model.param=auto`` (the default) resolves in the config itself, so config.yaml says which form ran."""
    name = [f"model.name={family}"]
    assert parse_config({}, name).model.param == "full"
    assert parse_config({}, [*name, *SHIFTED]).model.param == "sparse"
    assert parse_config({}, [*name, "task.x_mean_std=0.5"]).model.param == "sparse"  # shifted, no descriptor
    assert parse_config({}, [*name, *SHIFTED, "model.param=full"]).model.param == "full"  # an explicit choice stays
    assert parse_config({}, [*name, "model.param=block"]).model.param == "block"


@pytest.mark.parametrize(("param", "degrees"), [("full", (3, 9, 27)), ("block", (3, 9, 27)), ("sparse", (3, 5, 7))])
def test_a_shared_mean_enters_the_prediction_with_degree_three_to_the_depth(param, degrees):
    """The cause of the divergence: with x_i = t·μ + g_i (every token shares μ; the descriptor is t·μ), ŷ grows
    like t^(3^L) when the layers write back into the features (full, block), like t^(2L+1) in the sparse form.
    Measured as the slope of log|ŷ| between t = 1e3 and 1e4, random weights, float64."""
    gen = torch.Generator().manual_seed(0)
    d, n = 3, 12
    g, gq, mu, w = (torch.randn(shape, generator=gen, dtype=torch.float64) for shape in ((1, n, d), (1, 1, d), d, d))

    def size(model: LSA, t: float) -> float:
        xs, xq = g + t * mu, gq + t * mu
        return model.predict(xs, xs @ w, xq, (t * mu).view(1, d)).abs().item()

    for layers, degree in zip((1, 2, 3), degrees, strict=True):
        model = LSA(LSAShape(d, d, layers, 1, param)).double()
        model.initialise("gaussian", 0.1, torch.Generator().manual_seed(1))
        assert math.log10(size(model, 1e4) / size(model, 1e3)) == pytest.approx(degree, abs=0.05)


def test_a_three_layer_lsa_from_the_defaults_trains_on_mean_shifted_x_and_beats_the_one_layer_optimum(tmp_path):
    """Issue 12, item 2: ``model.layers=3`` with every model default trains on x ~ N(μ, I), μ ~ N(0, I), with the
    mean descriptor, and ends below L*, the exact loss of the best one-layer LSA (theory), by more than 4 s.e.
    The full form, asked for explicitly, still diverges (the reason is above)."""
    cfg = parse_config({}, [*SHIFTED, "model.layers=3", "train.steps=600", "eval.batch_size=20000"])
    assert cfg.model.param == "sparse" and cfg.model.init == "gaussian"  # the defaults, resolved
    summary = train(cfg, tmp_path / "default", progress=False)
    optimum = descriptor_problem(12, 3, descriptor="mean", tau=1.0).optimum()[1]
    assert summary["final_eval_loss"] + 4 * summary["final_eval_sem"] < optimum
    full = parse_config({}, [*SHIFTED, "model.layers=3", "train.steps=300", "model.param=full"])
    with pytest.raises(Exception, match="diverged"):
        train(full, tmp_path / "full", progress=False)

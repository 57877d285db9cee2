"""A model family and a task family defined in this file alone, registered, then trained, reloaded, evaluated
and probed through the public API — nothing else in iclab knows them."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
from pydantic import Field
from torch import Tensor, nn

from iclab.cli import main
from iclab.config import ModelConfig, TaskConfig, parse_config
from iclab.evaluate import error_curve, query_loss
from iclab.learners import Learner, LeastSquares, Zero, from_model
from iclab.models import InContextModel
from iclab.probe import ProbeSettings, probe_model
from iclab.prompts import Prompts
from iclab.registry import MODELS, TASKS
from iclab.runs import load_model
from iclab.seeding import make_generator
from iclab.tasks import Sampler, make_task
from iclab.train import train


class ScaledLinearConfig(TaskConfig):
    name: Literal["scaled_linear"] = Field("scaled_linear", description="task family")
    scale: float = Field(1.0, gt=0.0, description="y = scale · wᵀx")


class ScaledLinear(Sampler):
    """Noiseless y = scale · wᵀx with x, w ~ N(0, I); its Bayes predictor is least squares once n ≥ d."""

    def sample(self, batch, generator, *, n=None, d_active=None, dtype=torch.float32) -> Prompts:
        n = self.cfg.n if n is None else n
        w = torch.randn(batch, self.d, generator=generator, dtype=dtype)
        x = torch.randn(batch, n + self.cfg.n_queries, self.d, generator=generator, dtype=dtype)
        y = self.cfg.scale * (x @ w.unsqueeze(-1)).squeeze(-1)
        return Prompts(xs=x[:, :n], ys=y[:, :n], xq=x[:, n:], yq=y[:, n:], w=w)

    def reference_learner(self) -> Learner:
        return LeastSquares()


class LearnedStepsConfig(ModelConfig):
    name: Literal["learned_steps"] = Field("learned_steps", description="model family")
    layers: int = Field(2, ge=1, description="GD steps, one per layer")


class LearnedSteps(InContextModel):
    """Layer ℓ is one GD step w ← w + η_ℓ (1/n) Xᵀ(y − Xw) with a learned η_ℓ; the state at a query is
    (x_q, x_qᵀw) and the read-out its last entry."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        self.steps = nn.Parameter(torch.full((layers,), 0.1))

    @property
    def num_layers(self) -> int:
        return self.steps.numel()

    def layer_states(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> list[Tensor]:
        w = xs.new_zeros(xs.shape[0], xs.shape[2])
        states = []
        for step in self.steps:
            residual = ys - (xs @ w.unsqueeze(-1)).squeeze(-1)
            w = w + step * (xs.transpose(1, 2) @ residual.unsqueeze(-1)).squeeze(-1) / xs.shape[1]
            states.append(torch.cat([xq, (xq @ w.unsqueeze(-1))], dim=-1))
        return states

    def readout(self, state: Tensor) -> Tensor:
        return state[..., -1]

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor, descriptor: Tensor | None = None) -> Tensor:
        return self.readout(self.layer_states(xs, ys, xq)[-1])


@pytest.fixture
def toy_families():
    TASKS.register("scaled_linear", ScaledLinearConfig, ScaledLinear)
    MODELS.register("learned_steps", LearnedStepsConfig, lambda cfg, task, generator: LearnedSteps(cfg.layers))
    yield
    TASKS.unregister("scaled_linear")
    MODELS.unregister("learned_steps")


OVERRIDES = ["task.name=scaled_linear", "task.scale=2", "task.d=3", "task.n=12", "model.name=learned_steps",
             "train.steps=150", "train.batch_size=128", "train.lr=0.05", "eval.batch_size=500",
             "eval.every=50"]  # fmt: skip


def test_toy_families_train_evaluate_and_probe(toy_families, tmp_path):
    cfg = parse_config({}, OVERRIDES)
    assert isinstance(cfg.task, ScaledLinearConfig) and cfg.task.scale == 2.0
    summary = train(cfg, tmp_path / "run", progress=False)
    assert summary["status"] == "finished"

    model, loaded_cfg, step = load_model(tmp_path / "run")
    assert loaded_cfg == cfg and step == 150 and isinstance(model, LearnedSteps)
    task = make_task(cfg.task, cfg.seed)
    prompts = task.sample_in_chunks(4000, make_generator(0, "toy-test"), torch.float64)
    zero = query_loss(Zero(), prompts)[0]  # E y_q² = scale² d = 12
    assert abs(zero / 12 - 1) < 0.1
    assert query_loss(from_model(model), prompts)[0] < 0.5 * zero  # two learned GD steps beat zero

    curve = error_curve(from_model(model), prompts.slice(0, 500))
    assert curve.mse.shape == (12,) and bool(torch.isfinite(curve.mse).all())

    result = probe_model(model, task, ProbeSettings(prompts=100, probe_prompts=200, queries=3, max_iterations=4,
                                                    sweeps=2), progress=False)  # fmt: skip
    assert len(result.layers) == 2 and result.weights == []  # no attention stack to compare
    first = result.candidates[(result.candidates["layer"] == 1) & (result.candidates["family"] == "gd")].iloc[0]
    assert first["iterations"] == 1 and first["difference"] < 1e-8  # layer 1 is one GD step exactly
    assert first["value"] == pytest.approx(float(model.steps[0].detach()), rel=1e-4)
    assert result.reference_name == "least_squares"


def test_toy_family_keys_are_checked_by_family(toy_families, tmp_path, capsys):
    code = main(["train", "task.scale=2", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert "task.scale is not a setting of task.name=linear" in err and "scaled_linear" in err
    assert not (tmp_path / "run").exists()

"""``iclab demo``: a 1-layer LSA trained on d=5, n=20 linear regression next to one GD step and OLS."""

from __future__ import annotations

from pathlib import Path

import torch

from iclab.config import parse_config
from iclab.evaluate import query_loss
from iclab.learners import GradientDescent, LeastSquares, from_model
from iclab.run_eval import curve_table, evaluate_run
from iclab.runs import load_model
from iclab.seeding import make_generator
from iclab.tasks import make_task
from iclab.theory import isotropic_gd_optimum
from iclab.train import train

DEMO_OVERRIDES = ["task.d=5", "task.n=20", "model.layers=1", "eval.batch_size=20000"]


def run_demo(out: Path, device: str = "cpu", steps: int = 4000, progress: bool = True) -> dict[str, float]:
    """Train (or reuse) the demo run in ``out`` and print the comparison; returns the losses by name."""
    cfg = parse_config({}, [*DEMO_OVERRIDES, f"train.steps={steps}"])
    print(
        f"training a 1-layer linear self-attention on d={cfg.task.d}, n={cfg.task.n} linear regression "
        f"({steps} Adam steps, {cfg.train.batch_size} fresh prompts each) → {out}"
    )
    train(cfg, out, device=device, progress=progress)
    model, cfg, _ = load_model(out, device=device)
    optimum = isotropic_gd_optimum(cfg.task.d, cfg.task.n, cfg.task.noise_std)
    prompts = make_task(cfg.task, cfg.seed).sample_in_chunks(20000, make_generator(cfg.seed, "demo"), torch.float64)
    losses = {
        "1-layer LSA (trained)": query_loss(from_model(model), prompts),
        f"one GD step, optimal lr={optimum.lr:.4f}": query_loss(GradientDescent(1, optimum.lr), prompts),
        "least squares (OLS)": query_loss(LeastSquares(), prompts),
    }
    print(f"\nmean squared error at the query on {prompts.batch} fresh prompts (± standard error):")
    for name, (mean, sem) in losses.items():
        print(f"  {name:<36} {mean:.4f} ± {sem:.4f}")
    print(f"  {'theory: optimal 1-layer LSA':<36} {optimum.loss:.4f}  (= d(d+1)/(n+d+1) = 30/26)")
    curves = evaluate_run(out, ["gd", "least_squares"], device=device)
    print("\nerror vs number of in-context examples:")
    print(curve_table(curves, max_rows=6).to_string(float_format=lambda v: f"{v:.4g}"))
    print(f"\nfigures: {out / 'figures' / 'error_curve.png'} and {out / 'figures' / 'loss.png'}")
    return {name: mean for name, (mean, _) in losses.items()}

"""Every iclab benchmark in one process: iclab's way against the way it is usually done, side by side.

    python benchmarks/run.py [--json] [--quick] [--threads N]

Prints a table (name, baseline s, iclab s, ratio = baseline/iclab, goal) or, with ``--json``,
``{name: {"ratio": …, "baseline_s": …, "iclab_s": …}}``; exits 1 when a ratio misses its goal. Timings are the
best of ``--repeats`` calls after a warm-up, baseline and iclab alternating so that both see the same machine
load. Torch runs on ``--threads`` threads (default 1: the batched LAPACK calls on both sides use one core, and
on a shared 2-core machine a second OpenMP thread mostly waits). Each row first checks that both ways give
the same numbers. ``--quick``: one timed call per side. The table is kept in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from iclab.config import parse_config
from iclab.evaluate import per_prompt_loss
from iclab.learners import Averaging, KNearest, LeastSquares, from_model
from iclab.models import build_model, run_with_cache
from iclab.tasks import make_task
from iclab.theory import lsa_from_gamma, lsa_loss, lsa_optimum

F64 = torch.float64


@dataclass(frozen=True)
class Row:
    name: str
    baseline_s: float
    iclab_s: float
    goal: float  # the ratio baseline_s / iclab_s must reach this
    what: str

    @property
    def ratio(self) -> float:
        return self.baseline_s / self.iclab_s


def timed(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def side_by_side(baseline: Callable[[], object], iclab: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Best of ``repeats`` timed calls of each, after one warm-up call each, the two alternating."""
    baseline(), iclab()
    times = [(timed(baseline), timed(iclab)) for _ in range(repeats)]
    return min(t[0] for t in times), min(t[1] for t in times)


def curve_prompts(batch: int = 1280, d: int = 20, n: int = 40):
    """The error-curve prompts of the issue: noisy linear regression, d = 20, every prefix 1..40, float64."""
    cfg = parse_config({}, [f"task.d={d}", f"task.n={n}", "task.noise_std=0.5"])
    return make_task(cfg.task, seed=0).sample(batch, torch.Generator().manual_seed(0), dtype=F64)


def looped_lstsq(xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    """Garg et al.'s evaluation: one batched ``torch.linalg.lstsq`` per prefix length."""
    return torch.stack(
        [xq @ torch.linalg.lstsq(xs[:, :k], ys[:, :k].unsqueeze(-1)).solution for k in range(1, xs.shape[1] + 1)],
        dim=1,
    ).squeeze(-1)  # (B, n, m)


def looped_knn(xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, k: int) -> torch.Tensor:
    """One batched nearest-neighbour step per prefix length (distances from the differences, a stable sort)."""
    preds = []
    for p in range(1, xs.shape[1] + 1):
        dist = ((xs[:, None, :p] - xq[:, :, None]) ** 2).sum(-1)  # (B, m, p)
        nearest = dist.argsort(dim=-1, stable=True)[..., :k]
        preds.append(ys[:, None, :p].expand_as(dist).gather(-1, nearest).mean(-1))
    return torch.stack(preds, dim=1)  # (B, n, m)


def looped(learner, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    return torch.stack([learner.predict(xs[:, :k], ys[:, :k], xq) for k in range(1, xs.shape[1] + 1)], dim=1)


def in_chunks(learner, xs: torch.Tensor, ys: torch.Tensor, xq: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``learner.predict_prefixes`` the way :func:`iclab.evaluate.error_curve` calls it: 256 prompts at a time."""
    return torch.cat([learner.predict_prefixes(xs[i : i + chunk], ys[i : i + chunk], xq[i : i + chunk]) for i in
                      range(0, xs.shape[0], chunk)])  # fmt: skip


def eval_curve_vs_loop(repeats: int) -> Row:
    p = curve_prompts()
    iclab = LeastSquares()
    ours = in_chunks(iclab, p.xs, p.ys, p.xq)
    torch.testing.assert_close(ours, looped_lstsq(p.xs, p.ys, p.xq), rtol=1e-8, atol=1e-8)
    base, ours = side_by_side(
        lambda: looped_lstsq(p.xs, p.ys, p.xq), lambda: in_chunks(iclab, p.xs, p.ys, p.xq), repeats
    )
    return Row("eval_curve_vs_loop", base, ours, 10.0, "least squares at every prefix 1..40, d=20, 1280 prompts")


def knn_vs_loop(repeats: int) -> Row:
    p = curve_prompts()
    iclab = KNearest(3)
    torch.testing.assert_close(iclab.predict_prefixes(p.xs, p.ys, p.xq), looped_knn(p.xs, p.ys, p.xq, 3))
    base, ours = side_by_side(
        lambda: looped_knn(p.xs, p.ys, p.xq, 3), lambda: iclab.predict_prefixes(p.xs, p.ys, p.xq), repeats
    )
    return Row("knn_vs_loop", base, ours, 10.0, "3-NN at every prefix, same prompts")


def averaging_vs_loop(repeats: int) -> Row:
    p = curve_prompts()
    iclab = Averaging()
    torch.testing.assert_close(iclab.predict_prefixes(p.xs, p.ys, p.xq), looped(iclab, p.xs, p.ys, p.xq))
    base, ours = side_by_side(
        lambda: looped(iclab, p.xs, p.ys, p.xq), lambda: iclab.predict_prefixes(p.xs, p.ys, p.xq), repeats
    )
    return Row("averaging_vs_loop", base, ours, 1.0, "averaging at every prefix, same prompts")


def theory_vs_mc(repeats: int, relative_se: float = 1e-3) -> Row:
    """Exact loss of the optimal one-layer LSA (anisotropic x, noise) against a Monte Carlo estimate of the same
    loss with a relative standard error of 0.1 %: fresh prompts in chunks, losses accumulated as they come."""
    overrides = ["task.d=5", "task.n=20", "task.n_queries=10", "task.noise_std=0.5", "task.x_cov_diag=2,1,1,0.5,0.25"]
    cfg = parse_config({}, overrides)  # 10 queries a prompt: fewer prompts for the same standard error
    task = make_task(cfg.task, seed=0)
    x_cov = task.x_covariance().numpy()
    gamma = lsa_optimum(20, x_cov, noise_std=0.5).gamma
    learner = from_model(lsa_from_gamma(gamma).double())
    pilot = per_prompt_loss(learner, task.sample(20000, torch.Generator().manual_seed(1), dtype=F64))
    samples = math.ceil(1.1 * (float(pilot.std() / pilot.mean()) / relative_se) ** 2)  # 10 % spare for the pilot
    estimate: dict[str, float] = {}

    def monte_carlo() -> None:
        generator, total, squares, done = torch.Generator().manual_seed(2), 0.0, 0.0, 0
        while done < samples:
            chunk = min(50_000, samples - done)
            losses = per_prompt_loss(learner, task.sample(chunk, generator, dtype=F64), chunk_size=chunk)
            total, squares, done = total + float(losses.sum()), squares + float((losses**2).sum()), done + chunk
        mean = total / done
        estimate.update(mean=mean, sem=math.sqrt((squares / done - mean**2) / (done - 1)))

    calls = 200  # the exact loss takes microseconds: time a batch of calls

    def exact() -> float:
        for _ in range(calls):
            value = lsa_loss(gamma, 20, x_cov, noise_std=0.5)
        return value

    base = timed(monte_carlo)  # one run (tens of seconds): no warm-up needed
    exact()
    ours = min(timed(exact) for _ in range(repeats)) / calls
    value = exact()
    assert abs(estimate["mean"] - value) < 5 * estimate["sem"], (estimate, value)  # the same loss
    assert estimate["sem"] / estimate["mean"] < 1.05 * relative_se
    return Row("theory_vs_mc", base, ours, 1000.0, f"exact lsa_loss vs Monte Carlo ({samples} prompts, 0.1 % s.e.)")


def lsa_forward_vs_hooked(repeats: int) -> Row:
    """The LSA forward pass reassociated (no (N × n) scores) against the same pass with a probe listening."""
    cfg = parse_config({}, ["task.d=10", "task.n=40", "model.layers=3"])
    task = make_task(cfg.task, seed=0)
    p = task.sample(2048, torch.Generator().manual_seed(0), dtype=F64)
    model = build_model(cfg.model, task, torch.Generator().manual_seed(0)).double()

    def hooked() -> torch.Tensor:
        return run_with_cache(model, lambda: model.predict(p.xs, p.ys, p.xq), "blocks.0.attn.scores")[0]

    with torch.no_grad():
        torch.testing.assert_close(hooked(), model.predict(p.xs, p.ys, p.xq))
        base, ours = side_by_side(hooked, lambda: model.predict(p.xs, p.ys, p.xq), repeats)
    return Row("lsa_forward_vs_hooked", base, ours, 1.0, "3-layer LSA forward, 2048 prompts, scores not materialised")


BENCHMARKS = (eval_curve_vs_loop, knn_vs_loop, averaging_vs_loop, theory_vs_mc, lsa_forward_vs_hooked)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print {name: {ratio, baseline_s, iclab_s}}")
    parser.add_argument("--quick", action="store_true", help="one timed call per side")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per side (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    rows = [benchmark(repeats) for benchmark in BENCHMARKS]
    if args.json:
        print(json.dumps({r.name: {"ratio": r.ratio, "baseline_s": r.baseline_s, "iclab_s": r.iclab_s} for r in rows}))
    else:
        print(f"float64, {torch.get_num_threads()} thread(s), best of {repeats}, numpy {np.__version__}")
        print(f"{'name':<24}{'baseline s':>12}{'iclab s':>12}{'ratio':>10}{'goal':>8}  what")
        for r in rows:
            print(f"{r.name:<24}{r.baseline_s:>12.4g}{r.iclab_s:>12.4g}{r.ratio:>9.1f}x{r.goal:>7g}x  {r.what}")
    missed = [r.name for r in rows if r.ratio < r.goal]
    if missed:
        print(f"below goal: {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Error curves: all prefixes in one batched pass vs one predict call per prefix length.

Also the LSA forward pass with the (N × n) attention scores materialised (a probe listening) vs the
reassociated fast path. Prints a table of times and ratios, measured side by side in one run.

    python benchmarks/error_curve.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from iclab.config import parse_config
from iclab.learners import Averaging, GradientDescent, Learner, LeastSquares, Ridge
from iclab.models import build_model, run_with_cache
from iclab.tasks import make_task


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` timed calls, after one warm-up call (seconds)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def looped(learner: Learner, xs, ys, xq) -> torch.Tensor:
    return torch.stack([learner.predict(xs[:, :k], ys[:, :k], xq) for k in range(1, xs.shape[1] + 1)], dim=1)


SHAPES = [(64, 5, 100), (256, 10, 40), (2048, 10, 40)]  # (batch, d, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"float64, {torch.get_num_threads()} threads; best of {args.repeats}")
    print(f"{'batch':>6}{'d':>4}{'n':>5}  {'case':<38}{'looped/hooked s':>16}{'batched/fast s':>16}{'speed-up':>10}")
    for batch, d, n in SHAPES:
        cfg = parse_config({}, [f"task.d={d}", f"task.n={n}", "model.layers=3"])
        task = make_task(cfg.task, cfg.seed)
        p = task.sample(batch, torch.Generator().manual_seed(0), dtype=torch.float64)
        rows = []
        for learner in [LeastSquares(), Ridge(0.1), GradientDescent(5, 0.5), Averaging()]:
            slow = best_time(lambda learner=learner, p=p: looped(learner, p.xs, p.ys, p.xq), args.repeats)
            fast = best_time(lambda learner=learner, p=p: learner.predict_prefixes(p.xs, p.ys, p.xq), args.repeats)
            rows.append((f"error curve: {learner.name}", slow, fast))
        model = build_model(cfg.model, task, torch.Generator().manual_seed(0)).double()
        with torch.no_grad():
            hooked = best_time(
                lambda model=model, p=p: run_with_cache(
                    model, lambda: model.predict(p.xs, p.ys, p.xq), ["blocks.0.attn.scores"]
                ),
                args.repeats,
            )
            fast = best_time(lambda model=model, p=p: model.predict(p.xs, p.ys, p.xq), args.repeats)
        rows.append(("LSA forward, 3 layers: scores hooked", hooked, fast))
        for case, slow, fast in rows:
            print(f"{batch:>6}{d:>4}{n:>5}  {case:<38}{slow:>16.4f}{fast:>16.4f}{slow / fast:>9.1f}x")


if __name__ == "__main__":
    main()

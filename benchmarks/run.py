"""Every iclab benchmark in one process: iclab's way against the way it is usually done, side by side.

    python benchmarks/run.py [--json] [--quick] [--threads N] [--only NAME[,NAME…]]

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
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from iclab.config import parse_config
from iclab.evaluate import per_prompt_loss
from iclab.learners import Averaging, KNearest, Lasso, LeastSquares, from_model
from iclab.models import build_model, run_with_cache
from iclab.tasks import make_task
from iclab.theory import lsa_from_gamma, lsa_loss, lsa_optimum
from iclab.train import train

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


def sweep_local_vs_serial(repeats: int, steps: int = 3000) -> Row:
    """A 2 × 4 sweep (two learning rates × four seeds, runs of equal cost, ~4 s each) on the local pool with two
    workers against the same runs trained one after another in this process: the pool's workers start (and
    import torch) while the clock runs. One timed call each (tens of seconds); both must give the same losses."""
    from iclab.backends import BackendOptions
    from iclab.sweep import SweepSpec, plan_sweep, run_sweep

    base = ("task.d=5", "task.n=20", "model.layers=2", f"train.steps={steps}", "train.batch_size=128",
            f"train.checkpoint_every={steps}", f"eval.every={steps}", "eval.batch_size=1000")  # fmt: skip
    runs = plan_sweep(SweepSpec(base, {"train.lr": ["0.01", "0.003"]}, seeds=4))
    serial: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:

        def one_after_another() -> None:
            for run in runs:
                summary = train(run.config, Path(folder) / "serial" / run.run_id, progress=False, log=lambda _: None)
                serial[run.run_id] = summary["final_eval_loss"]

        def local_pool() -> object:
            return run_sweep(runs, Path(folder) / "pool", BackendOptions("local", workers=2), progress=False)

        base_s, ours_s = timed(one_after_another), timed(local_pool)
        table = local_pool().table.set_index("run_id")["final_eval_loss"]  # a rerun: every run already done
    assert all(table[run_id] == loss for run_id, loss in serial.items()), (table, serial)
    what = f"2 × 4 sweep of {steps}-step runs: local pool of 2 workers vs one after another"
    return Row("sweep_local_vs_serial", base_s, ours_s, 1.6, what)


class _Losses:
    """A training callback that keeps every step's training loss, per run dir (nothing else: no metrics rows,
    held-out evaluations, checkpoints or figure, so that both sides time the training steps)."""

    def __init__(self) -> None:
        self.losses: dict[str, list[float]] = {}

    def on_step(self, run) -> None:
        self.losses.setdefault(run.out.name, []).append(run.loss)


def ensemble_vs_loop(repeats: int, members: int = 16, steps: int = 300) -> Row:
    """16 one-layer LSAs (d = 10, n = 40, 64 prompts a step, seeds 0..15) trained as one batched ensemble
    (``train.ensemble=16``: one vmapped forward and backward for all, each member's own AdamW step) against a
    loop over the members, each trained alone with ``iclab.train.train``; run dirs, the memory check and the
    final evaluation (1000 prompts) included on both sides. One timed call each (seconds each, after a
    20-step warm-up of both); the losses of every step must agree to 1e-5."""
    from iclab.ensemble import member_configs, train_ensemble

    def config(count: int):
        return parse_config({}, ["task.d=10", "task.n=40", "train.batch_size=64", f"train.steps={count}",
                                 "eval.batch_size=1000", f"train.ensemble={members}"])  # fmt: skip

    quiet = {"progress": False, "log": lambda _: None}
    with tempfile.TemporaryDirectory() as folder:

        def loop(cfg, where: str, losses: _Losses) -> None:
            for index, member in enumerate(member_configs(cfg)):
                train(member, Path(folder) / where / f"member-{index}", callbacks=[losses], **quiet)

        def ensemble(cfg, where: str, losses: _Losses) -> None:
            train_ensemble(cfg, Path(folder) / where, callbacks=[losses], **quiet)

        loop(config(20), "warm-loop", _Losses())
        ensemble(config(20), "warm-ensemble", _Losses())
        alone, batched = _Losses(), _Losses()
        base = timed(lambda: loop(config(steps), "loop", alone))
        ours = timed(lambda: ensemble(config(steps), "ensemble", batched))
    assert alone.losses.keys() == batched.losses.keys()
    for name, losses in alone.losses.items():
        np.testing.assert_allclose(batched.losses[name], losses, rtol=1e-5, atol=1e-5)
    what = f"{members} LSAs d=10 n=40 batch 64, {steps} steps: one batched ensemble vs each trained alone"
    return Row("ensemble_vs_loop", base, ours, 3.0, what)


def lasso_vs_sklearn(repeats: int) -> Row:
    """The batched Lasso (homotopy path, every prompt and prefix at once) against Garg et al.'s baseline: a
    scikit-learn ``Lasso`` fitted per prompt and per prefix (tolerance tight enough for the same predictions)."""
    from sklearn.linear_model import Lasso as SklearnLasso

    cfg = parse_config({}, ["task.name=sparse_linear", "task.d=20", "task.n=40"])
    p = make_task(cfg.task, seed=0).sample(64, torch.Generator().manual_seed(0), dtype=F64)
    iclab = Lasso(0.1)

    def per_prompt_and_prefix() -> torch.Tensor:
        out = torch.empty(p.batch, p.n, dtype=F64)
        for b in range(p.batch):
            for k in range(1, p.n + 1):
                fit = SklearnLasso(alpha=0.1, fit_intercept=False, tol=1e-8, max_iter=100_000)
                fit.fit(p.xs[b, :k].numpy(), p.ys[b, :k].numpy())
                out[b, k - 1] = float(fit.predict(p.xq[b, :1].numpy())[0])
        return out

    reference = per_prompt_and_prefix()
    torch.testing.assert_close(iclab.predict_prefixes(p.xs, p.ys, p.xq)[..., 0], reference, rtol=0, atol=1e-4)
    base = timed(per_prompt_and_prefix)  # a second or more: one timed call
    iclab.predict_prefixes(p.xs, p.ys, p.xq)
    ours = min(timed(lambda: iclab.predict_prefixes(p.xs, p.ys, p.xq)) for _ in range(max(repeats, 3)))
    return Row("lasso_vs_sklearn", base, ours, 50.0, "Lasso α=0.1 at every prefix, 64 sparse prompts, d=20, 40 points")


def matmul_peak(size: int = 1024) -> float:
    """This machine's float32 matrix-multiply rate (FLOP/s) on the benchmark's threads: best of 5."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    return 2 * size**3 / min(timed(lambda: a @ b) for _ in range(5))


def gpt2_vs_hf(repeats: int) -> Row:
    """One training step (forward, backward, Adam) of Garg et al.'s standard GPT-2 (12 layers, 8 heads, width
    256) on d = 20, 41 points, 64 prompts: iclab's (train.objective=next_example: one causal pass over
    x_1, y_1, …, x_40, y_40, x_q, read out at the x positions) against the `transformers` GPT2Model with the
    same read-in, read-out and loss. Also the share of the float32 matmul peak that iclab's step reaches."""
    try:
        import transformers
    except ImportError:
        raise SystemExit("gpt2_vs_hf needs the transformers package: pip install 'iclab[parity]'") from None
    from torch.utils.flop_counter import FlopCounterMode

    from iclab.objectives import OBJECTIVES
    from iclab.prompts import interleaved_pairs

    cfg = parse_config({}, ["model.name=gpt2", "model.size=standard", "task.d=20", "task.n=40"])
    task = make_task(cfg.task, seed=0)
    p = task.sample(64, torch.Generator().manual_seed(0))
    model = build_model(cfg.model, task, torch.Generator().manual_seed(0))
    config = transformers.GPT2Config(n_positions=81, n_embd=256, n_layer=12, n_head=8, resid_pdrop=0.0,
                                     embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)  # fmt: skip
    reference = transformers.GPT2Model(config)
    read_in, read_out = torch.nn.Linear(20, 256), torch.nn.Linear(256, 1)
    optimisers = [
        torch.optim.Adam(model.parameters(), 1e-4),
        torch.optim.Adam([*reference.parameters(), *read_in.parameters(), *read_out.parameters()], 1e-4),
    ]
    targets = torch.cat([p.ys[:, 1:], p.yq[:, :1]], dim=1)

    def step(index: int) -> None:
        optimisers[index].zero_grad()
        if index == 0:
            loss = OBJECTIVES["next_example"](model, p)
        else:
            tokens = torch.cat([interleaved_pairs(p.xs, p.ys), p.xq[:, :1]], dim=1)  # (B, 81, d)
            hidden = reference(inputs_embeds=read_in(tokens)).last_hidden_state
            loss = ((read_out(hidden[:, 2::2]).squeeze(-1) - targets) ** 2).mean()
        loss.backward()
        optimisers[index].step()

    with FlopCounterMode(display=False) as counter:
        step(0)
    base, ours = side_by_side(lambda: step(1), lambda: step(0), min(repeats, 2))  # seconds per step
    share = counter.get_total_flops() / ours / matmul_peak()
    what = f"GPT-2 standard training step, d=20, 41 points, batch 64; {share:.0%} of the float32 matmul peak"
    return Row("gpt2_vs_hf", base, ours, 1.4, what)


BENCHMARKS = (eval_curve_vs_loop, knn_vs_loop, averaging_vs_loop, theory_vs_mc, lsa_forward_vs_hooked,
              sweep_local_vs_serial, lasso_vs_sklearn, gpt2_vs_hf, ensemble_vs_loop)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print {name: {ratio, baseline_s, iclab_s}}")
    parser.add_argument("--quick", action="store_true", help="one timed call per side")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per side (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--only", help="comma-separated benchmark names (default: all)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    chosen = [b for b in BENCHMARKS if args.only is None or b.__name__ in args.only.split(",")]
    if not chosen:
        parser.error(f"--only names none of {', '.join(b.__name__ for b in BENCHMARKS)}")
    rows = [benchmark(repeats) for benchmark in chosen]
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

"""Evaluation statistics (issue 15: 6): bootstrap intervals, the heavy-tail share, float64 losses, the eval
table and the bands on error-curve figures, each against numpy or a closed form."""

from __future__ import annotations

import json
import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from conftest import task_config
from iclab.cli import main
from iclab.evaluate import error_curve, loss_statistics, per_prompt_loss, query_loss, query_loss_stats
from iclab.learners import Averaging, Learner, LeastSquares
from iclab.plots import error_band
from iclab.prompts import Prompts
from iclab.run_eval import curve_table, heavy_tail_note
from iclab.tasks import make_task

F64 = torch.float64


def numpy_top_share(losses: np.ndarray) -> np.ndarray:
    """Share of the summed loss from the worst ⌈0.1 %·B⌉ prompts, per column."""
    count = max(1, int(np.ceil(0.001 * len(losses))))
    return np.sort(losses, axis=0)[-count:].sum(0) / losses.sum(0)


def test_bootstrap_interval_of_a_light_tail_is_the_normal_interval():
    """For 20 000 N(3, 1) losses the percentile bootstrap of the mean is mean ± 1.96 s.e. (CLT) within a few %."""
    losses = torch.randn(20000, generator=torch.Generator().manual_seed(0), dtype=F64) + 3
    mean, sem, low, high, top_share = (float(v) for v in loss_statistics(losses))
    assert mean == pytest.approx(float(losses.mean()), rel=1e-14)
    assert sem == pytest.approx(float(losses.std()) / np.sqrt(20000), rel=1e-12)
    assert (mean - low) == pytest.approx(1.96 * sem, rel=0.08) and (high - mean) == pytest.approx(1.96 * sem, rel=0.08)
    assert top_share == pytest.approx(float(numpy_top_share(losses.numpy()[:, None])[0]), rel=1e-12)


def test_a_heavy_tail_is_reported_and_a_light_one_is_not():
    """The kind behind the issue: 50 000 prompts with 1.5 typical loss and a few enormous ones. The worst 50
    prompts carry half the loss and the interval widens tenfold. Exponential losses (light tail) are not flagged."""
    g = torch.Generator().manual_seed(1)
    losses = -1.5 * torch.rand(50000, generator=g, dtype=F64).log()  # exponential, mean 1.5
    heavy = losses.clone()
    heavy[torch.randperm(50000, generator=g)[:20]] = 1e4 * torch.rand(20, generator=g, dtype=F64)
    stats_light = query_loss_stats_of(losses)
    stats_heavy = query_loss_stats_of(heavy)
    assert not stats_light.heavy_tail and stats_heavy.heavy_tail
    assert stats_heavy.top_share == pytest.approx(float(numpy_top_share(heavy.numpy()[:, None])[0]), rel=1e-12)
    assert stats_heavy.low < stats_heavy.mean < stats_heavy.high
    assert stats_heavy.high - stats_heavy.low > 10 * (stats_light.high - stats_light.low)


class Fixed(Learner):
    """Predicts the given (B, m) values, ignoring the context: a stand-in with known per-prompt losses."""

    def __init__(self, predictions: torch.Tensor) -> None:
        self.predictions, self.name = predictions, "fixed"

    def predict(self, xs, ys, xq, descriptor=None):
        return self.predictions[: xs.shape[0]]


def query_loss_stats_of(losses: torch.Tensor):
    """query_loss_stats of a learner whose per-prompt loss is ``losses`` (one query, label 0)."""
    zeros = torch.zeros(len(losses), 1, 1, dtype=F64)
    prompts = Prompts(xs=zeros, ys=zeros[..., 0], xq=zeros, yq=zeros[..., 0], descriptor=None, w=None)
    return query_loss_stats(Fixed(losses.sqrt().unsqueeze(-1)), prompts, chunk_size=len(losses))


def test_losses_are_taken_in_float64():
    """A float32 learner 1e20 off: the squared error 1e40 overflows float32 but not float64."""
    task = make_task(task_config("isotropic", "task.d=2", "task.n=3"), seed=0)
    p = task.sample(10, torch.Generator().manual_seed(0), dtype=torch.float32)
    off = torch.full((10, 1), 1e20, dtype=torch.float32)
    mean, _ = query_loss(Fixed(p.yq + off), p)
    expected = ((p.yq.double().numpy() + 1e20 - p.yq.double().numpy()) ** 2).mean()
    assert np.isfinite(mean) and mean == pytest.approx(expected, rel=1e-6)


def test_statistics_are_reproducible_and_each_column_is_its_own_sample():
    losses = torch.rand(3000, 4, generator=torch.Generator().manual_seed(2), dtype=F64) ** 4
    together = loss_statistics(losses, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(together, loss_statistics(losses, seed=7), strict=True))
    for j in range(4):  # the same resampled prompts for every column
        alone = loss_statistics(losses[:, j], seed=7)
        for a, b in zip(together, alone, strict=True):
            torch.testing.assert_close(a[j], b, rtol=1e-12, atol=0)


def test_error_curve_carries_the_statistics_of_every_prefix():
    """Against per-prefix losses computed one prefix at a time and reduced with numpy."""
    task = make_task(task_config("noisy", "task.d=3", "task.n=9"), seed=0)
    p = task.sample(2000, torch.Generator().manual_seed(4), dtype=F64)
    curve = error_curve(LeastSquares(), p)
    per_prefix = np.stack(
        [((LeastSquares().predict(p.xs[:, :k], p.ys[:, :k], p.xq) - p.yq) ** 2).mean(-1).numpy() for k in range(1, 10)],
        axis=1,
    )  # (B, n)
    np.testing.assert_allclose(curve.mse.numpy(), per_prefix.mean(0), rtol=1e-10)
    np.testing.assert_allclose(curve.sem.numpy(), per_prefix.std(0, ddof=1) / np.sqrt(2000), rtol=1e-8)
    np.testing.assert_allclose(curve.top_share.numpy(), numpy_top_share(per_prefix), rtol=1e-8)
    _, _, low, high, _ = loss_statistics(torch.from_numpy(per_prefix))
    np.testing.assert_allclose(curve.low.numpy(), low.numpy(), rtol=1e-8)
    np.testing.assert_allclose(curve.high.numpy(), high.numpy(), rtol=1e-8)
    assert (curve.low <= curve.mse).all() and (curve.mse <= curve.high).all()
    torch.testing.assert_close(per_prompt_loss(LeastSquares(), p, prefixes=True), torch.from_numpy(per_prefix))


def test_eval_table_lists_every_length_with_its_interval_and_marks_heavy_tails():
    task = make_task(task_config("noisy", "task.d=5", "task.n=20"), seed=0)
    p = task.sample(3000, torch.Generator().manual_seed(0), dtype=F64)
    curves = [error_curve(LeastSquares(), p), error_curve(Averaging(), p)]
    table = curve_table(curves)
    assert list(table.index) == list(range(1, 21))  # every context length
    for curve in curves:
        for k in range(1, 21):
            cell = table.loc[k, curve.name]
            numbers = [float(v) for v in re.findall(r"[-+]?\d[\d.e+-]*", cell)]
            expected = [curve.mse[k - 1], curve.low[k - 1], curve.high[k - 1]]
            np.testing.assert_allclose(numbers, expected, rtol=5e-3)  # printed to 4 and 3 digits
            assert cell.endswith("*") == bool(curve.heavy_tail[k - 1])
    # least squares at k ≈ d has infinite variance (E‖X⁺ε‖² diverges at k = d ± 1): a heavy tail
    assert bool(curves[0].heavy_tail[4])
    note = heavy_tail_note(curves)
    assert "95 % bootstrap interval over 3000 prompts" in note and "least_squares" in note
    assert len(curve_table(curves, max_rows=6)) == 6


def test_error_figure_draws_the_interval_as_a_band():
    task = make_task(task_config("noisy", "task.d=3", "task.n=8"), seed=0)
    curve = error_curve(Averaging(), task.sample(500, torch.Generator().manual_seed(0), dtype=F64))
    fig, ax = plt.subplots()
    error_band(ax, curve)
    (band,) = ax.collections
    vertices = band.get_paths()[0].vertices  # the polygon runs along high and back along low
    for k in range(1, 9):
        at_k = vertices[np.isclose(vertices[:, 0], k), 1]
        np.testing.assert_allclose([at_k.min(), at_k.max()], [curve.low[k - 1], curve.high[k - 1]], rtol=1e-12)
    plt.close(fig)


def test_iclab_eval_with_a_tiny_ridge_alpha(tmp_path, capsys):
    """``iclab eval RUN --learners ridge:alpha=1e-15`` exited 1 with a traceback; now a finite curve per learner."""
    out = tmp_path / "run"
    tiny = ["task.d=3", "task.n=6", "train.steps=20", "train.batch_size=64", "eval.batch_size=100", "eval.every=20"]
    assert main(["train", *tiny, "model.layers=1", "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", str(out), "--learners", "ridge:alpha=1e-15", "knn:k=2", "--batch-size", "200", "--json"]) == 0
    curves = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in curves][1:] == ["ridge(alpha=1e-15)", "knn(k=2)"]
    for c in curves:
        assert len(c["k"]) == 6 and np.isfinite(c["mse"]).all() and np.isfinite(c["low"]).all()
        assert all(lo <= m <= hi for lo, m, hi in zip(c["low"], c["mse"], c["high"], strict=True))


def test_the_streamed_evaluation_equals_the_materialised_one():
    """sampled_loss_stats draws the prompts of sample_in_chunks chunk by chunk and drops each: the same mean,
    standard error, bootstrap interval and tail share as the whole set at once, to the bit."""
    from iclab.evaluate import query_loss_stats, sampled_loss_stats
    from iclab.learners import LeastSquares
    from iclab.tasks import make_task

    task = make_task(task_config("isotropic", "task.d=3", "task.n=6", "task.noise_std=0.5"), seed=0)
    whole = task.sample_in_chunks(700, torch.Generator().manual_seed(5), torch.float64, chunk=256)
    expected = query_loss_stats(LeastSquares(), whole, chunk_size=256)
    streamed = sampled_loss_stats(LeastSquares(), task, 700, torch.Generator().manual_seed(5), torch.float64,
                                  chunk_size=256)  # fmt: skip
    assert streamed == expected

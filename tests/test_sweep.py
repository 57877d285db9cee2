"""Sweeps and their results: the grid's expansion and run ids, reruns that train nothing, a killed sweep that
resumes to the same bytes, concurrent sweeps that share the work, the results table and plot, and the three
backends (the local pool, Slurm through submitit's local executor, Ray)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import stats

from conftest import CLI, cli, one_line
from iclab.backends import BackendOptions
from iclab.cli import main
from iclab.config import parse_config
from iclab.experiments.grid import RunSpec, execute
from iclab.results import aggregate, results_table
from iclab.rundir import read_weights
from iclab.sweep import SweepSpec, plan_sweep, read_sweep_file, run_sweep

SMALL = ["task.d=2", "model.layers=1", "train.steps=200", "train.batch_size=32", "train.checkpoint_every=20",
         "train.log_every=20", "eval.every=100", "eval.batch_size=64"]  # fmt: skip
GRID = ["--grid", "task.n=4,8", "--seeds", "2"]  # a 2 × 2 sweep
SPEC = SweepSpec(tuple(SMALL), {"task.n": ["4", "8"]}, seeds=2)


def sweep_argv(out: Path, *extra: str) -> list[str]:
    return ["sweep", *SMALL, *GRID, "--out", str(out), "--quiet", *extra]


def run_files(out: Path) -> dict[str, tuple[bytes, int]]:
    """{relative path: (bytes, mtime)} of every file of the sweep's run dirs under ``out`` (the locks aside)."""
    paths = sorted(p for run in plan_sweep(SPEC) for p in (out / run.run_id).rglob("*"))
    return {str(p.relative_to(out)): (p.read_bytes(), p.stat().st_mtime_ns) for p in paths
            if p.is_file() and p.name != ".iclab.lock"}  # fmt: skip


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """The 2 × 2 sweep trained without interruption on the local pool (2 workers): the reference."""
    out = tmp_path_factory.mktemp("sweeps") / "reference"
    assert main(sweep_argv(out, "--workers", "2")) == 0
    return out


# --------------------------------------------------------------------------- the plan


def test_grid_expands_in_order_with_ids_hashing_the_resolved_config():
    runs = plan_sweep(SweepSpec(tuple(SMALL), {"task.n": ["4", "8"], "train.lr": ["0.01", "0.003"]}, seeds=2))
    points = [(r.config.task.n, r.config.train.lr, r.config.seed) for r in runs]
    assert points == [(n, lr, s) for n in (4, 8) for lr in (0.01, 0.003) for s in (0, 1)]
    for run in runs:  # the id: SHA-256 of the canonical JSON of the whole resolved config, 12 hex digits
        canonical = json.dumps(parse_config({}, list(run.overrides)).model_dump(mode="json"), sort_keys=True,
                               separators=(",", ":"))  # fmt: skip
        assert run.run_id == hashlib.sha256(canonical.encode()).hexdigest()[:12]
    assert len({run.run_id for run in runs}) == 8
    # the same configs spelled otherwise (keys reordered, 1e-2 for 0.01) are the same runs
    respelled = SweepSpec(tuple(reversed(SMALL)), {"train.lr": ["1e-2", "0.003"], "task.n": ["4", "8"]}, seeds=2)
    assert {r.run_id for r in plan_sweep(respelled)} == {r.run_id for r in runs}
    assert len(plan_sweep(SweepSpec(tuple(SMALL), {"train.lr": ["0.01", "1e-2"]}))) == 1
    # seeds count from the base seed; a grid key replaces the base's value
    shifted = plan_sweep(SweepSpec((*SMALL, "seed=5", "task.n=3"), {"task.n": ["4"]}, seeds=3))
    assert [(r.config.seed, r.config.task.n) for r in shifted] == [(5, 4), (6, 4), (7, 4)]


def test_a_sweep_file_is_the_command_line_written_down(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({
        "base": {"task": {"d": 3}, "model.layers": 1, "train": {"steps": 5}},
        "grid": {"task.n": [4, 8], "task.x_cov_diag": [[2, 1, 1], [1, 1, 0.5]]},
        "seeds": 2,
    }))  # fmt: skip
    from_file = read_sweep_file(path).merged(SweepSpec(("train.steps=7",), {}, None))
    runs = plan_sweep(from_file)
    assert len(runs) == 8 and {r.config.train.steps for r in runs} == {7}  # the command line wins
    fixed = read_sweep_file(path).merged(SweepSpec(("task.n=5",), {}, 1))  # an override fixes a swept key
    assert [(r.config.task.n, r.config.seed) for r in plan_sweep(fixed)] == [(5, 0), (5, 0)]
    assert [r.config.task.x_cov_diag for r in runs[:4]] == [(2.0, 1.0, 1.0)] * 2 + [(1.0, 1.0, 0.5)] * 2
    by_hand = SweepSpec(("task.d=3", "model.layers=1", "train.steps=7"),
                        {"task.n": ["4", "8"], "task.x_cov_diag": ["2,1,1", "1,1,0.5"]}, seeds=2)  # fmt: skip
    assert [r.run_id for r in plan_sweep(by_hand)] == [r.run_id for r in runs]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--grid", "task.n"], "--grid must look like key=v1,v2"),
        (["--grid", "task.n=4,,8"], "--grid must look like key=v1,v2"),
        (["--grid", "task.n=4", "--grid", "task.n=8"], "--grid task.n is given twice"),
        (["--grid", "task.nope=1,2"], "task.nope"),
        (["--grid", "task.n=0,4"], "task.n must be"),
        (["--grid", "seed=1,2", "--seeds", "2"], "seed is both a --grid key and set by --seeds"),
        (["--seeds", "0"], "--seeds must be an integer from 1"),
        (["--backend", "spark"], "--backend must be one of local, ray, slurm, got 'spark'"),
        (["--workers", "0"], "--workers must be an integer >= 1"),
        (["--partition", "gpu"], "--partition is a flag of --backend slurm, not local"),
        (["--backend", "slurm"], "no Slurm here (sbatch not found)"),
        (["--sweep", "missing.yaml"], "--sweep must name a YAML file"),
        (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
        (["--backend", "ray", "--device", "cuda"], "--device cuda with --backend ray needs --gpus-per-run"),
        (["--backend", "slurm", "--slurm-local", "--gpus-per-run", "0.5"], "--gpus-per-run must be a whole number"),
    ],
)
def test_bad_sweep_requests_exit_2_with_one_line_and_touch_nothing(tmp_path, capsys, argv, expected):
    out = tmp_path / "out"
    code, _, err = cli(capsys, ["sweep", *SMALL, *argv, "--out", str(out)])
    assert code == 2 and expected in one_line(err)
    assert not out.exists()


def test_a_sweep_file_with_other_keys_is_refused(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text("grid:\n  task.n: [4]\nrepeats: 3\n")
    code, _, err = cli(capsys, ["sweep", "--sweep", str(path), "--out", str(tmp_path / "out")])
    assert code == 2 and "must be a mapping with keys base, grid, seeds; got grid, repeats" in one_line(err)


# --------------------------------------------------------------------------- running sweeps


def test_a_sweep_writes_a_run_dir_and_a_results_row_per_run(swept):
    runs = plan_sweep(SPEC)
    table = pd.read_csv(swept / "results.csv")
    assert list(table["run_id"]) == [run.run_id for run in runs]  # plan order
    assert set(table["status"]) == {"finished"} and list(table["steps"]) == [200] * 4
    assert list(zip(table["task.n"], table["seed"], strict=True)) == [(4, 0), (4, 1), (8, 0), (8, 1)]
    for row in table.itertuples():
        summary = json.loads((swept / row.run_id / "summary.json").read_text())
        assert row.final_eval_loss == summary["final_eval_loss"] and "wall_seconds" not in table.columns
        assert main(["check", str(swept / row.run_id)]) == 0


def test_a_rerun_trains_nothing(swept, capsys):
    before, results = run_files(swept), (swept / "results.csv").read_bytes()
    code, printed, _ = cli(capsys, sweep_argv(swept, "--workers", "2"))
    assert code == 0 and "4 runs: 0 trained now, 4 already done" in printed
    assert run_files(swept) == before and (swept / "results.csv").read_bytes() == results


def pool_workers(pid: int) -> list[int]:
    """The spawned worker processes of the process ``pid`` (its resource tracker left out)."""
    children = [int(c) for task in Path(f"/proc/{pid}/task").glob("*") for c in (task / "children").read_text().split()]
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def test_a_sweep_whose_worker_is_killed_resumes_to_the_same_bytes(swept, tmp_path):
    """SIGKILL to a worker of the local pool while a run is half trained: the sweep stops its other worker and
    exits 2 with one line; the rerun resumes the interrupted runs: results.csv and the metrics equal the
    uninterrupted sweep's byte for byte, the weights bit for bit (summary.json differs in its wall-clock time,
    which results.csv leaves out; model.safetensors in the order of its metadata's keys)."""
    out = tmp_path / "killed"
    process = subprocess.Popen([*CLI, *sweep_argv(out, "--workers", "2")], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 180
    while True:
        done = {p.parent for p in out.glob("*/summary.json")}
        partial = {p.parent for p in out.glob("*/checkpoint.pt")} - done
        workers = pool_workers(process.pid) if process.poll() is None else []
        if done and partial and len(workers) == 2:
            break
        assert process.poll() is None and time.time() < deadline, process.communicate()
        time.sleep(0.02)
    os.kill(workers[0], signal.SIGKILL)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2 and "a worker process ended abruptly while training" in one_line(err)
    assert not (out / "results.csv").exists() and len(list(out.glob("*/summary.json"))) < 4
    assert main(sweep_argv(out, "--workers", "1")) == 0
    assert (out / "results.csv").read_bytes() == (swept / "results.csv").read_bytes()
    for run in plan_sweep(SPEC):
        for name in ("metrics.csv", "config.yaml"):
            assert (out / run.run_id / name).read_bytes() == (swept / run.run_id / name).read_bytes(), (run, name)
        resumed, reference = read_weights(out / run.run_id), read_weights(swept / run.run_id)
        assert resumed[1] == reference[1] and resumed[0].keys() == reference[0].keys()
        assert all(torch.equal(tensor, reference[0][name]) for name, tensor in resumed[0].items())


def test_two_sweeps_started_together_train_each_run_once(swept, tmp_path):
    out = tmp_path / "shared"
    command = [*CLI, *sweep_argv(out, "--workers", "1")]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"]
    results = [(p.wait(timeout=300), *p.communicate()) for p in processes]
    assert [code for code, _, _ in results] == [0, 0], results
    trained = [int(re.search(r"(\d+) trained now", printed).group(1)) for _, printed, _ in results]
    assert sum(trained) == 4, results
    assert (out / "results.csv").read_bytes() == (swept / "results.csv").read_bytes()


def test_the_slurm_backend_through_submitits_local_executor(swept, tmp_path):
    """Two of the runs (a job each: a process importing torch) as one batch through submitit's local executor;
    their rows are the reference's."""
    out = tmp_path / "slurm"
    outcome = run_sweep(plan_sweep(SPEC)[:2], out, BackendOptions("slurm", slurm_local=True), progress=False)
    assert len(outcome.trained) == 2, outcome.outcomes
    reference = (swept / "results.csv").read_text().splitlines(keepends=True)
    assert (out / "results.csv").read_text() == "".join(reference[:3])  # the header and the first two rows
    assert len(list((out / ".submitit").glob("*_log.out"))) == 2  # the jobs' logs, beside the run dirs


def test_a_diverged_run_is_recorded_and_the_sweep_exits_1(tmp_path, capsys):
    tiny = ["task.d=2", "task.n=4", "train.steps=3", "eval.batch_size=16", "--grid", "train.diverge_loss=1e8,1e-9"]
    for trained in ("1 trained now, 0 already done", "0 trained now, 1 already done"):  # the rerun trains nothing
        code, printed, _ = cli(capsys, ["sweep", *tiny, "--out", str(tmp_path), "--quiet", "--workers", "1"])
        assert code == 1 and f"2 runs: {trained}, 1 diverged;" in printed
        table = pd.read_csv(tmp_path / "results.csv")
        assert list(table["status"]) == ["finished", "diverged"]
        assert table["message"].iloc[1].startswith("diverged at step 1")


# --------------------------------------------------------------------------- results


def test_results_plot_aggregates_seeds_with_a_90_percent_t_interval(swept, capsys):
    code, printed, _ = cli(capsys, ["results", str(swept), "--plot", "final_eval_loss", "--by", "task.n"])
    figure = swept / "figures" / "final_eval_loss_by_task.n.png"
    assert code == 0 and figure.read_bytes()[:4] == b"\x89PNG" and str(figure) in printed
    table = pd.read_csv(swept / "results.csv")
    points = aggregate(table, "final_eval_loss", "task.n").set_index("task.n")
    for n, group in table.groupby("task.n"):
        losses = group["final_eval_loss"].to_numpy()
        low, high = stats.t.interval(0.9, len(losses) - 1, loc=losses.mean(), scale=stats.sem(losses))
        assert points.loc[n, "seeds"] == 2
        np.testing.assert_allclose(points.loc[n, ["mean", "low", "high"]].to_numpy(float), [losses.mean(), low, high])
    code, _, _ = cli(capsys, ["results", str(swept), "--plot", "final_train_loss", "--by", "seed", "--hue", "task.n"])
    assert code == 0 and (swept / "figures" / "final_train_loss_by_seed_hue_task.n.png").exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--plot", "nope", "--by", "task.n"], "--plot 'nope' is not a column of the results; choose from"),
        (["--plot", "status", "--by", "task.n"], "--plot 'status' is not a number"),
        (["--plot", "final_eval_loss", "--by", "task.nope"], "--by 'task.nope' is not a config key"),
        (["--plot", "final_eval_loss"], "--plot METRIC needs --by KEY"),
        (["--by", "task.n"], "--by, --hue and --out go with --plot METRIC"),
    ],
)
def test_bad_results_requests_exit_2_with_one_line(swept, capsys, argv, expected):
    code, _, err = cli(capsys, ["results", str(swept), *argv])
    assert code == 2 and expected in one_line(err)


def test_results_read_any_folder_of_run_dirs(tmp_path, capsys):
    """A reproduction keeps its run dirs under OUT/runs: they are found, named by their path; a damaged one is a
    row saying so; an empty folder is one line, exit 2."""
    small = ("task.d=2", "task.n=4", "train.steps=3", "eval.batch_size=16")
    execute([RunSpec("a", small), RunSpec("b", (*small, "train.lr=0.003"))], tmp_path / "rep" / "runs",
            progress=False)  # fmt: skip
    (tmp_path / "rep" / "results.csv").write_text("a recipe's own table\n")
    (tmp_path / "rep" / "runs" / "b" / "summary.json").write_text("{}")
    table = results_table(tmp_path / "rep")
    assert list(table["run_id"]) == ["runs/a", "runs/b"] and list(table["status"]) == ["finished", "damaged"]
    code, printed, _ = cli(capsys, ["results", str(tmp_path / "rep")])
    assert code == 0 and "runs/a" in printed and "damaged" in printed
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, ["results", str(tmp_path / "empty")])
    assert code == 2 and "holds no run dirs" in one_line(err)


# --------------------------------------------------------------------------- Ray (one local instance)


@pytest.fixture(scope="module")
def ray_started():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_ray_backend_sweep_matches_the_local_pool_and_reruns_nothing(swept, tmp_path, ray_started):
    out = tmp_path / "ray"
    outcome = run_sweep(plan_sweep(SPEC), out, BackendOptions("ray"), progress=False)
    assert len(outcome.trained) == 4, outcome.outcomes
    assert (out / "results.csv").read_text() == (swept / "results.csv").read_text()
    again = run_sweep(plan_sweep(SPEC), out, BackendOptions("ray"), progress=False)
    assert again.trained == [] and len(again.skipped) == 4, again.outcomes


def test_ray_tasks_use_one_thread_and_raise_their_own_errors(ray_started):
    from iclab.backends import RayExecutor
    from iclab.rundir import RunDirError, read_json

    executor = RayExecutor()
    assert executor.submit(torch.get_num_threads).result() == 1
    error = executor.submit(read_json, "/nonexistent/summary.json").exception()
    assert type(error) is RunDirError and "is missing or not valid JSON" in str(error)


def test_reproduce_runs_through_the_ray_backend(tmp_path, capsys, monkeypatch, ray_started):
    """`iclab reproduce NAME --backend ray` hands the recipe a Ray executor (a stand-in recipe: one tiny run)."""
    import iclab.experiments
    from iclab.backends import RayExecutor
    from iclab.experiments import get_recipe
    from iclab.experiments.claims import REPRODUCTION, Claim, Estimate, above, evaluate
    from iclab.experiments.reproduce import Reproduction

    def reproduce(name, out, size, seeds, seed_offset, device, progress, untrained, jobs=1, executor=None):
        runs = execute([RunSpec("a", ("task.d=2", "task.n=4", "train.steps=3", "eval.batch_size=16"))],
                       Path(out) / "runs", progress=False, executor=executor)  # fmt: skip
        ok = float(isinstance(executor, RayExecutor) and "a" in runs)
        claim = Claim("ray", "trained through Ray", "-", "-", REPRODUCTION, lambda m: Estimate(m), above(0.5, ">"),
                      {"not through Ray": lambda _: Estimate(0.0)})  # fmt: skip
        results = evaluate([claim], {0: ok, 1: ok, 2: ok})
        return Reproduction(get_recipe(name), size, (0, 1, 2), results, {})

    monkeypatch.setattr(iclab.experiments, "reproduce", reproduce)
    code, printed, _ = cli(capsys, ["reproduce", "mlp_lsa", "--quick", "--out", str(tmp_path), "--backend", "ray"])
    assert code == 0 and "yes  [paper, -] trained through Ray" in printed
    assert (tmp_path / "runs" / "a" / "summary.json").exists()

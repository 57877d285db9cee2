"""The ``iclab`` command: train, eval, check, probe, reproduce, sweep, results, demo, config, theory. User errors,
unusable output locations and requests beyond the machine's memory exit with code 2 and one line, Ctrl-C with code
130 and one line: never a traceback. ``iclab --help`` imports no torch (this module imports only the standard
library at start-up); a verb's ``--help`` lists what the registries hold (config keys, learners, recipes), read
when that help is asked for."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from iclab.errors import UsageError, UserError
from iclab.interrupts import interrupts_outside_imports
from iclab.validate import check_flag

if TYPE_CHECKING:
    from iclab.backends import BackendOptions
    from iclab.config import Config
    from iclab.probe import ProbeSettings

USAGE_ERROR = 2
INTERRUPTED = 130  # the shell's code for a stop by SIGINT
BROKEN_PIPE = 141  # the shell's code for a stop by SIGPIPE
CLAIM_FAILED = 3  # iclab reproduce: a claim check said NO
MESSAGE_LIMIT = 1000  # characters of an error message printed (a quoted value can be huge)

__all__ = ["UsageError", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose help may end with text made only when the help is shown (``details``)."""

    def __init__(self, *args, details: Callable[[], str] | None = None, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)  # no abbreviations: "--f" must not stand for --force
        super().__init__(*args, **kwargs)
        self._details = details

    def format_help(self) -> str:
        if self._details is not None:
            self.epilog = self._details()
        return super().format_help()

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Arguments left over are an error of this parser, so a verb's stray argument (e.g. overrides split
        by an option) gets the verb's own usage line."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras


def _version() -> str:
    """The installed distribution's version (the package's own where it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("iclab")
    except PackageNotFoundError:
        from iclab import __version__

        return __version__


def _config_keys_help() -> str:
    from iclab.config import key_rows

    lines = ["config keys: key, default, allowed values, meaning (a family's own keys name the family):"]
    for row in key_rows():
        lines.append(
            f"  {row.key:<28} {row.default:<9} " + (f"[{row.allowed}] " if row.allowed else "") + row.described()
        )
    return "\n".join(lines)


def _learners_help() -> str:
    from iclab.learners.specs import LEARNER_SPECS

    specs = [f"{spec.name}[:{':'.join(f'{k}=' for k in spec.keys)}]" if spec.keys else spec.name
             for spec in LEARNER_SPECS.values()]  # fmt: skip
    return "learners: " + ", ".join(specs)


def _recipes_help() -> str:
    from iclab.experiments import all_recipes

    return "recipes:\n" + "\n".join(f"  {r.name:<20} {r.paper}: {r.claim}" for r in all_recipes())


def _check_device(device: str) -> str:
    import torch

    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        return device
    raise UsageError(f"--device must be cpu, cuda or cuda:N, got {device!r}")


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")


def _add_backend(parser: argparse.ArgumentParser, workers: str) -> None:
    """--backend and its settings (:class:`iclab.backends.BackendOptions`); ``workers``: what --workers means
    for the local pool."""
    group = parser.add_argument_group("where the runs train")
    group.add_argument("--backend", default="local", help="local (default: a process pool), ray or slurm")
    group.add_argument("--workers", type=int, metavar="N",
                       help=f"local: {workers}; ray: the CPUs of the local Ray instance (default: the usable "
                       "cores); slurm: array jobs at once (default: no limit)")  # fmt: skip
    group.add_argument("--cpus-per-run", type=int, default=1, metavar="N",
                       help="ray, slurm: cores (torch threads) a run")  # fmt: skip
    group.add_argument("--gpus-per-run", type=float, default=0.0, metavar="G",
                       help="ray (a fraction shares a GPU), slurm: GPUs a run (default 0)")  # fmt: skip
    group.add_argument("--ray-address", metavar="ADDRESS",
                       help="ray: a cluster (auto, ray://host:10001); default: a local ray.init()")  # fmt: skip
    group.add_argument("--partition", metavar="NAME", help="slurm: the partition (default: the cluster's)")
    group.add_argument("--time", type=int, default=60, metavar="MINUTES",
                       help="slurm: minutes a job may run (default 60)")  # fmt: skip
    group.add_argument("--slurm-local", action="store_true",
                       help="slurm: run the jobs on this machine with submitit's local executor")  # fmt: skip


def _backend_options(args: argparse.Namespace, workers: int | None) -> BackendOptions:
    from iclab.backends import BackendOptions

    options = BackendOptions(args.backend, workers, args.cpus_per_run, args.gpus_per_run, args.ray_address,
                             args.partition, args.time, args.slurm_local)  # fmt: skip
    options.check()
    return options


def _backend_device(device: str, options: BackendOptions) -> str:
    """``device`` checked on this machine for the local pool; elsewhere (Ray, Slurm) its form, and a GPU asked
    for each run when it is cuda."""
    if options.name == "local":
        return _check_device(device)
    if not (device == "cpu" or re.fullmatch(r"cuda(:\d+)?", device)):
        raise UsageError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
    if device != "cpu" and options.gpus_per_run == 0:
        raise UsageError(f"--device {device} with --backend {options.name} needs --gpus-per-run (e.g. 1; on Ray "
                         "0.25 shares a GPU among 4 runs)")  # fmt: skip
    return device


def cmd_train(args: argparse.Namespace) -> int:
    from iclab.config import load_config
    from iclab.rundir import clear_run_dir
    from iclab.train import TrainingDiverged, train

    cfg = load_config(args.config, args.overrides)
    device = _check_device(args.device)
    if cfg.train.ensemble > 1:
        return _train_ensemble(cfg, args, device)
    if args.force:
        clear_run_dir(Path(args.out), wait=args.wait)
    try:
        summary = train(cfg, args.out, device=device, progress=not args.quiet, wait=args.wait)
    except TrainingDiverged as err:
        print(f"iclab: {err}", file=sys.stderr)
        return 1
    print(f"final_eval_loss {summary['final_eval_loss']:.6g}{_spread(summary)} after {summary['steps']} steps; "
          f"run dir: {args.out}")  # fmt: skip
    return 0


def _train_ensemble(cfg: Config, args: argparse.Namespace, device: str) -> int:
    """``iclab train … train.ensemble=E --out DIR``: members in DIR/member-<i> (:mod:`iclab.ensemble`); a line
    per member; exit 1 when one diverged."""
    from iclab.ensemble import member_dirs, train_ensemble
    from iclab.rundir import clear_run_dir

    outs = member_dirs(args.out, cfg.train.ensemble)
    if args.force:
        for out in outs:
            clear_run_dir(out, wait=args.wait)
    summaries = train_ensemble(cfg, args.out, device=device, progress=not args.quiet, wait=args.wait)
    for out, summary in zip(outs, summaries, strict=True):
        if summary.get("status") == "finished":
            print(f"{out}: final_eval_loss {summary['final_eval_loss']:.6g}{_spread(summary)} after "
                  f"{summary['steps']} steps")  # fmt: skip
        else:
            print(f"iclab: {out}: {summary.get('message')}", file=sys.stderr)
    return 1 if any(summary.get("status") != "finished" for summary in summaries) else 0


def _spread(summary: dict) -> str:
    """`` (± 0.011 s.e., 95% interval 1.13–1.17)`` from a run's summary, with a note when the loss has a heavy
    tail; what an older run's summary holds of it."""
    sem, low, high = (summary.get(key) for key in ("final_eval_sem", "final_eval_low", "final_eval_high"))
    parts = [f"± {sem:.2g} s.e."] if sem is not None else []
    if low is not None and high is not None:
        parts.append(f"{summary.get('final_eval_confidence', 0.95):.0%} interval {low:.4g}–{high:.4g}")
    if summary.get("final_eval_heavy_tail"):
        parts.append(f"heavy tail: the worst 0.1 % of prompts carry {summary['final_eval_top_share']:.0%} of the loss")
    return f" ({', '.join(parts)})" if parts else ""


def cmd_shifts(args: argparse.Namespace) -> int:
    """``iclab eval RUN --shifts …``: Garg et al.'s distribution shifts (:mod:`iclab.shifts`)."""
    from iclab.rundir import read_config
    from iclab.shifts import evaluate_shifts, parse_shifts, shift_summary

    check_flag("--batch-size", args.batch_size, ge=2, integer=True)
    table = evaluate_shifts(args.run_dir, parse_shifts(args.shifts), args.batch_size, _check_device(args.device))
    n = int(table["k"].max())
    d = read_config(Path(args.run_dir)).task.d
    print("error normalised by the zero predictor's, at d and at n in-context examples")
    print(shift_summary(table, sorted({min(d, n), n})).to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"table: {Path(args.run_dir) / 'shifts.csv'}; figure: {Path(args.run_dir) / 'figures' / 'shifts.png'}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from iclab.limits import check_memory, prompt_bytes
    from iclab.run_eval import curve_table, evaluate_run, heavy_tail_note
    from iclab.rundir import FIGURES_DIR, check_writable_folder, read_config
    from iclab.runs import require_finished

    if len(args.run_dir) > 1:
        return cmd_eval_runs(args)
    if args.figure is not None:
        raise UsageError("--figure is the figure of several run dirs; one run's is RUN/figures/error_curve.png")
    args.run_dir = args.run_dir[0]
    require_finished(args.run_dir, "eval")
    if args.shifts:
        return cmd_shifts(args)
    check_flag("--batch-size", args.batch_size, ge=2, integer=True)
    cfg = read_config(Path(args.run_dir))
    for folder in (Path(args.run_dir), Path(args.run_dir) / FIGURES_DIR):  # eval.json, figures/error_curve.png
        check_writable_folder(folder, "iclab eval writes into")
    check_memory(2 * prompt_bytes(cfg.task, args.batch_size, 8), f"eval --batch-size {args.batch_size}", "--batch-size")
    curves = evaluate_run(args.run_dir, args.learners, batch_size=args.batch_size, device=_check_device(args.device))
    if args.json:
        print(json.dumps([c.to_dict() for c in curves]))
    else:
        print("mean squared error at the query vs number of in-context examples")
        print(curve_table(curves).to_string(float_format=lambda v: f"{v:.4g}"))
        print(heavy_tail_note(curves))
        print(f"figure: {Path(args.run_dir) / 'figures' / 'error_curve.png'}")
    return 0


def cmd_eval_runs(args: argparse.Namespace) -> int:
    """``iclab eval RUN1 RUN2 …``: each run evaluated as alone, then their models' curves on one figure."""
    from iclab.limits import check_memory, prompt_bytes
    from iclab.run_eval import compare_runs, curve_table, default_comparison_figure
    from iclab.rundir import FIGURES_DIR, check_writable_folder, read_config
    from iclab.runs import require_finished

    if args.shifts:
        raise UsageError("--shifts takes one run dir")
    check_flag("--batch-size", args.batch_size, ge=2, integer=True)
    runs = [Path(run) for run in args.run_dir]
    for run in runs:
        require_finished(run, "eval")
        for folder in (run, run / FIGURES_DIR):
            check_writable_folder(folder, "iclab eval writes into")
        needed = 2 * prompt_bytes(read_config(run).task, args.batch_size, 8)
        check_memory(needed, f"eval --batch-size {args.batch_size}", "--batch-size")
    figure = Path(args.figure) if args.figure else default_comparison_figure(runs)
    check_writable_folder(figure.parent, "--figure")
    results, figure = compare_runs(runs, args.learners, args.batch_size, _check_device(args.device), figure)
    if args.json:
        print(json.dumps({run: [c.to_dict() for c in curves] for run, curves in results.items()}))
        return 0
    for run, curves in results.items():
        print(f"{run}: mean squared error at the query vs number of in-context examples")
        print(curve_table(curves).to_string(float_format=lambda v: f"{v:.4g}"))
        print(f"figure: {Path(run) / FIGURES_DIR / 'error_curve.png'}\n")
    print(f"combined figure: {figure}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from iclab.check import verify_run_dir

    report = verify_run_dir(args.run_dir)
    for name, ok, detail in report:
        print(f"{'ok ' if ok else 'BAD'} {name:<20} {detail}")
    bad = [name for name, ok, _ in report if not ok]
    print(f"{args.run_dir}: " + (f"problems in {', '.join(bad)}" if bad else "all files verified"))
    return 1 if bad else 0


def _check_probe_memory(run_dir: Path, settings: ProbeSettings) -> None:
    """ResourceError when probing the run in ``run_dir`` with ``settings`` needs more memory than is free."""
    from iclab.limits import check_memory, probe_memory
    from iclab.rundir import read_config

    cfg = read_config(run_dir)
    curriculum = cfg.train.curriculum
    first = settings.first_prefix or (min(curriculum.n_start, cfg.task.n) if curriculum.enabled else cfg.task.n)
    needed = probe_memory(cfg, settings.prompts, settings.probe_prompts, settings.queries,
                          max(cfg.task.n - first + 1, 1), settings.max_iterations)  # fmt: skip
    check_memory(needed, "this probe", "--prompts, --queries, --max-iterations or raise --first-prefix")


def cmd_probe(args: argparse.Namespace) -> int:
    from iclab.probe import ProbeSettings, probe_run
    from iclab.rundir import check_writable_folder
    from iclab.runs import require_finished

    for flag, value, low in (("--prompts", args.prompts, 2), ("--queries", args.queries, 1),
                             ("--max-iterations", args.max_iterations, 0), ("--sweeps", args.sweeps, 1)):  # fmt: skip
        check_flag(flag, value, ge=low, integer=True)
    if args.metric not in ("difference", "sime"):
        raise UsageError(f"--metric must be one of difference, sime; got {args.metric!r}")
    if args.readout not in ("model", "probe"):
        raise UsageError(f"--readout must be one of model, probe; got {args.readout!r}")
    if args.first_prefix is not None:
        check_flag("--first-prefix", args.first_prefix, ge=1, integer=True)
    check_flag("--seed", args.seed, ge=0, integer=True)
    settings = ProbeSettings(prompts=args.prompts, queries=args.queries, first_prefix=args.first_prefix,
                             max_iterations=args.max_iterations, metric=args.metric, sweeps=args.sweeps,
                             seed=args.seed, readout=args.readout)  # fmt: skip
    require_finished(args.run_dir, "probe")
    _check_probe_memory(Path(args.run_dir), settings)
    out = Path(args.out) if args.out else Path(args.run_dir) / "probe"
    check_writable_folder(out, "--out")
    result = probe_run(Path(args.run_dir), out, settings, device=_check_device(args.device), progress=not args.quiet)
    columns = ["layer", "readout_loss", "best", "difference", "sime", "sensitivity"]
    print(result.layers[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"report: {out / 'report.md'}; figures: {out / 'figures'}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from iclab.experiments import all_recipes, get_recipe, list_run_commands, reproduce
    from iclab.experiments.records import recorded_counts
    from iclab.experiments.reproduce import check_size, seeds_of, verdict_line
    from iclab.rundir import check_writable_folder

    if args.list:
        for recipe in all_recipes():
            print(f"{recipe.name:<17} {recipe.paper} — {recipe.claim}\n{'':<17} {recorded_counts(recipe.name)}")
        return 0
    if args.name is None:
        raise UsageError(f"give a recipe name ({', '.join(r.name for r in all_recipes())}) or --list")
    recipe = get_recipe(args.name)
    if args.workers is not None and args.backend == "local":
        if args.jobs != 1:
            raise UsageError("--workers and --jobs are the same for --backend local; give one of them")
        args.jobs = args.workers
    check_flag("--jobs", args.jobs, ge=1, integer=True)
    if args.quick and args.size not in (None, "quick"):
        raise UsageError(f"--quick is --size quick; got both --quick and --size {args.size}")
    size = "quick" if args.quick else args.size or "full"
    check_size(recipe, size)
    seeds = seeds_of(args.seeds, args.seed_offset)
    suffix = ("" if size == "full" else f"-{size}") + ("-untrained" if args.untrained else "")
    out = Path(args.out or f"runs/reproduce/{args.name}{suffix}")
    if args.list_runs:
        print("\n".join(list_run_commands(args.name, out, size, args.seeds, args.seed_offset, args.untrained)))
        return 0
    options = _backend_options(args, args.jobs if args.backend == "local" else args.workers)
    device = _backend_device(args.device, options)
    check_writable_folder(out, "--out")
    common = {"size": size, "seeds": args.seeds, "seed_offset": args.seed_offset, "device": device,
              "progress": not args.quiet, "untrained": args.untrained}  # fmt: skip
    if options.name == "local":
        outcome = reproduce(args.name, out, jobs=args.jobs, **common)
    else:
        from iclab.backends import open_backend

        runs = len(recipe.plan(recipe.sizes[size])) * len(seeds)
        with open_backend(options, out / ".submitit", runs) as (executor, _):
            outcome = reproduce(args.name, out, executor=executor, **common)
    for result in outcome.results:
        print(verdict_line(result))
    print(f"{args.name} ({size}, seeds {', '.join(map(str, seeds))}): {outcome.counts.text()}")
    figures = f"; figures: {out / 'figures'}" if (out / "figures").is_dir() else ""
    print(f"report: {out / 'report.md'}{figures}")
    if args.untrained:
        passed = outcome.passed_untrained
        if passed:
            print(f"iclab: reproduce {args.name} --untrained: {len(passed)} reproduction claims pass on untrained "
                  f"models: {'; '.join(r.claim.key for r in passed)}", file=sys.stderr)  # fmt: skip
            return CLAIM_FAILED
        return 0
    failed = outcome.failed
    if failed:
        print(f"iclab: reproduce {args.name} ({size}): {len(failed)} of {len(outcome.results)} claims not "
              f"reproduced: {'; '.join(f'{r.claim.key} ({r.verdict_text()})' for r in failed)}",
              file=sys.stderr)  # fmt: skip
        return CLAIM_FAILED
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from iclab.results import RESULTS_FILE, format_table, summary_view
    from iclab.sweep import SweepSpec, parse_grid, plan_sweep, read_sweep_file, run_sweep, train_commands

    options = _backend_options(args, args.workers)
    spec = read_sweep_file(Path(args.sweep)) if args.sweep else SweepSpec()
    spec = spec.merged(SweepSpec(tuple(args.overrides), parse_grid(args.grid or []), args.seeds))
    runs = plan_sweep(spec)
    out = Path(args.out)
    if args.list_runs:
        print("\n".join(train_commands(runs, out)))
        return 0
    outcome = run_sweep(runs, out, options, _backend_device(args.device, options), progress=not args.quiet)
    print(format_table(summary_view(outcome.table)))
    diverged = f", {len(outcome.diverged)} diverged" if outcome.diverged else ""
    print(f"{len(runs)} runs: {len(outcome.trained)} trained now, {len(outcome.skipped)} already done{diverged}; "
          f"results: {out / RESULTS_FILE}")  # fmt: skip
    return 1 if outcome.diverged else 0


def cmd_results(args: argparse.Namespace) -> int:
    from iclab.results import (
        figure_path,
        find_run_dirs,
        format_table,
        plot_results,
        results_table,
        sorted_table,
        summary_view,
    )
    from iclab.rundir import check_writable_folder

    folder = Path(args.dir)
    if not folder.is_dir():
        raise UsageError(f"{args.dir}: not a folder (iclab results reads the run dirs in a folder)")
    if (args.by is not None or args.hue is not None or args.out is not None) and args.plot is None:
        raise UsageError("--by, --hue and --out go with --plot METRIC")
    if args.plot is not None and args.by is None:
        raise UsageError("--plot METRIC needs --by KEY, the config key on the x axis (e.g. --by task.n)")
    run_dirs = find_run_dirs(folder)
    if not run_dirs:
        raise UsageError(f"{args.dir} holds no run dirs (folders with a config.yaml), nothing to tabulate")
    table = sorted_table(results_table(folder, run_dirs))
    print(format_table(summary_view(table)))
    if args.plot is not None:
        path = Path(args.out) if args.out else figure_path(folder, args.plot, args.by, args.hue)
        check_writable_folder(path.parent, "--out")
        points = plot_results(table, args.plot, args.by, path, hue=args.hue, folder=args.dir)
        print(f"\n{args.plot}: mean over seeds with a 90 % t interval")
        print(format_table(points))
        print(f"figure: {path}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from iclab.config import config_to_yaml, key_table, load_config

    if args.config_verb == "keys":
        print(key_table(), end="")
        return 0
    print(config_to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from iclab.demo import run_demo

    run_demo(Path(args.out), device=_check_device(args.device), steps=args.steps, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="iclab", description="The science of in-context learning.")
    parser.add_argument("--version", action="version", version=f"iclab {_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB", parser_class=_Parser)

    train = verbs.add_parser(
        "train",
        help="train a model on in-context prompts",
        description="Train a model; config from --config YAML and key=value overrides "
        "(e.g. task.d=5 model.layers=2 train.lr=1e-3).",
        details=_config_keys_help,
    )
    train.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    train.add_argument("--config", help="YAML config file")
    train.add_argument("--out", required=True, help="run dir (created; resumed if it holds a checkpoint)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--force", action="store_true", help="delete the run in --out first and start over")
    train.add_argument("--wait", action="store_true", help="if another process is writing --out, wait for it")
    _add_device(train)
    train.set_defaults(func=cmd_train)

    ev = verbs.add_parser(
        "eval",
        help="error vs number of examples: a run's model beside learners",
        description="Evaluate a trained run beside reference learners on the same prompts. Learners take "
        "parameters as name:key=value (e.g. gd:steps=2:lr=0.5 ridge:alpha=0.1 knn:k=5).",
        details=_learners_help,
    )
    ev.add_argument("run_dir", nargs="+", metavar="RUN_DIR",
                    help="a finished run dir made by iclab train; several: a figure with a curve per run")  # fmt: skip
    ev.add_argument("--figure", metavar="PNG", help="several runs: where their combined figure goes (default: "
                    "compare-RUN1-RUN2….png in the runs' common folder)")  # fmt: skip
    ev.add_argument("--learners", nargs="+", metavar="SPEC", help="default: gd least_squares averaging zero")
    ev.add_argument("--batch-size", type=int, default=5000, help="evaluation prompts (default 5000)")
    ev.add_argument("--json", action="store_true", help="print the curves as JSON")
    ev.add_argument("--shifts", nargs="+", metavar="SHIFT",
                    help="Garg et al.'s distribution shifts instead: all, or some of skewed_covariance, noisy_labels, "
                    "scaled_inputs, orthant, orthogonal_query, query_in_context, subspace")  # fmt: skip
    _add_device(ev)
    ev.set_defaults(func=cmd_eval)

    check = verbs.add_parser(
        "check",
        help="verify the files of a run dir",
        description="Verify every file of a run dir (parsable, checksums, matching configs, no leftovers). "
        "Exit 0 when all are fine, 1 otherwise.",
    )
    check.add_argument("run_dir", help="a run dir made by iclab train")
    check.set_defaults(func=cmd_check)

    probe = verbs.add_parser(
        "probe",
        help="which algorithm does each layer of a trained model run",
        description="Probe a trained run layer by layer: read-outs and linear probes, the best match among GD-k, "
        "preconditioned GD-k, Newton-Schulz-k, ridge, least squares and functional GD-k (prediction difference, "
        "similarity of errors, input sensitivity), the weights beside the GD construction and plateaus along "
        "query lines. Writes report.md, CSVs and figures/ into RUN_DIR/probe (or --out).",
    )
    probe.add_argument("run_dir", help="a run dir made by iclab train")
    probe.add_argument("--out", help="output folder (default RUN_DIR/probe)")
    probe.add_argument("--prompts", type=int, default=500, help="prompts matched (default 500)")
    probe.add_argument("--queries", type=int, default=10, help="query points per prompt (default 10)")
    probe.add_argument("--first-prefix", type=int, help="compare context prefixes from this length to n "
                       "(default: the lengths the model was trained on; 1: every prefix, as Fu et al.)")  # fmt: skip
    probe.add_argument("--max-iterations", type=int, default=20, help="iteration counts 0..K tried (default 20)")
    probe.add_argument("--metric", default="difference",
                       help="fits hyper-parameters and ranks: prediction difference (default) or SimE")  # fmt: skip
    probe.add_argument("--readout", default="model",
                       help="what a layer predicts: the model's own read-out after it (default), or a linear probe "
                       "fitted on its residual stream, shared by the prefixes (Fu et al.; for GPT-2)")  # fmt: skip
    probe.add_argument("--sweeps", type=int, default=20, help="query lines for piecewise constancy (default 20)")
    probe.add_argument("--seed", type=int, default=0, help="seed of the probe's prompts (default 0)")
    probe.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_device(probe)
    probe.set_defaults(func=cmd_probe)

    rep = verbs.add_parser(
        "reproduce",
        help="reproduce a published result (its runs at 3+ seeds, claims with controls, figures, report.md)",
        description="Reproduce a paper's claims: trains the recipe's runs at every seed (resumable run dirs), "
        "measures them, decides every claim at every seed together with its negative controls (wrong answers the "
        "same test must reject), writes claims.csv, figures and report.md, and prints one line per claim and the "
        "counts. Exit 0 when every claim tested is reproduced, 3 when one is not (a line on stderr names them); "
        "with --untrained, 0 when no reproduction claim passes on the untrained models, 3 when one does.",
        details=_recipes_help,
    )
    rep.add_argument("name", nargs="?", help="recipe name, e.g. functional_gd (--list: every recipe)")
    rep.add_argument("--list", action="store_true",
                     help="print the recipes (name, paper — claim, and the counts of the last recorded full-size "
                     "run) and exit")  # fmt: skip
    rep.add_argument("--quick", action="store_true", help="the small size that CI runs (about a minute)")
    rep.add_argument("--size", help="a size the recipe has (quick, full, and some have more; default full)")
    rep.add_argument("--seeds", type=int, default=3, help="seeds every claim runs at (default 3, at least 3)")
    rep.add_argument("--seed-offset", type=int, default=0,
                     help="the first seed (default 0): seeds S, S+1, …, S+K-1")  # fmt: skip
    rep.add_argument("--untrained", action="store_true",
                     help="the recipe's negative control: its runs at initialisation (0 training steps), on which "
                     "no reproduction claim may pass (default out: …-untrained)")  # fmt: skip
    rep.add_argument("--out", help="output folder (default runs/reproduce/NAME[-SIZE])")
    rep.add_argument("--quiet", action="store_true", help="no progress bars")
    rep.add_argument("--jobs", type=int, default=1, help="runs trained at once in worker processes (default 1)")
    rep.add_argument("--list-runs", action="store_true",
                     help="print one `iclab train …` command per run and seed (any scheduler) and exit")  # fmt: skip
    _add_device(rep)
    _add_backend(rep, "the same as --jobs")
    rep.set_defaults(func=cmd_reproduce)

    sweep = verbs.add_parser(
        "sweep",
        help="train a grid of configs × seeds, each run once, and tabulate them",
        description="Train every combination of the --grid values (× --seeds) into DIR/<run-id>/, the id a hash "
        "of the run's resolved config: finished runs are skipped, interrupted ones resume, and sweeps sharing "
        "a DIR never train a run twice. Writes DIR/results.csv (one row per run: summary and config keys). "
        "--seeds N sets seed = base seed (0 unless given) + 0..N-1. A sweep file (--sweep FILE, YAML) holds "
        "base: (overrides), grid: (key: [values]) and seeds:; the command line adds to it.",
        details=_config_keys_help,
    )
    sweep.add_argument("overrides", nargs="*", metavar="key=value", help="base config overrides of every run")
    sweep.add_argument("--grid", action="append", metavar="key=v1,v2",
                       help="a swept key and its values (repeat for more keys: every combination runs)")  # fmt: skip
    sweep.add_argument("--seeds", type=int, metavar="N",
                       help="runs per grid point, seeds base+0..N-1 (default: the base seed)")  # fmt: skip
    sweep.add_argument("--sweep", metavar="FILE", help="a YAML sweep file (base, grid, seeds)")
    sweep.add_argument("--out", required=True, metavar="DIR",
                       help="the sweep's folder: a run dir per run and results.csv")  # fmt: skip
    sweep.add_argument("--list-runs", action="store_true",
                       help="print one `iclab train …` command per run (for any scheduler) and exit")  # fmt: skip
    sweep.add_argument("--quiet", action="store_true", help="no progress lines")
    _add_device(sweep)
    _add_backend(sweep, "worker processes (default: the usable cores, at most the runs to train)")
    sweep.set_defaults(func=cmd_sweep)

    res = verbs.add_parser(
        "results",
        help="the table of a folder of run dirs; a metric plotted against a config key",
        description="Print one row per run dir found in DIR (a sweep's, a reproduction's or any folder of run "
        "dirs): status, the config keys that vary, the final losses. With --plot METRIC --by KEY, draw METRIC "
        "(e.g. final_eval_loss) against KEY (e.g. task.n), one line per --hue value, seeds aggregated: their "
        "mean with a 90 % t interval. The figure goes to DIR/figures/METRIC_by_KEY.png (or --out).",
    )
    res.add_argument("dir", help="a folder of run dirs")
    res.add_argument("--plot", metavar="METRIC", help="a numeric column, e.g. final_eval_loss")
    res.add_argument("--by", metavar="KEY", help="the config key on the x axis, e.g. task.n")
    res.add_argument("--hue", metavar="KEY", help="a config key drawn as one line per value")
    res.add_argument("--out", metavar="PNG", help="where the figure goes (default DIR/figures/METRIC_by_KEY.png)")
    res.set_defaults(func=cmd_results)

    demo = verbs.add_parser(
        "demo",
        help="train a 1-layer LSA and compare it with one GD step and OLS",
        description="Train a 1-layer LSA on d=5, n=20 linear regression (about 30 s on 2 CPU "
        "cores) and print its loss beside the optimal GD step and OLS.",
    )
    demo.add_argument("--out", default="runs/demo", help="run dir (default runs/demo)")
    demo.add_argument("--steps", type=int, default=4000, help="training steps (default 4000)")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_device(demo)
    demo.set_defaults(func=cmd_demo)

    config = verbs.add_parser(
        "config",
        help="the resolved config as YAML, or the table of every key",
        description="`iclab config show [key=value …]` prints the resolved config as YAML (what `iclab train` "
        "would record); `iclab config keys` prints every key with its default, allowed values and meaning.",
    )
    config_verbs = config.add_subparsers(dest="config_verb", required=True, metavar="COMMAND", parser_class=_Parser)
    show = config_verbs.add_parser("show", help="the resolved config as YAML", details=_config_keys_help)
    show.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    show.add_argument("--config", help="YAML config file")
    config_verbs.add_parser("keys", help="every key: default, allowed values, meaning (markdown)")
    config.set_defaults(func=cmd_config)

    from iclab.cli_theory import register as register_theory

    register_theory(verbs)
    return parser


def _out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is an allocation that failed (numpy's MemoryError, torch's CPU or CUDA allocator)."""
    return (
        isinstance(err, MemoryError)
        or type(err).__name__ == "OutOfMemoryError"
        or (isinstance(err, RuntimeError) and "can't allocate memory" in str(err))
    )


def _error(message: str) -> int:
    """Print ``iclab: error: MESSAGE`` as one line of bounded length; the exit code of a usage error."""
    line = " ".join(message.split())
    if len(line) > MESSAGE_LIMIT:
        line = line[: MESSAGE_LIMIT - 15] + " … (cut short)"
    print(f"iclab: error: {line}", file=sys.stderr)
    return USAGE_ERROR


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv``; the exit code (0 done, 1 check failed or training diverged, 2 a bad
    request, 3 a reproduction's claim check said NO, 130 interrupted, 141 stdout closed by its reader)."""
    request: dict = {}
    try:
        with interrupts_outside_imports() as request:
            args = build_parser().parse_args(argv)
            return args.func(args)
    except BrokenPipeError:  # the reader of stdout is gone (e.g. `iclab … | head`): stop quietly, as `cat` does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return BROKEN_PIPE
    except KeyboardInterrupt as err:  # Ctrl-C anywhere; iclab.train.TrainingInterrupted says where it stopped
        print(f"iclab: {str(err) or 'interrupted'}", file=sys.stderr)
        return INTERRUPTED
    except Exception as err:
        if request:  # a Ctrl-C that a library turned into another error
            print("iclab: interrupted", file=sys.stderr)
            return INTERRUPTED
        if isinstance(err, UserError):
            return _error(str(err))
        if isinstance(err, OSError):  # an output location that cannot be written, a file that cannot be read
            where = err.filename2 if err.filename2 is not None else err.filename
            return _error(f"{where}: {err.strerror}" if where is not None and err.strerror else str(err))
        if _out_of_memory(err):
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            return _error(f"out of memory ({reason}); ask for less (smaller sizes or counts)")
        raise


if __name__ == "__main__":
    sys.exit(main())

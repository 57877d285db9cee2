"""The training loop: Adam on fresh prompts every step, held-out evaluation, checkpoints, safe stops.

``train(cfg, out_dir)`` makes, resumes (from the last checkpoint) or skips (when finished) the run dir
described in :mod:`iclab.rundir`, and returns its summary. It first measures the memory the run needs
(:mod:`iclab.limits`) and refuses a run the machine cannot hold; it holds the run dir's lock while writing it.
NaN/inf or a loss above train.diverge_loss stops the run (TrainingDiverged, with advice that fits the cause);
SIGINT/SIGTERM save a checkpoint and stop it (TrainingInterrupted). The task, the model, the objective and the
per-step callbacks (metrics rows and held-out evaluation, checkpoints, the trackers of train.loggers
(:mod:`iclab.tracking`), anything of the caller's) are seams: ``train`` builds them from the config unless they
are passed in. A step is :func:`begin_step` (learning rate, curriculum, batch), the forward and backward pass,
:func:`diverging`, clipping and AdamW, then :func:`end_step` (counts, callbacks); :mod:`iclab.ensemble` trains
``train.ensemble`` runs with the same pieces around one batched forward and backward.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch
from tqdm import tqdm

from iclab.config import Config, config_to_dict
from iclab.errors import UserError
from iclab.evaluate import query_loss, sampled_loss_stats
from iclab.interrupts import stop_requests
from iclab.learners import ModelLearner, from_model
from iclab.limits import check_training_memory
from iclab.models import InContextModel, build_model, run_with_cache
from iclab.objectives import OBJECTIVES, Objective
from iclab.plots import config_caption, plot_training
from iclab.prompts import Prompts
from iclab.resume import (
    RunDirSetup,
    TrainState,
    derived_files,
    prepare_run_dir,
    refuse_unusable_out,
    restore_checkpoint,
    write_checkpoint,
)
from iclab.rundir import (
    CONFIG_FILE,
    LOSS_FIGURE,
    SUMMARY_FILE,
    RunDirError,
    RunFiles,
    config_bytes,
    json_bytes,
    locked_run_dir,
    remove_stale_temp_files,
)
from iclab.seeding import make_generator
from iclab.tasks import Sampler, make_task
from iclab.theory import isotropic_reference
from iclab.tracking import check_loggers, close_callbacks, logger_callbacks

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN/inf or the loss exceeded train.diverge_loss."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; a checkpoint was saved at ``step``. A KeyboardInterrupt: what stops the
    training stops its caller too (a sweep, a reproduction), and the CLI prints its message (exit 130)."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


def curriculum_sizes(cfg: Config, step: int) -> tuple[int, int]:
    """(n, d_active) at ``step``: the full task, or Garg et al.'s growing curriculum."""
    c, t = cfg.train.curriculum, cfg.task
    if not c.enabled:
        return t.n, t.d
    stage = step // c.every
    return min(t.n, c.n_start + stage * c.n_step), min(t.d, c.d_start + stage * c.d_step)


def learning_rate(cfg: Config, step: int) -> float:
    """Learning rate at ``step``: linear warm-up, then constant or cosine decay to 0."""
    tc = cfg.train
    if tc.warmup_steps and step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    if tc.lr_schedule == "constant":
        return tc.lr
    span = max(tc.steps - tc.warmup_steps, 1)
    return tc.lr * 0.5 * (1.0 + math.cos(math.pi * (step - tc.warmup_steps) / span))


def _grad_norm(model: torch.nn.Module) -> float:
    norms = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _summary(cfg: Config, state: TrainState, status: str, started: float, **extra) -> dict:
    return {
        "status": status,
        "steps": state.step,
        "final_train_loss": state.rows[-1]["train_loss"] if state.rows else None,
        "wall_seconds": round(time.time() - started, 3),
        "config": config_to_dict(cfg),
        **extra,
    }


@dataclass
class TrainingRun:
    """What the loop holds; every callback gets it after each optimiser step (``state.step`` is then the
    number of steps done, ``loss``/``lr``/``n``/``d_active`` describe that step)."""

    cfg: Config
    out: Path
    files: RunFiles
    task: Sampler
    model: InContextModel
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    state: TrainState
    heldout: Prompts
    learner: ModelLearner
    stop_request: dict = field(default_factory=dict)  # {"signal": name} once SIGINT/SIGTERM arrived
    checkpoint_step: int = 0
    loss: float = math.nan
    lr: float = 0.0
    n: int = 0
    d_active: int = 0

    @property
    def finished(self) -> bool:
        return self.state.step >= self.cfg.train.steps


class Callback(Protocol):
    """Anything with ``on_step(run)``, called after every optimiser step in the order given."""

    def on_step(self, run: TrainingRun) -> None: ...


class MetricsRows:
    """A metrics row every ``train.log_every`` steps; the held-out loss every ``eval.every`` steps and at the
    end (its row is written then too)."""

    def on_step(self, run: TrainingRun) -> None:
        step, cfg = run.state.step, run.cfg
        evaluate_now = step % cfg.eval.every == 0 or run.finished
        if step % cfg.train.log_every == 0 or evaluate_now:
            eval_loss = query_loss(run.learner, run.heldout)[0] if evaluate_now else None
            row = {"step": step, "train_loss": run.state.window.take(), "eval_loss": eval_loss}
            run.state.rows.append({**row, "lr": run.lr, "n": run.n, "d": run.d_active})


class Checkpoints:
    """checkpoint.pt, the model and metrics.csv every ``train.checkpoint_every`` steps, at the end, and at
    once when a stop was requested."""

    def on_step(self, run: TrainingRun) -> None:
        step = run.state.step
        if step % run.cfg.train.checkpoint_every == 0 or run.finished or run.stop_request:
            write_checkpoint(run.files, run.cfg, run.model, run.optimizer, run.generator, run.state)
            run.checkpoint_step = step


def default_callbacks(cfg: Config | None = None) -> list[Callback]:
    """The callbacks ``train`` uses unless given others: metrics rows and held-out evaluation, then
    checkpoints (the checkpoint holds the rows of its step), then a logger per ``cfg.train.loggers``
    (:mod:`iclab.tracking`)."""
    return [MetricsRows(), Checkpoints(), *(logger_callbacks(cfg) if cfg is not None else [])]


def divergence_advice(run: TrainingRun, batch: Prompts, loss_value: float) -> str:
    """What to change, judged from the cause: non-finite prompts, a forward pass that overflows at
    initialisation, clipping already on, or neither."""
    tensors = [t for t in (batch.xs, batch.ys, batch.xq, batch.yq, batch.descriptor) if t is not None]
    if not all(bool(torch.isfinite(t).all()) for t in tensors):
        return "the prompts of this step hold NaN/inf: check the task's settings (or the sampler passed in)"
    labels_in_exp = getattr(run.cfg.model, "activation", None) == "exp" and run.cfg.model.param == "full"
    exp_advice = (
        "exp attention with model.param=full reads the labels in its scores, and exp(c·y_i·y_j) has no finite mean "
        "for Gaussian labels once c ≥ 1/E y² (a smaller init or step size only delays the overflow): set "
        "model.param=sparse (scores from the inputs only, as in Cheng et al.)"
    )
    if run.state.step == 0:  # the very first step: the initial weights
        what = "is not finite" if not math.isfinite(loss_value) else f"is already {loss_value:.3g}"
        where = overflow_site(run.model, batch.slice(0, min(batch.batch, 64)))
        scale = getattr(run.cfg.model, "init_scale", None)
        lower = (
            f"lower model.init_scale (now {scale:g}, e.g. {scale / 10:g})"
            if scale
            else "lower the initial scale (model.init_scale, where the model family has it)"
        )
        advice = exp_advice if labels_in_exp else lower
        overflow = f"the forward pass overflows with the initial weights{where}"
        return f"the loss {what} at initialisation ({overflow}): {advice}"
    if labels_in_exp:
        return exp_advice
    if run.cfg.train.grad_clip is not None:
        return f"gradients are already clipped at {run.cfg.train.grad_clip:g}: lower train.lr (or add warm-up)"
    return "set train.grad_clip (e.g. 1.0) or lower train.lr"


@torch.no_grad()
def overflow_site(model: InContextModel, prompts: Prompts) -> str:
    """``: blocks.1.attn.scores reach 5.7e+37, blocks.1.attn.weights is not finite``: in forward order, the
    first hook point whose values are not finite and the largest |value| of the one before it; "" when every
    hook stays finite (or the model has none)."""
    _, cache = run_with_cache(model, lambda: model.predict(prompts.xs, prompts.ys, prompts.xq, prompts.descriptor))
    previous = None
    for name, value in cache.items():
        if not bool(torch.isfinite(value).all()):
            before = f"{previous[0]} reach {previous[1]:.2g}, " if previous is not None else ""
            return f": {before}{name} is not finite"
        previous = (name, float(value.abs().max())) if value.numel() else previous
    return ""


def train(
    cfg: Config,
    out: str | Path,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] = print,
    *,
    task: Sampler | None = None,
    model: InContextModel | None = None,
    objective: Objective | None = None,
    callbacks: Sequence[Callback] | None = None,
    wait: bool = False,
) -> dict:
    """Train ``cfg`` into the run dir ``out`` (resuming from its checkpoint; skipping a finished run).

    ``task`` (default ``make_task(cfg.task, cfg.seed)``), ``model`` (an initialised model; default built from
    cfg.model with the seed's "init" stream), ``objective`` (default ``OBJECTIVES[cfg.train.objective]``) and
    ``callbacks`` (default :func:`default_callbacks`; a given list replaces them, so include them to keep
    metrics and checkpoints) are the seams for recipes, sweeps and tests; whatever is passed in must agree
    with ``cfg``, which is what the run dir records and resumes by (and what its memory is measured by). Another
    process writing ``out`` makes it refuse (RunDirError naming the process), or with ``wait`` wait for it.

    Returns the summary dict. Raises TrainingDiverged (summary status "diverged", last good checkpoint
    kept), TrainingInterrupted (on SIGINT/SIGTERM, after a checkpoint), ResourceError (more memory than the
    device has free) or RunDirError (see :func:`iclab.resume.prepare_run_dir`).
    """
    out = Path(out)
    if cfg.train.ensemble > 1:
        raise UserError(
            f"train.ensemble={cfg.train.ensemble} trains several run dirs: use iclab.ensemble.train_ensemble (what "
            "iclab train does with it)"
        )
    objective = OBJECTIVES[cfg.train.objective] if objective is None else objective
    check_loggers(cfg)
    refuse_unusable_out(out)
    try:  # a finished run is "already done" untouched (its lock included), whatever its size
        setup = prepare_run_dir(cfg, out)
    except RunDirError:  # decided again under the lock: another process may be writing the run dir
        setup = None
    if setup is None or setup.status != "done":
        check_training_memory(cfg, device, objective)
        with locked_run_dir(out, wait, log):
            setup = prepare_run_dir(cfg, out)
            if setup.status != "done":
                run = _start(cfg, out, setup, device, task, model, log)
                callbacks = default_callbacks(cfg) if callbacks is None else list(callbacks)
                try:
                    return _loop(run, device, progress, objective, callbacks)
                finally:
                    close_callbacks(callbacks)
    log(f"already done: {out} holds a finished run with this config")
    return setup.summary


def _loop(run: TrainingRun, device: str, progress: bool, objective: Objective, callbacks: list[Callback]) -> dict:
    """Train ``run`` to its last step, then finish it (:func:`_finish`)."""
    cfg, state = run.cfg, run.state
    started = time.time()
    bar = tqdm(total=cfg.train.steps, initial=state.step, disable=not progress, desc="train", mininterval=0.5)
    with stop_requests() as request:
        run.stop_request = request
        while not run.finished:
            batch = begin_step(run, device)
            loss = objective(run.model, batch)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss_value, grad_norm = loss.item(), _grad_norm(run.model)
            if diverging(cfg, loss_value, grad_norm):
                bar.close()
                raise _diverged(run, batch, loss_value, grad_norm, started)
            if cfg.train.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.train.grad_clip)
            run.optimizer.step()
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            bar.update(1)
            end_step(run, loss_value, callbacks)
            if request:
                bar.close()
                raise interrupted(request, state.step)
    bar.close()
    return _finish(run, device, started)


def begin_step(run: TrainingRun, device: str) -> Prompts:
    """The learning rate (set on the optimiser too) and the curriculum's sizes of the step ``run.state.step``,
    set on ``run``; the step's batch, drawn from the run's generator."""
    cfg, step = run.cfg, run.state.step
    run.lr = learning_rate(cfg, step)
    for group in run.optimizer.param_groups:
        group["lr"] = run.lr
    run.n, run.d_active = curriculum_sizes(cfg, step)
    dtype = DTYPES[cfg.train.dtype]
    return run.task.sample(cfg.train.batch_size, run.generator, n=run.n, d_active=run.d_active, dtype=dtype).to(device)


def diverging(cfg: Config, loss_value: float, grad_norm: float) -> bool:
    """Whether a step's loss and gradient norm (before clipping) stop the run: NaN/inf or a loss above
    train.diverge_loss."""
    return not (math.isfinite(loss_value) and math.isfinite(grad_norm)) or loss_value > cfg.train.diverge_loss


def end_step(run: TrainingRun, loss_value: float, callbacks: Sequence[Callback]) -> None:
    """Count the step (its optimiser step taken) and its loss, then run the callbacks."""
    run.state.step += 1
    run.state.window.add(loss_value)
    run.loss = loss_value
    for callback in callbacks:
        callback.on_step(run)


def interrupted(request: dict, step: int) -> TrainingInterrupted:
    """The error a stop request (SIGINT/SIGTERM) raises once the checkpoints of ``step`` are written."""
    return TrainingInterrupted(
        f"{request['signal']}: stopped at step {step} with a checkpoint; rerun the same command to resume", step
    )


def _start(
    cfg: Config, out: Path, setup: RunDirSetup, device: str, task: Sampler | None, model: InContextModel | None,
    log: Callable[[str], None],
) -> TrainingRun:  # fmt: skip
    """The task, model, optimizer and generator made (restored from the checkpoint when resuming), the run dir's
    config written (and, when resuming, the model, sidecar and metrics of the checkpoint's step: a kill may have
    left them at an earlier one), the held-out prompts drawn."""
    remove_stale_temp_files(out)
    files = RunFiles(out, setup.files)
    tc, dtype = cfg.train, DTYPES[cfg.train.dtype]
    task = make_task(cfg.task, cfg.seed) if task is None else task
    if model is None:
        model = build_model(cfg.model, task, make_generator(cfg.seed, "init"))
    model = model.to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay
    )
    generator = make_generator(cfg.seed, "train")
    state = TrainState()
    if setup.status == "resume":
        state = restore_checkpoint(out, cfg, model, optimizer, generator)
        files.commit({CONFIG_FILE: config_bytes(cfg), **derived_files(cfg, model, state)})
        log(f"resuming {out} from step {state.step}")
    else:
        files.commit({CONFIG_FILE: config_bytes(cfg)})
    heldout = task.sample(cfg.eval.batch_size, make_generator(cfg.seed, "heldout"), dtype=dtype).to(device)
    return TrainingRun(cfg, out, files, task, model, optimizer, generator, state, heldout, from_model(model),
                       checkpoint_step=state.step)  # fmt: skip


def _diverged(
    run: TrainingRun, batch: Prompts, loss_value: float, grad_norm: float, started: float
) -> TrainingDiverged:
    """Record the divergence in summary.json; the error to raise, with advice that fits the cause."""
    what = f"loss {loss_value:.4g}, gradient norm {grad_norm:.4g}"
    step = run.state.step + 1
    summary = _summary(run.cfg, run.state, "diverged", started, message=f"diverged at step {step}: {what}")
    run.files.commit({SUMMARY_FILE: json_bytes(summary)})
    kept = f"the last good checkpoint is at step {run.checkpoint_step}" if run.checkpoint_step else "no checkpoint yet"
    advice = divergence_advice(run, batch, loss_value)
    return TrainingDiverged(f"training diverged at step {step} ({what}); {kept} in {run.out}. {advice}")


def _finish(run: TrainingRun, device: str, started: float) -> dict:
    """The final evaluation on fresh prompts, then the loss figure and summary.json (status finished), the
    summary written last: a run is finished once it is."""
    cfg = run.cfg
    if cfg.train.steps == 0:
        write_checkpoint(run.files, cfg, run.model, run.optimizer, run.generator, run.state)
    final = sampled_loss_stats(run.learner, run.task, cfg.eval.batch_size, make_generator(cfg.seed, "final"),
                               DTYPES[cfg.train.dtype], device)  # fmt: skip
    blobs = {}
    if run.state.rows:
        with tempfile.TemporaryDirectory() as folder:
            figure = Path(folder) / "loss.png"
            plot_training(pd.DataFrame(run.state.rows), figure, isotropic_reference(cfg.task),
                          config_caption(cfg, run.out, run.state.step))  # fmt: skip
            blobs[LOSS_FIGURE] = figure.read_bytes()
    summary = _summary(cfg, run.state, "finished", started, final_eval_loss=final.mean,
                       final_eval_sem=_finite_or_none(final.sem), final_eval_low=_finite_or_none(final.low),
                       final_eval_high=_finite_or_none(final.high), final_eval_confidence=final.confidence,
                       final_eval_top_share=final.top_share, final_eval_heavy_tail=final.heavy_tail)  # fmt: skip
    run.files.commit({**blobs, SUMMARY_FILE: json_bytes(summary)})
    return summary

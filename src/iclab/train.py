"""The training loop: Adam on fresh prompts every step, held-out evaluation, checkpoints, safe stops.

``train(cfg, out_dir)`` makes, resumes (from the last checkpoint) or skips (when finished) the run dir
described in :mod:`iclab.rundir`, and returns its summary. NaN/inf or a loss above train.diverge_loss
stops the run (TrainingDiverged); SIGINT/SIGTERM save a checkpoint and stop it (TrainingInterrupted).
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from iclab.config import Config, config_to_dict
from iclab.evaluate import query_loss
from iclab.learners import from_model
from iclab.models import build_model
from iclab.plots import plot_training
from iclab.prompts import Prompts
from iclab.resume import TrainState, prepare_run_dir, restore_checkpoint, write_checkpoint
from iclab.rundir import FIGURES_DIR, SUMMARY_FILE, read_json, remove_stale_temp_files, write_config, write_json
from iclab.seeding import make_generator
from iclab.tasks import Task, make_task
from iclab.theory import isotropic_reference

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN/inf or the loss exceeded train.diverge_loss."""


class TrainingInterrupted(RuntimeError):
    """SIGINT or SIGTERM arrived; a checkpoint was saved at ``step``."""

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


def sample_in_chunks(
    task: Task, count: int, generator: torch.Generator, dtype: torch.dtype, chunk: int = 8192
) -> Prompts:
    """``count`` prompts drawn ``chunk`` at a time (bounded memory while sampling)."""
    sizes = [min(chunk, count - start) for start in range(0, count, chunk)]
    return Prompts.concat([task.sample(size, generator, dtype=dtype) for size in sizes])


@contextmanager
def stop_requests() -> Iterator[dict]:
    """While active, SIGINT/SIGTERM only record their name in the yielded dict (key "signal"), so the loop
    can finish its step and checkpoint; outside the main thread nothing is installed."""
    request: dict = {}
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def record(signum: int, _frame: object) -> None:
        request["signal"] = signal.Signals(signum).name

    for sig in previous:
        signal.signal(sig, record)
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _grad_norm(model: torch.nn.Module) -> float:
    norms = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _write_summary(out: Path, cfg: Config, state: TrainState, status: str, started: float, **extra) -> dict:
    summary = {
        "status": status,
        "steps": state.step,
        "final_train_loss": state.rows[-1]["train_loss"] if state.rows else None,
        "wall_seconds": round(time.time() - started, 3),
        "config": config_to_dict(cfg),
        **extra,
    }
    write_json(out / SUMMARY_FILE, summary)
    return summary


def train(
    cfg: Config, out: str | Path, device: str = "cpu", progress: bool = True, log: Callable[[str], None] = print
) -> dict:
    """Train ``cfg`` into the run dir ``out`` (resuming from its checkpoint; skipping a finished run).

    Returns the summary dict. Raises TrainingDiverged (summary status "diverged", last good checkpoint
    kept), TrainingInterrupted (on SIGINT/SIGTERM, after a checkpoint) or RunDirError (see
    :func:`iclab.resume.prepare_run_dir`).
    """
    out = Path(out)
    status = prepare_run_dir(cfg, out)
    if status == "done":
        log(f"already done: {out} holds a finished run with this config")
        return read_json(out / SUMMARY_FILE)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(out)
    write_config(out, cfg)

    dtype = DTYPES[cfg.train.dtype]
    tc = cfg.train
    task = make_task(cfg.task, cfg.seed)
    model = build_model(cfg.model, task, make_generator(cfg.seed, "init")).to(device=device, dtype=dtype)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay
    )
    generator = make_generator(cfg.seed, "train")
    state = TrainState()
    if status == "resume":
        state = restore_checkpoint(out, model, optimizer, generator)
        log(f"resuming {out} from step {state.step}")
    checkpoint_step = state.step
    heldout = task.sample(cfg.eval.batch_size, make_generator(cfg.seed, "heldout"), dtype=dtype).to(device)
    learner = from_model(model)

    started = time.time()
    bar = tqdm(total=tc.steps, initial=state.step, disable=not progress, desc="train", mininterval=0.5)
    with stop_requests() as request:
        while state.step < tc.steps:
            step = state.step
            lr = learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            n, d_active = curriculum_sizes(cfg, step)
            batch = task.sample(tc.batch_size, generator, n=n, d_active=d_active, dtype=dtype).to(device)
            loss = ((model.predict(batch.xs, batch.ys, batch.xq, batch.descriptor) - batch.yq) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            loss_value, grad_norm = loss.item(), _grad_norm(model)
            if not (math.isfinite(loss_value) and math.isfinite(grad_norm)) or loss_value > tc.diverge_loss:
                bar.close()
                what = f"loss {loss_value:.4g}, gradient norm {grad_norm:.4g}"
                _write_summary(out, cfg, state, "diverged", started, message=f"diverged at step {step + 1}: {what}")
                kept = (
                    f"the last good checkpoint is at step {checkpoint_step}" if checkpoint_step else "no checkpoint yet"
                )
                raise TrainingDiverged(
                    f"training diverged at step {step + 1} ({what}); {kept} in {out}. "
                    "Lower train.lr or set train.grad_clip."
                )
            if tc.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            optimizer.step()
            state.step += 1
            state.window.add(loss_value)
            bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            bar.update(1)

            evaluate_now = state.step % cfg.eval.every == 0 or state.step == tc.steps
            if state.step % tc.log_every == 0 or evaluate_now:
                eval_loss = query_loss(learner, heldout)[0] if evaluate_now else None
                row = {"step": state.step, "train_loss": state.window.take(), "eval_loss": eval_loss}
                state.rows.append({**row, "lr": lr, "n": n, "d": d_active})
            if state.step % tc.checkpoint_every == 0 or state.step == tc.steps or request:
                write_checkpoint(out, cfg, model, optimizer, generator, state)
                checkpoint_step = state.step
            if request:
                bar.close()
                raise TrainingInterrupted(
                    f"{request['signal']}: stopped at step {state.step} with a checkpoint; rerun the same "
                    "command to resume",
                    state.step,
                )
    bar.close()

    if tc.steps == 0:
        write_checkpoint(out, cfg, model, optimizer, generator, state)
    final = sample_in_chunks(task, cfg.eval.batch_size, make_generator(cfg.seed, "final"), dtype)
    final_loss, final_sem = query_loss(learner, final.to(device))
    if state.rows:
        plot_training(pd.DataFrame(state.rows), out / FIGURES_DIR / "loss.png", isotropic_reference(cfg.task))
    return _write_summary(
        out, cfg, state, "finished", started, final_eval_loss=final_loss, final_eval_sem=_finite_or_none(final_sem)
    )

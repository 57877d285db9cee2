"""The training loop: Adam on fresh prompts every step, held-out evaluation, checkpoints, NaN stop.

``train(cfg, out_dir)`` makes (or resumes, or skips when finished) the run dir described in
:mod:`iclab.rundir` and returns its summary.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from iclab.config import Config, config_to_dict, flat_keys
from iclab.evaluate import query_loss
from iclab.learners import from_model
from iclab.models import build_model
from iclab.plots import plot_training
from iclab.prompts import Prompts
from iclab.rundir import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    FIGURES_DIR,
    METRICS_FILE,
    SUMMARY_FILE,
    RunDirError,
    atomic_write_text,
    read_config,
    read_json,
    save_model,
    torch_save_atomic,
    write_config,
    write_json,
)
from iclab.seeding import make_generator
from iclab.tasks import Task, make_task
from iclab.theory import isotropic_reference

METRIC_COLUMNS = ("step", "train_loss", "eval_loss", "lr", "n", "d")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TrainingDiverged(RuntimeError):
    """The loss or a gradient became NaN/inf or exceeded train.diverge_loss."""


@dataclass
class LossWindow:
    """Running mean of the training loss between two metrics rows."""

    total: float = 0.0
    count: int = 0

    def add(self, value: float) -> None:
        self.total += value
        self.count += 1

    def take(self) -> float:
        mean = self.total / max(self.count, 1)
        self.total, self.count = 0.0, 0
        return mean


@dataclass
class TrainState:
    """Everything a checkpoint restores."""

    step: int = 0
    rows: list[dict] = field(default_factory=list)
    window: LossWindow = field(default_factory=LossWindow)


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


def _format(value: float | int | None) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else repr(float(value))


def metrics_csv(rows: list[dict]) -> str:
    """Rows as CSV text with a fixed column order and exact float formatting (byte-reproducible)."""
    lines = [",".join(METRIC_COLUMNS)]
    lines += [",".join(_format(row.get(col)) for col in METRIC_COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"


def config_differences(old: Config, new: Config) -> list[str]:
    """Dotted keys whose values differ between two configs."""
    a, b = flat_keys(old), flat_keys(new)
    return sorted(key for key in a if a[key] != b.get(key))


def prepare_run_dir(cfg: Config, out: Path) -> str:
    """Check ``out`` against ``cfg``: returns "new", "resume" or "done"; a different config is refused."""
    if not (out / CONFIG_FILE).exists():
        return "new"
    previous = read_config(out)
    differing = config_differences(previous, cfg)
    if differing:
        raise RunDirError(
            f"{out} holds a run with a different config (keys: {', '.join(differing)}); "
            "choose another --out or delete that folder"
        )
    if (out / SUMMARY_FILE).exists() and read_json(out / SUMMARY_FILE).get("status") == "finished":
        return "done"
    return "resume" if (out / CHECKPOINT_FILE).exists() else "new"


def _checkpoint(
    out: Path,
    cfg: Config,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    state: TrainState,
) -> None:
    torch_save_atomic(
        out / CHECKPOINT_FILE,
        {
            "step": state.step,
            "optimizer": optimizer.state_dict(),
            "model": model.state_dict(),
            "generator": generator.get_state(),
            "rows": state.rows,
            "window": (state.window.total, state.window.count),
        },
    )
    save_model(out, model, cfg, state.step)
    atomic_write_text(out / METRICS_FILE, metrics_csv(state.rows))


def _restore(
    out: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> TrainState:
    path = out / CHECKPOINT_FILE
    try:
        payload = torch.load(path, weights_only=False)
    except Exception as err:  # a truncated/corrupted file raises several types
        raise RunDirError(
            f"{path} is corrupted and cannot be resumed ({err}); delete the run dir to start over"
        ) from None
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    generator.set_state(payload["generator"])
    total, count = payload["window"]
    return TrainState(step=payload["step"], rows=payload["rows"], window=LossWindow(total, count))


def _grad_norm(model: torch.nn.Module) -> float:
    norms = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def train(cfg: Config, out: str | Path, device: str = "cpu", progress: bool = True, log: callable = print) -> dict:
    """Train ``cfg`` into the run dir ``out`` (resuming from its checkpoint; skipping a finished run).

    Returns the summary dict. Raises TrainingDiverged (after writing summary status "diverged") when the
    loss or gradients become non-finite or the loss exceeds train.diverge_loss.
    """
    out = Path(out)
    status = prepare_run_dir(cfg, out)
    if status == "done":
        log(f"already done: {out} holds a finished run with this config")
        return read_json(out / SUMMARY_FILE)
    out.mkdir(parents=True, exist_ok=True)
    write_config(out, cfg)

    dtype = DTYPES[cfg.train.dtype]
    task = make_task(cfg.task, cfg.seed)
    model = build_model(cfg.model, task, make_generator(cfg.seed, "init")).to(device=device, dtype=dtype)
    tc = cfg.train
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), weight_decay=tc.weight_decay
    )
    generator = make_generator(cfg.seed, "train")
    heldout = task.sample(cfg.eval.batch_size, make_generator(cfg.seed, "heldout"), dtype=dtype).to(device)
    learner = from_model(model)
    state = _restore(out, model, optimizer, generator) if status == "resume" else TrainState()
    if status == "resume":
        log(f"resuming {out} from step {state.step}")

    started = time.time()
    bar = tqdm(total=tc.steps, initial=state.step, disable=not progress, desc="train", mininterval=0.5)
    while state.step < tc.steps:
        step = state.step
        lr = learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        n, d_active = curriculum_sizes(cfg, step)
        batch = task.sample(tc.batch_size, generator, n=n, d_active=d_active, dtype=dtype).to(device)
        pred = model.predict(batch.xs, batch.ys, batch.xq, batch.descriptor)
        loss = ((pred - batch.yq) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        loss_value = loss.item()
        grad_norm = _grad_norm(model)
        if not (math.isfinite(loss_value) and math.isfinite(grad_norm)) or loss_value > tc.diverge_loss:
            bar.close()
            _write_summary(
                out,
                cfg,
                state,
                "diverged",
                started,
                message=(f"diverged at step {step + 1}: loss {loss_value:.4g}, gradient norm {grad_norm:.4g}"),
            )
            raise TrainingDiverged(
                f"training diverged at step {step + 1} (loss {loss_value:.4g}, gradient norm "
                f"{grad_norm:.4g}); the last good checkpoint in {out} is at step "
                f"{_last_checkpoint_step(out)}. Lower train.lr or set train.grad_clip."
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
            state.rows.append(
                {
                    "step": state.step,
                    "train_loss": state.window.take(),
                    "eval_loss": eval_loss,
                    "lr": lr,
                    "n": n,
                    "d": d_active,
                }
            )
        if state.step % tc.checkpoint_every == 0 or state.step == tc.steps:
            _checkpoint(out, cfg, model, optimizer, generator, state)
    bar.close()

    final = sample_in_chunks(task, cfg.eval.batch_size, make_generator(cfg.seed, "final"), dtype)
    final_loss, final_sem = query_loss(learner, final.to(device))
    if tc.steps == 0:
        _checkpoint(out, cfg, model, optimizer, generator, state)
    summary = _write_summary(out, cfg, state, "finished", started, final_eval_loss=final_loss, final_eval_sem=final_sem)
    if state.rows:
        plot_training(pd.DataFrame(state.rows), out / FIGURES_DIR / "loss.png", isotropic_reference(cfg.task))
    return summary


def _last_checkpoint_step(out: Path) -> int:
    sidecar = out / "model.json"
    return int(read_json(sidecar)["step"]) if sidecar.exists() else 0


def _write_summary(out: Path, cfg: Config, state: TrainState, status: str, started: float, **extra) -> dict:
    last_train = state.rows[-1]["train_loss"] if state.rows else None
    summary = {
        "status": status,
        "steps": state.step,
        "final_train_loss": last_train,
        "wall_seconds": round(time.time() - started, 3),
        "config": config_to_dict(cfg),
        **extra,
    }
    write_json(out / SUMMARY_FILE, summary)
    return summary

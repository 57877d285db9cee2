"""Experiment tracking (``train.loggers=tensorboard,wandb``): a training callback per tracker that logs each
metrics row as it is made: ``train/loss`` (metrics.csv's train_loss), ``eval/loss`` (eval_loss, on the rows that
have one) and ``train/lr`` (lr), at the row's step.

Each tracker writes inside the run dir, in a folder of its own that manifest.json does not cover (it is appended
to while training, not written atomically; ``iclab check`` names it and verifies nothing in it):

- ``tensorboard``: ``RUN/tensorboard/`` (``torch.utils.tensorboard.SummaryWriter``; extra ``iclab[tensorboard]``),
  flushed at every checkpoint; a resumed run purges the events after its checkpoint's step, so each step is shown
  once.
- ``wandb``: ``RUN/wandb/`` (``wandb.init(dir=RUN, project="iclab" or $WANDB_PROJECT, name=the run dir's name,
  config=the run's config)``; extra ``iclab[wandb]``), in offline mode unless ``WANDB_MODE`` is set (``wandb sync
  RUN/wandb/offline-run-*`` uploads it later); each process that trains the run (a resume) is a W&B run of its own.

The packages are imported only when a logger is asked for, and :func:`check_loggers` refuses a missing one with
one line naming the extra before anything is trained.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from iclab.config import Config, config_to_dict
from iclab.errors import UserError

if TYPE_CHECKING:
    from iclab.train import TrainingRun

LOGGER_DIRS = {"tensorboard": "tensorboard", "wandb": "wandb"}  # logger: its folder in the run dir
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # logger: the module it needs (and its extra)


def check_loggers(cfg: Config) -> None:
    """UserError (one line, naming the extra) when a logger of ``cfg.train.loggers`` cannot be imported."""
    for name in cfg.train.loggers:
        try:
            importlib.import_module(_PACKAGES[name])
        except ImportError:
            raise UserError(
                f"train.loggers={name} needs the {_PACKAGES[name]} package: pip install 'iclab[{name}]'"
            ) from None


def row_values(row: dict) -> dict[str, float]:
    """What a logger records of a metrics row: ``{tag: value}``."""
    values = {"train/loss": row["train_loss"], "train/lr": row["lr"]}
    if row.get("eval_loss") is not None:
        values["eval/loss"] = row["eval_loss"]
    return values


class _RowLogger:
    """Logs every metrics row not logged yet; opened at its first step (rows before that step were logged by
    the process that made them, before a resume)."""

    def __init__(self) -> None:
        self.opened = False
        self.logged = 0

    def on_step(self, run: TrainingRun) -> None:
        rows = run.state.rows
        if not self.opened:
            self.open(run)
            self.opened = True
            self.logged = sum(1 for row in rows if row["step"] < run.state.step)
        for row in rows[self.logged :]:
            self.log(row["step"], row_values(row))
        self.logged = len(rows)
        if run.checkpoint_step == run.state.step:
            self.flush()

    def open(self, run: TrainingRun) -> None: ...

    def log(self, step: int, values: dict[str, float]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class TensorBoardLogger(_RowLogger):
    """Scalars in ``RUN/tensorboard/`` (see the module's docstring)."""

    writer: Any = None

    def open(self, run: TrainingRun) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run hides the events a killed process wrote after its checkpoint
        self.writer = SummaryWriter(str(run.out / LOGGER_DIRS["tensorboard"]), purge_step=run.state.step)

    def log(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbLogger(_RowLogger):
    """A W&B run in ``RUN/wandb/``, offline unless ``WANDB_MODE`` says otherwise (see the module's docstring)."""

    run: Any = None

    def open(self, run: TrainingRun) -> None:
        import wandb

        settings = wandb.Settings(silent=True, console="off")
        mode = {} if os.environ.get("WANDB_MODE") else {"mode": "offline"}
        project = os.environ.get("WANDB_PROJECT", "iclab")
        self.run = wandb.init(dir=str(run.out), project=project, name=run.out.name, config=config_to_dict(run.cfg),
                              reinit="create_new", settings=settings, **mode)  # fmt: skip

    def log(self, step: int, values: dict[str, float]) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


LOGGERS = {"tensorboard": TensorBoardLogger, "wandb": WandbLogger}


def logger_callbacks(cfg: Config) -> list[_RowLogger]:
    """A fresh callback per logger of ``cfg.train.loggers`` (each run needs its own)."""
    return [LOGGERS[name]() for name in cfg.train.loggers]


def close_callbacks(callbacks: list) -> None:
    """Close every callback that has ``close()`` (the loggers), whatever stopped the training."""
    for callback in callbacks:
        close = getattr(callback, "close", None)
        if close is not None:
            close()

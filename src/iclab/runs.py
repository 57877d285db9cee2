"""Open a finished run dir: its model rebuilt through the model registry, bit for bit in the saved dtype."""

from __future__ import annotations

from pathlib import Path

import torch

from iclab.config import Config
from iclab.models import InContextModel, build_model
from iclab.rundir import MODEL_FILE, SIDECAR_FILE, RunDirError, read_sidecar, read_weights, tensor_digest
from iclab.seeding import make_generator
from iclab.tasks import make_task


def load_model(run_dir: str | Path, device: str = "cpu") -> tuple[InContextModel, Config, int]:
    """Rebuild the model of a run dir from its verified sidecar and weights → (model, config, step).

    The model is built in the dtype its weights were saved in before they are loaded, so a float64 run
    reloads bit-identical. Raises RunDirError (a missing, damaged or mismatched file, named)."""
    run_dir = Path(run_dir)
    tensors, step = read_weights(run_dir)
    cfg, sidecar_step, digest = read_sidecar(run_dir)
    if sidecar_step != step or digest != tensor_digest(tensors):
        raise RunDirError(
            f"{run_dir / SIDECAR_FILE} (step {sidecar_step}) does not describe {MODEL_FILE} (step {step}); "
            "the run was stopped while saving: rerun iclab train with the same --out to finish it"
        )
    model = build_model(cfg.model, make_task(cfg.task, cfg.seed), make_generator(cfg.seed, "init"))
    dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
    model.to(dtype=dtype)
    model.load_state_dict(tensors)
    return model.to(device=device), cfg, step

"""The run directory: atomic file writes, the model file with its JSON sidecar, loading a run back.

Layout: ``config.yaml`` (resolved config), ``metrics.csv``, ``summary.json``, ``model.safetensors`` +
``model.json`` (config and step), ``checkpoint.pt`` (optimizer and generator states), ``figures/``.
Every file is written to a temporary name in the same folder, fsynced, then renamed over the target.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save

from iclab.config import Config, config_to_dict, config_to_yaml, parse_config

MODEL_FILE = "model.safetensors"
SIDECAR_FILE = "model.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
FIGURES_DIR = "figures"


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (wrong config, missing or corrupted files)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunDirError(f"{path} is missing or not valid JSON ({err})") from None


def write_config(run_dir: Path, cfg: Config) -> None:
    atomic_write_text(Path(run_dir) / CONFIG_FILE, config_to_yaml(cfg))


def read_config(run_dir: Path) -> Config:
    """The resolved config a run dir was made with."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not an iclab run dir: {CONFIG_FILE} not found")
    try:
        return parse_config(yaml.safe_load(path.read_text()) or {})
    except yaml.YAMLError as err:
        raise RunDirError(f"{path} is not valid YAML ({str(err).splitlines()[0]})") from None


def save_model(run_dir: Path, model: torch.nn.Module, cfg: Config, step: int) -> None:
    """``model.safetensors`` and its sidecar ``model.json`` ({"config", "step"})."""
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    atomic_write_bytes(Path(run_dir) / MODEL_FILE, save(tensors))
    write_json(Path(run_dir) / SIDECAR_FILE, {"config": config_to_dict(cfg), "step": step})


def load_model(run_dir: Path, device: str = "cpu") -> tuple[torch.nn.Module, Config, int]:
    """Rebuild the model of a run dir from its sidecar and weights → (model, config, step)."""
    from iclab.models import build_model
    from iclab.seeding import make_generator
    from iclab.tasks import make_task

    run_dir = Path(run_dir)
    weights = run_dir / MODEL_FILE
    if not weights.is_file():
        raise RunDirError(f"{run_dir} holds no trained model: {MODEL_FILE} not found")
    sidecar = read_json(run_dir / SIDECAR_FILE)
    cfg = parse_config(sidecar["config"])
    model = build_model(cfg.model, make_task(cfg.task, cfg.seed), make_generator(cfg.seed, "init"))
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises several types for a damaged file
        raise RunDirError(f"{weights} cannot be read ({err})") from None
    model.load_state_dict(state)
    model.to(device=device, dtype=next(iter(state.values())).dtype)
    return model, cfg, int(sidecar["step"])


def torch_save_atomic(path: Path, payload: Any) -> None:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(path, buffer.getvalue())

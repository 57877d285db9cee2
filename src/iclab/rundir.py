"""The run directory: atomic, verifiable files; the model with its JSON sidecar; checkpoints.

Layout: ``config.yaml`` (resolved config), ``metrics.csv``, ``summary.json``, ``model.safetensors`` +
``model.json`` (config and step), ``checkpoint.pt`` (model, optimizer, generator and loop state),
``figures/``. Every file is written to a temporary name in the same folder, fsynced, renamed over the
target, and the folder is fsynced: a kill at any moment leaves the old file or the whole new one.
``model.safetensors`` and ``checkpoint.pt`` carry a SHA-256 of their contents, so a truncated or damaged
file is refused with an error naming it instead of being used or silently replaced. Nothing read here runs
code: configs are safe YAML, checkpoints are unpickled with ``weights_only``. Models are rebuilt from a run
dir by :func:`iclab.runs.load_model`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from iclab.config import Config, ConfigError, config_to_dict, config_to_yaml, family_config, parse_config, read_yaml
from iclab.errors import UserError
from iclab.registry import MODELS, TASKS

MODEL_FILE = "model.safetensors"
SIDECAR_FILE = "model.json"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
CHECKPOINT_FILE = "checkpoint.pt"
FIGURES_DIR = "figures"
TEMP_MARK = ".tmp-"
CHECKPOINT_MAGIC = b"ICLABCK1"


class RunDirError(UserError):
    """A run directory that cannot be used as asked (wrong config, missing or corrupted files)."""


# --------------------------------------------------------------------------- atomic files


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunDirError(f"{path} is missing or not valid JSON ({err})") from None


def stale_temp_files(run_dir: Path) -> list[Path]:
    """Temporary files a killed writer left behind in ``run_dir`` (and figures/)."""
    folders = [Path(run_dir), Path(run_dir) / FIGURES_DIR]
    return sorted(p for folder in folders if folder.is_dir() for p in folder.iterdir() if TEMP_MARK in p.name)


def remove_stale_temp_files(run_dir: Path) -> None:
    for path in stale_temp_files(run_dir):
        path.unlink()


def is_empty_run_dir(run_dir: Path) -> bool:
    """True for a missing folder or one holding nothing but stale temporary files."""
    run_dir = Path(run_dir)
    return not run_dir.exists() or all(TEMP_MARK in p.name for p in run_dir.iterdir())


def clear_run_dir(run_dir: Path) -> None:
    """Delete an iclab run dir (``--force``); refuse a folder that is not one."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not (run_dir / CONFIG_FILE).exists() and not is_empty_run_dir(run_dir):
        raise RunDirError(f"--force: {run_dir} is not an iclab run dir (no {CONFIG_FILE}); not deleting it")
    shutil.rmtree(run_dir)


# --------------------------------------------------------------------------- config and metrics

METRIC_COLUMNS = ("step", "train_loss", "eval_loss", "lr", "n", "d")


def _format(value: float | int | None) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else repr(float(value))


def metrics_csv(rows: list[dict]) -> str:
    """Rows as CSV text with a fixed column order and exact float formatting (byte-reproducible)."""
    lines = [",".join(METRIC_COLUMNS)]
    lines += [",".join(_format(row.get(col)) for col in METRIC_COLUMNS) for row in rows]
    return "\n".join(lines) + "\n"


def write_config(run_dir: Path, cfg: Config) -> None:
    atomic_write_text(Path(run_dir) / CONFIG_FILE, config_to_yaml(cfg))


# Keys that iclab 0.1 wrote into every run's task/model sections, whatever the family (a flat union); a run
# dir written then holds them at their defaults under families that do not have them.
FLAT_UNION_KEYS = {
    "task": ("x_cov_diag", "condition_number", "rotation", "w_cov", "w_cov_diag", "x_mean_std", "n_means",
             "descriptor", "response", "random_sign", "kernel", "kernel_scale", "x_dist"),
    "model": ("layers", "heads", "param", "init", "init_scale", "activation", "mlp_hidden", "feature_dim"),
}  # fmt: skip


def parse_stored_config(data: object) -> Config:
    """The config of a run dir's file: a config of this version, or one of iclab 0.1 (whose task and model
    sections list every family's keys; those the family does not have are dropped)."""
    if isinstance(data, dict):
        data = {**data}
        for section, keys in FLAT_UNION_KEYS.items():
            values = data.get(section)
            if (
                isinstance(values, dict)
                and isinstance(values.get("name"), str)
                and values["name"] in (TASKS if section == "task" else MODELS)
            ):
                own = family_config(section, values["name"]).model_fields
                data[section] = {key: value for key, value in values.items() if key in own or key not in keys}
    return parse_config(data or {})


def read_config(run_dir: Path) -> Config:
    """The resolved config a run dir was made with."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} is not an iclab run dir: {CONFIG_FILE} not found")
    try:
        return parse_stored_config(read_yaml(path.read_text()))
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as err:
        raise RunDirError(f"{path} is corrupted ({str(err).splitlines()[0]})") from None


# --------------------------------------------------------------------------- model + sidecar


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_model(run_dir: Path, model: torch.nn.Module, cfg: Config, step: int) -> None:
    """``model.safetensors`` (step and digest in its metadata) and its sidecar ``model.json``."""
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    digest = tensor_digest(tensors)
    atomic_write_bytes(Path(run_dir) / MODEL_FILE, save(tensors, metadata={"step": str(step), "sha256": digest}))
    write_json(Path(run_dir) / SIDECAR_FILE, {"config": config_to_dict(cfg), "step": step, "sha256": digest})


def read_sidecar(run_dir: Path) -> tuple[Config, int, str]:
    """(config, step, weights digest) from ``model.json``; a damaged sidecar raises RunDirError naming it."""
    path = Path(run_dir) / SIDECAR_FILE
    sidecar = read_json(path)
    try:
        cfg = parse_stored_config(sidecar["config"])
        step, digest = int(sidecar["step"]), str(sidecar["sha256"])
    except (KeyError, TypeError, ValueError) as err:
        raise RunDirError(f"{path} is corrupted ({err})") from None
    return cfg, step, digest


def read_weights(run_dir: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The verified tensors of ``model.safetensors`` (in the dtype they were saved) and the step stored with
    them; the metadata is read through safetensors' own API."""
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} holds no trained model: {MODEL_FILE} not found")
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        stored, step = metadata["sha256"], int(metadata["step"])
    except (SafetensorError, OSError, ValueError, KeyError) as err:
        raise RunDirError(f"{path} is corrupted and cannot be read ({err})") from None
    if tensor_digest(tensors) != stored:
        raise RunDirError(f"{path} is corrupted: its contents do not match the checksum written with them")
    return tensors, step


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, payload: dict) -> None:
    """``payload`` (torch-serialisable) behind a magic number and its SHA-256, written atomically."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    atomic_write_bytes(path, CHECKPOINT_MAGIC + hashlib.sha256(body).digest() + body)


def load_checkpoint(path: Path) -> dict:
    """The verified payload of a checkpoint; a truncated or damaged file raises RunDirError naming it. Only
    tensors and plain values are unpickled (``weights_only``): a payload that would run code is refused."""
    data = Path(path).read_bytes()
    head = len(CHECKPOINT_MAGIC)
    body = data[head + 32 :]
    if data[:head] != CHECKPOINT_MAGIC or hashlib.sha256(body).digest() != data[head : head + 32]:
        raise RunDirError(
            f"{path} is corrupted (truncated or altered: its checksum does not match); refusing to resume. "
            "Use --force to start the run over"
        )
    try:
        return torch.load(io.BytesIO(body), weights_only=True)
    except pickle.UnpicklingError:
        raise RunDirError(
            f"{path} holds objects other than tensors and plain values; refusing to load it (nothing was run)"
        ) from None

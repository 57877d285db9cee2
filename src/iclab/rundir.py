"""The run directory: atomic files, all covered by the digests of manifest.json; the lock; the model with its
JSON sidecar; checkpoints.

Layout: ``config.yaml`` (resolved config), ``metrics.csv``, ``summary.json``, ``model.safetensors`` +
``model.json`` (config and step), ``checkpoint.pt`` (model, optimizer, generator and loop state),
``figures/loss.png``, ``manifest.json`` (the SHA-256 of every other file) and ``.iclab.lock``.

Every file is written to a temporary name in the same folder, fsynced, renamed over the target, and the folder
is fsynced: a kill at any moment leaves the old file or the whole new one. Files are written in groups
(:meth:`RunFiles.commit`): manifest.json first, recording the digest of each new file and of the version it
replaces, then the files, then manifest.json again without the replaced versions. So after a kill each file
of an unfinished group is its new or its old version, every other file the version last written, and
anything else (truncated, altered, deleted) is damage, named, never used or silently replaced. Readers verify
what they read against manifest.json (a run dir of an iclab before digests has none; its model and checkpoint
carry their own SHA-256). A process writing a run dir holds its lock (:func:`locked_run_dir`, ``filelock``).
Nothing read here runs code: configs are safe YAML, checkpoints are unpickled with ``weights_only``. Models are
rebuilt from a run dir by :func:`iclab.runs.load_model`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from filelock import FileLock, Timeout
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
LOSS_FIGURE = f"{FIGURES_DIR}/loss.png"
MANIFEST_FILE = "manifest.json"
WEIGHTS_METADATA = "iclab"  # model.safetensors' one metadata key: {"sha256": …, "step": …} as JSON
LOCK_FILE = ".iclab.lock"
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


def json_bytes(payload: Any) -> bytes:
    """``payload`` as indented, key-sorted JSON (NaN refused), the way every JSON file of iclab is written."""
    return (json.dumps(payload, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()


def write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, json_bytes(payload))


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


def check_writable_folder(path: Path, what: str) -> None:
    """Create the folder ``path`` if need be and make sure a file can be written in it, before any work whose
    results go there; RunDirError (``what``, the path, the reason) otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{what} {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise RunDirError(f"{what} {path}: cannot write there ({err.strerror})") from None


# --------------------------------------------------------------------------- digests: manifest.json


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest_digest(files: dict, replaced: dict) -> str:
    return hashlib.sha256(json.dumps([files, replaced], sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Manifest:
    """What manifest.json records: the SHA-256 of every file of the run dir as last written (``files``) and, while
    a commit is in progress, the digest of the version each of its files replaces (``replaced``; None: none)."""

    files: dict[str, str]
    replaced: dict[str, str | None]


def _run_file_name(name: object) -> bool:
    """A name manifest.json may hold: a relative path inside the run dir."""
    return isinstance(name, str) and bool(name) and not name.startswith("/") and ".." not in name.split("/")


def read_manifest(run_dir: Path) -> Manifest | None:
    """The verified manifest of ``run_dir`` (None if it has none); a damaged one raises RunDirError."""
    path = Path(run_dir) / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_bytes().decode())
        files, replaced, digest = payload["files"], payload["replaced"], payload["sha256"]
        valid = (
            all(_run_file_name(k) and isinstance(v, str) for k, v in files.items())
            and all(_run_file_name(k) and isinstance(v, str | None) for k, v in replaced.items())
            and digest == _manifest_digest(files, replaced)
        )
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
        valid = False
    if not valid:
        raise RunDirError(
            f"{path} is damaged (unreadable, or altered: its own checksum does not match), so the run's files "
            "cannot be verified; use --force to start the run over"
        )
    return Manifest(files, replaced)


class FileState(NamedTuple):
    """A file manifest.json records: ``state`` is current (the version last written), interrupted (the version
    before: a save was stopped), missing or damaged; ``digest`` is that of the file on disk (None: absent)."""

    name: str
    state: str
    digest: str | None


STATE_TEXT = {
    "interrupted": "an earlier version: a save was interrupted (rerun iclab train with the same config to finish it)",
    "missing": f"missing although {MANIFEST_FILE} records it (deleted?)",
    "damaged": f"damaged: its contents do not match the SHA-256 in {MANIFEST_FILE} (truncated or altered)",
}


def file_states(run_dir: Path, manifest: Manifest) -> list[FileState]:
    """The state of every file ``manifest`` records (see :class:`FileState`)."""
    states = []
    for name in sorted(manifest.files.keys() | manifest.replaced.keys()):
        path = Path(run_dir) / name
        digest = _file_sha256(path) if path.is_file() else None
        if digest is not None and digest == manifest.files.get(name):
            state = "current"
        elif name in manifest.replaced and digest == manifest.replaced[name]:
            state = "interrupted"
        else:
            state = "missing" if digest is None else "damaged"
        states.append(FileState(name, state, digest))
    return states


def settle(run_dir: Path, states: list[FileState]) -> dict[str, str]:
    """{name: digest} of the files on disk, each the version last written or (a save interrupted) the one before
    it; a missing or damaged file raises RunDirError naming it."""
    for item in states:
        if item.state in ("missing", "damaged"):
            raise RunDirError(
                f"{Path(run_dir) / item.name} is {STATE_TEXT[item.state]}; refusing to use the run "
                "(use --force to start it over)"
            )
    return {item.name: item.digest for item in states if item.digest is not None}


class RunFiles:
    """The writer of a run dir, knowing the digest of each file on disk (``files``)."""

    def __init__(self, run_dir: Path, files: dict[str, str]) -> None:
        self.run_dir, self.files = Path(run_dir), dict(files)

    def commit(self, blobs: dict[str, bytes]) -> None:
        """Write ``blobs`` ({name: bytes}, in order): manifest.json first (the new digests and the replaced
        ones), then each file atomically, then manifest.json closing the commit."""
        files = {**self.files, **{name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()}}
        self._write_manifest(files, {name: self.files.get(name) for name in blobs})
        for name, data in blobs.items():
            atomic_write_bytes(self.run_dir / name, data)
        self._write_manifest(files, {})
        self.files = files

    def _write_manifest(self, files: dict[str, str], replaced: dict[str, str | None]) -> None:
        payload = {"files": files, "replaced": replaced, "sha256": _manifest_digest(files, replaced)}
        atomic_write_bytes(self.run_dir / MANIFEST_FILE, json_bytes(payload))


def read_run_file(run_dir: Path, name: str) -> bytes:
    """The bytes of the file ``name`` of ``run_dir``, verified against manifest.json when there is one (either
    version an interrupted save may have left); RunDirError names a missing, unreadable or damaged file."""
    path = Path(run_dir) / name
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RunDirError(f"{path} cannot be read ({err.strerror})") from None
    manifest = read_manifest(run_dir)
    if manifest is not None:
        versions = {manifest.files.get(name), manifest.replaced.get(name)} - {None}
        if hashlib.sha256(data).hexdigest() not in versions:
            raise RunDirError(f"{path} is {STATE_TEXT['damaged'] if versions else 'not recorded in ' + MANIFEST_FILE}")
    return data


# --------------------------------------------------------------------------- the lock


def _record_holder(fd: int) -> None:
    """Write who holds the lock into the lock file (read by a process that finds it taken)."""
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200],
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)


def _holder(run_dir: Path, tries: int = 40) -> str:
    """Who holds the lock of ``run_dir``, as recorded by :func:`_record_holder`. The holder writes the record just
    after taking the lock, so an empty or half-written record is read again for up to about a second."""
    for attempt in range(tries):
        try:
            holder = json.loads((run_dir / LOCK_FILE).read_text())
            return f"process {holder['pid']} on {holder['host']} (since {holder['since']}: {holder['command']})"
        except (OSError, ValueError, KeyError, TypeError):
            if attempt + 1 < tries:
                time.sleep(0.025)
    return "another process"


@contextmanager
def locked_run_dir(run_dir: Path, wait: bool = False, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold the lock of ``run_dir`` (created if need be) while writing it. Taken by another process: with
    ``wait`` wait for it (saying so), else RunDirError naming the holder."""
    run_dir = Path(run_dir)
    lock = FileLock(run_dir / LOCK_FILE, timeout=0, thread_local=False, on_acquired=_record_holder)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock.acquire()
        except Timeout:
            holder = _holder(run_dir)
            if not wait:
                raise RunDirError(
                    f"{run_dir} is being written by {holder}; wait for it to finish (iclab train --wait waits)"
                ) from None
            log(f"waiting for {holder} to finish writing {run_dir}")
            lock.acquire(timeout=-1)
    except OSError as err:
        raise RunDirError(f"cannot write the run dir {run_dir} ({err.strerror})") from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def run_outputs(run_dir: Path, wait: bool = False) -> Iterator[Path]:
    """A staging folder for files an analysis adds to a run dir (``eval.json``, ``figures/error_curve.png``,
    ``probe/…``; write them under the names they take in the run dir). On leaving without an error they are
    committed into ``run_dir`` as one group of manifest.json (:meth:`RunFiles.commit`), under the run dir's
    lock, so that ``check`` and readers verify them like the training files. The run dir must be intact (a
    damaged file raises RunDirError); one of an iclab before digests gets plain atomic writes."""
    run_dir = Path(run_dir)
    with tempfile.TemporaryDirectory(prefix="iclab-outputs-") as folder:
        staging = Path(folder)
        yield staging
        blobs = {path.relative_to(staging).as_posix(): path.read_bytes()
                 for path in sorted(staging.rglob("*")) if path.is_file()}  # fmt: skip
        with locked_run_dir(run_dir, wait=wait):
            manifest = read_manifest(run_dir)
            if manifest is None:
                for name, data in blobs.items():
                    atomic_write_bytes(run_dir / name, data)
            else:
                RunFiles(run_dir, settle(run_dir, file_states(run_dir, manifest))).commit(blobs)


def is_run_dir(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds an iclab run (its config or its manifest)."""
    return (Path(run_dir) / CONFIG_FILE).exists() or (Path(run_dir) / MANIFEST_FILE).exists()


def is_empty_run_dir(run_dir: Path) -> bool:
    """True for a missing folder or one holding nothing but stale temporary files and the lock."""
    run_dir = Path(run_dir)
    return not run_dir.exists() or all(TEMP_MARK in p.name or p.name == LOCK_FILE for p in run_dir.iterdir())


def clear_run_dir(run_dir: Path, wait: bool = False) -> None:
    """Delete everything in an iclab run dir, holding its lock (``--force``); refuse anything that is not one."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunDirError(f"--force: {run_dir} is a file, not an iclab run dir; not deleting it")
    if not is_run_dir(run_dir) and not is_empty_run_dir(run_dir):
        raise RunDirError(f"--force: {run_dir} is not an iclab run dir (no {CONFIG_FILE}); not deleting it")
    with locked_run_dir(run_dir, wait):
        for entry in run_dir.iterdir():
            if entry.name == LOCK_FILE:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()


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
        return parse_stored_config(read_yaml(read_run_file(run_dir, CONFIG_FILE).decode()))
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as err:
        raise RunDirError(f"{path} is corrupted ({str(err).splitlines()[0]})") from None


def config_bytes(cfg: Config) -> bytes:
    """config.yaml of ``cfg``."""
    return config_to_yaml(cfg).encode()


def read_summary(run_dir: Path) -> dict:
    """The verified summary.json of ``run_dir``."""
    path = Path(run_dir) / SUMMARY_FILE
    data = read_run_file(run_dir, SUMMARY_FILE)
    try:
        summary = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunDirError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(summary, dict):
        raise RunDirError(f"{path} holds no summary (a JSON object), got {type(summary).__name__}")
    return summary


# --------------------------------------------------------------------------- model + sidecar


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_files(model: torch.nn.Module, cfg: Config, step: int) -> dict[str, bytes]:
    """``model.safetensors`` (step and digest in its metadata) and its sidecar ``model.json``, as bytes. The
    metadata is one key (``iclab``: JSON of step and digest): safetensors writes several keys in an order that
    changes from process to process, and the same run must give the same bytes."""
    tensors = {name: value.detach().cpu().contiguous() for name, value in model.state_dict().items()}
    digest = tensor_digest(tensors)
    return {
        MODEL_FILE: save(tensors, metadata={WEIGHTS_METADATA: json.dumps({"sha256": digest, "step": step})}),
        SIDECAR_FILE: json_bytes({"config": config_to_dict(cfg), "step": step, "sha256": digest}),
    }


def read_sidecar(run_dir: Path) -> tuple[Config, int, str]:
    """(config, step, weights digest) from ``model.json``; a damaged sidecar raises RunDirError naming it."""
    path = Path(run_dir) / SIDECAR_FILE
    data = read_run_file(run_dir, SIDECAR_FILE)
    try:
        sidecar = json.loads(data)
        cfg = parse_stored_config(sidecar["config"])
        step, digest = int(sidecar["step"]), str(sidecar["sha256"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise RunDirError(f"{path} is corrupted ({str(err).splitlines()[0]})") from None
    return cfg, step, digest


def read_weights(run_dir: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The verified tensors of ``model.safetensors`` (in the dtype they were saved) and the step stored with
    them; the metadata is read through safetensors' own API."""
    path = Path(run_dir) / MODEL_FILE
    if not path.is_file():
        raise RunDirError(f"{run_dir} holds no trained model: {MODEL_FILE} not found")
    read_run_file(run_dir, MODEL_FILE)
    try:
        with safe_open(path, framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        if WEIGHTS_METADATA in metadata:
            metadata = json.loads(metadata[WEIGHTS_METADATA])
        stored, step = str(metadata["sha256"]), int(metadata["step"])  # (iclab 0.1 wrote the two keys as they are)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
        raise RunDirError(f"{path} is corrupted and cannot be read ({err})") from None
    if tensor_digest(tensors) != stored:
        raise RunDirError(f"{path} is corrupted: its contents do not match the checksum written with them")
    return tensors, step


# --------------------------------------------------------------------------- checkpoints


def checkpoint_bytes(payload: dict) -> bytes:
    """``payload`` (torch-serialisable) behind a magic number and its SHA-256."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    body = buffer.getvalue()
    return CHECKPOINT_MAGIC + hashlib.sha256(body).digest() + body


def load_checkpoint(path: Path) -> Any:
    """The verified payload of a checkpoint (checked against manifest.json and its own checksum); a truncated
    or damaged file raises RunDirError naming it. Only tensors and plain values are unpickled
    (``weights_only``): a payload that would run code is refused. Tensors are loaded on the CPU (a run trained
    on a GPU is checked, and resumed, anywhere)."""
    path = Path(path)
    data = read_run_file(path.parent, path.name)
    head = len(CHECKPOINT_MAGIC)
    body = data[head + 32 :]
    if data[:head] != CHECKPOINT_MAGIC or hashlib.sha256(body).digest() != data[head : head + 32]:
        raise RunDirError(
            f"{path} is corrupted (truncated or altered: its checksum does not match); refusing to resume. "
            "Use --force to start the run over"
        )
    try:
        return torch.load(io.BytesIO(body), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RunDirError(
            f"{path} holds objects other than tensors and plain values; refusing to load it (nothing was run)"
        ) from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise RunDirError(f"{path} is not a torch checkpoint ({str(err).splitlines()[0]})") from None

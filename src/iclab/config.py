"""Typed run configuration: dataclasses, YAML loading, dotted ``key=value`` overrides, validation.

Every user-facing value passes through :func:`parse_config`, which raises :class:`ConfigError` with one
line naming the key, what is allowed and what was given. The CLI turns that into exit code 2.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from iclab.errors import UserError


class ConfigError(UserError):
    """A bad configuration value; the message names the key, the allowed values and what was given."""


def _spec(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    choices: tuple[str, ...] | None = None,
    doc: str = "",
) -> Any:
    """A dataclass field with its range or choices recorded in metadata (checked by :func:`validate`)."""
    meta = {"ge": ge, "gt": gt, "le": le, "choices": choices, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TaskConfig:
    """What prompts look like (see :mod:`iclab.tasks.linear` and :mod:`iclab.tasks.gp`)."""

    name: str = _spec("linear", choices=("linear", "gp"), doc="task family")
    d: int = _spec(5, ge=1, doc="input dimension")
    n: int = _spec(20, ge=1, doc="context length (number of labelled examples)")
    n_queries: int = _spec(1, ge=1, doc="query points per prompt")
    noise_std: float = _spec(0.0, ge=0.0, doc="label noise std (context and query labels)")
    x_cov_diag: tuple[float, ...] | None = _spec(None, gt=0.0, doc="diagonal of the x covariance")
    condition_number: float | None = _spec(None, ge=1.0, doc="x covariance spectrum 1 .. 1/kappa")
    rotation: str = _spec("none", choices=("none", "fixed", "per_prompt"), doc="random eigenbasis of x cov")
    w_cov: str = _spec("identity", choices=("identity", "diag", "inverse_x"), doc="covariance of w")
    w_cov_diag: tuple[float, ...] | None = _spec(None, gt=0.0, doc="diagonal of the w covariance")
    x_mean_std: float = _spec(0.0, ge=0.0, doc="std tau of the per-prompt mean mu ~ N(0, tau^2 I)")
    n_means: int = _spec(0, ge=0, doc="K > 0: mu drawn uniformly from K fixed means")
    descriptor: str = _spec("none", choices=("none", "mean", "onehot"), doc="side information for the model")
    response: str = _spec(
        "identity", choices=("identity", "relu", "tanh", "cubic", "square"), doc="linear task: y = f(wᵀx) + noise"
    )
    random_sign: bool = _spec(False, doc="linear task: y = ±f(wᵀx), the sign drawn per prompt")
    kernel: str = _spec("linear", choices=("linear", "relu", "exp"), doc="gp task: covariance kernel h(xᵀx'/s)")
    kernel_scale: float = _spec(1.0, gt=0.0, doc="gp task: the kernel's scale s")
    x_dist: str = _spec("gaussian", choices=("gaussian", "sphere"), doc="gp task: x ~ N(0, I) or uniform on S^{d-1}")


@dataclass
class ModelConfig:
    """The model trained on the prompts (see :mod:`iclab.models`)."""

    name: str = _spec("lsa", choices=("lsa", "kernel_attention", "mlp_lsa"), doc="model family")
    layers: int = _spec(1, ge=1, doc="number of attention layers")
    heads: int = _spec(1, ge=1, doc="attention heads per layer")
    param: str = _spec(
        "full", choices=("full", "sparse", "block"), doc="free matrices, the theory's sparse form, or sparse + GD++"
    )
    init: str = _spec("gaussian", choices=("gaussian", "zero_block", "balanced"), doc="initialisation")
    init_scale: float = _spec(0.1, ge=0.0, doc="scale of the initial weights")
    activation: str = _spec(
        "linear", choices=("linear", "relu", "exp", "softmax"), doc="kernel_attention: h applied to the scores"
    )
    mlp_hidden: int = _spec(64, ge=1, doc="mlp_lsa: hidden width of the feature MLP")
    feature_dim: int = _spec(16, ge=1, doc="mlp_lsa: dimension of the learned features")


@dataclass
class CurriculumConfig:
    """Garg et al. (2022) curriculum: start small, grow d and n every ``every`` steps."""

    enabled: bool = _spec(False, doc="use the curriculum")
    d_start: int = _spec(5, ge=1, doc="active dimensions at step 0")
    d_step: int = _spec(1, ge=0, doc="dimensions added per stage")
    n_start: int = _spec(11, ge=1, doc="context length at step 0")
    n_step: int = _spec(2, ge=0, doc="examples added per stage")
    every: int = _spec(2000, ge=1, doc="steps per stage")


@dataclass
class TrainConfig:
    """Optimisation (Adam, fresh prompts every step)."""

    steps: int = _spec(4000, ge=0, doc="optimiser steps")
    batch_size: int = _spec(1024, ge=1, doc="prompts per step")
    lr: float = _spec(1e-2, gt=0.0, doc="Adam learning rate")
    lr_schedule: str = _spec("cosine", choices=("constant", "cosine"), doc="learning-rate schedule")
    warmup_steps: int = _spec(0, ge=0, doc="linear warm-up steps")
    beta1: float = _spec(0.9, ge=0.0, le=1.0, doc="Adam beta1")
    beta2: float = _spec(0.999, ge=0.0, le=1.0, doc="Adam beta2")
    weight_decay: float = _spec(0.0, ge=0.0, doc="AdamW weight decay")
    grad_clip: float | None = _spec(None, gt=0.0, doc="max gradient norm (none: no clipping)")
    dtype: str = _spec("float32", choices=("float32", "float64"), doc="training precision")
    checkpoint_every: int = _spec(1000, ge=1, doc="steps between checkpoints")
    log_every: int = _spec(50, ge=1, doc="steps between metrics rows")
    diverge_loss: float = _spec(1e8, gt=0.0, doc="a training loss above this stops the run")
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)


@dataclass
class EvalConfig:
    """Held-out evaluation."""

    batch_size: int = _spec(10000, ge=1, doc="prompts in the held-out and the final evaluation sets")
    every: int = _spec(500, ge=1, doc="steps between held-out evaluations")


@dataclass
class Config:
    """A whole run: seed, task, model, training and evaluation."""

    seed: int = _spec(0, ge=0, doc="seed of every random draw")
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    if tp is bool:
        return "a boolean (true/false)"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    return "a comma-separated list of numbers"


def _strip_optional(tp: Any) -> tuple[Any, bool]:
    """Return (inner type, whether None is allowed) for ``X | None``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _parse_value(key: str, raw: Any, tp: Any) -> Any:
    """Convert ``raw`` (a YAML value or a command-line string) to ``tp``; raise ConfigError otherwise."""
    inner, optional = _strip_optional(tp)
    if optional and (raw is None or (isinstance(raw, str) and raw.strip().lower() in ("none", "null", "~"))):
        return None
    bad = ConfigError(f"{key} must be {_type_name(inner)}, got {raw!r}")
    if inner is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
            return raw.strip().lower() in ("true", "1", "yes")
        raise bad
    if inner is int:
        if isinstance(raw, bool):
            raise bad
        if isinstance(raw, int):
            return raw
        if isinstance(raw, float) and raw.is_integer():
            return int(raw)
        if isinstance(raw, str):
            try:
                return int(raw.strip())
            except ValueError:
                raise bad from None
        raise bad
    if inner is float:
        if isinstance(raw, bool):
            raise bad
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise bad from None
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {raw!r}")
        return value
    if inner is str:
        if not isinstance(raw, str):
            raise bad
        return raw.strip()
    # tuple[float, ...]
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, (list, tuple)) or len(items) == 0:
        raise bad
    try:
        return tuple(_parse_value(key, item, float) for item in items)
    except ConfigError:
        raise bad from None


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _check_range(key: str, value: Any, f: dataclasses.Field) -> None:
    meta = f.metadata
    if value is None:
        return
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ConfigError(f"{key} must be one of {', '.join(meta['choices'])}; got {value!r}")
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if isinstance(v, str) or isinstance(v, bool):
            continue
        if meta.get("ge") is not None and v < meta["ge"]:
            raise ConfigError(f"{key} must be >= {meta['ge']:g}, got {value!r}")
        if meta.get("gt") is not None and v <= meta["gt"]:
            raise ConfigError(f"{key} must be > {meta['gt']:g}, got {value!r}")
        if meta.get("le") is not None and v > meta["le"]:
            raise ConfigError(f"{key} must be <= {meta['le']:g}, got {value!r}")


def _set_path(cfg: Any, key: str, raw: Any) -> None:
    """Set the dotted ``key`` of the dataclass tree ``cfg`` to ``raw`` parsed by the field's type."""
    parts = key.split(".")
    node = cfg
    for depth, part in enumerate(parts):
        fields = _fields(type(node))
        prefix = ".".join(parts[:depth])
        if part not in fields:
            where = f"{prefix} has" if prefix else "allowed top-level keys are"
            raise ConfigError(f"unknown key {key!r}: {where} {', '.join(fields)}")
        f = fields[part]
        hints = typing.get_type_hints(type(node))
        tp = hints[part]
        if dataclasses.is_dataclass(tp):
            if depth == len(parts) - 1:
                if not isinstance(raw, dict):
                    raise ConfigError(f"{key} is a section with keys {', '.join(_fields(tp))}; got {raw!r}")
                for sub, value in raw.items():
                    _set_path(cfg, f"{key}.{sub}", value)
                return
            node = getattr(node, part)
            continue
        if depth != len(parts) - 1:
            raise ConfigError(f"unknown key {key!r}: {'.'.join(parts[: depth + 1])} is not a section")
        value = _parse_value(key, raw, tp)
        _check_range(key, value, f)
        setattr(node, part, value)
        return


LINEAR_ONLY = ("x_cov_diag", "condition_number", "rotation", "w_cov", "w_cov_diag", "x_mean_std", "n_means",
               "descriptor", "response", "random_sign")  # fmt: skip
GP_ONLY = ("kernel", "kernel_scale", "x_dist")
MODEL_ONLY = {"activation": "kernel_attention", "mlp_hidden": "mlp_lsa", "feature_dim": "mlp_lsa"}


def _changed(section: Any, name: str) -> bool:
    return getattr(section, name) != _fields(type(section))[name].default


def _check_family_keys(cfg: Config) -> None:
    """Keys that belong to one task or model family must stay at their defaults in the others."""
    t, m = cfg.task, cfg.model
    for name in LINEAR_ONLY if t.name == "gp" else GP_ONLY:
        if _changed(t, name):
            family = "linear" if t.name == "gp" else "gp"
            raise ConfigError(f"task.{name} applies to task.name={family}, not task.name={t.name}")
    for name, family in MODEL_ONLY.items():
        if m.name != family and _changed(m, name):
            raise ConfigError(f"model.{name} applies to model.name={family}, not model.name={m.name}")


def _check_consistency(cfg: Config) -> None:
    """Cross-field rules that a single field's range cannot express."""
    _check_family_keys(cfg)
    t = cfg.task
    if t.x_cov_diag is not None and t.condition_number is not None:
        raise ConfigError("task.x_cov_diag and task.condition_number are exclusive; give one, got both")
    if t.x_cov_diag is not None and len(t.x_cov_diag) != t.d:
        raise ConfigError(f"task.x_cov_diag must have task.d={t.d} entries, got {len(t.x_cov_diag)}")
    if t.w_cov == "diag" and (t.w_cov_diag is None or len(t.w_cov_diag) != t.d):
        got = None if t.w_cov_diag is None else len(t.w_cov_diag)
        raise ConfigError(f"task.w_cov_diag must have task.d={t.d} entries when task.w_cov=diag, got {got}")
    if t.w_cov != "diag" and t.w_cov_diag is not None:
        raise ConfigError(f"task.w_cov_diag needs task.w_cov=diag, got task.w_cov={t.w_cov}")
    if t.n_means > 0 and t.x_mean_std == 0.0:
        raise ConfigError(
            "task.x_mean_std must be > 0 when task.n_means > 0 (the fixed means are drawn "
            "from N(0, x_mean_std^2 I)), got 0"
        )
    if t.descriptor == "onehot" and t.n_means == 0:
        raise ConfigError("task.descriptor=onehot needs task.n_means >= 1 (the index of the mean), got 0")
    c = cfg.train.curriculum
    if c.enabled and (c.d_start > t.d or c.n_start > t.n):
        raise ConfigError(
            f"train.curriculum.d_start/n_start must be <= task.d/task.n ({t.d}/{t.n}), got {c.d_start}/{c.n_start}"
        )
    if cfg.train.warmup_steps > cfg.train.steps:
        raise ConfigError(f"train.warmup_steps must be <= train.steps={cfg.train.steps}, got {cfg.train.warmup_steps}")


def parse_overrides(items: list[str]) -> list[tuple[str, str]]:
    """Split ``["task.d=5", …]`` into ``[("task.d", "5"), …]``."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override must look like key=value (e.g. task.d=5), got {item!r}")
        pairs.append((key.strip(), value))
    return pairs


def parse_config(base: dict | None = None, overrides: list[str] | None = None) -> Config:
    """Build a validated :class:`Config` from a nested dict (e.g. YAML) and ``key=value`` strings."""
    cfg = Config()
    if base is not None:
        if not isinstance(base, dict):
            raise ConfigError(f"a config file must hold a mapping of keys, got {type(base).__name__}")
        for key, value in base.items():
            _set_path(cfg, str(key), value)
    for key, value in parse_overrides(overrides or []):
        _set_path(cfg, key, value)
    _check_consistency(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read the YAML file ``path`` (optional), apply ``overrides`` and validate."""
    base = None
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config must name a YAML file, got {str(path)!r} (not found)")
        try:
            base = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"--config {path} is not valid YAML: {str(err).splitlines()[0]}") from None
    return parse_config(base or {}, overrides)


def config_to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts (tuples become lists), ready for YAML/JSON."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = config_to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def flat_keys(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """``{"task.d": 5, …}``: every leaf of the config under its dotted key."""
    out: dict[str, Any] = {}
    for key, value in config_to_dict(cfg).items() if dataclasses.is_dataclass(cfg) else cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_keys(value, name + "."))
        else:
            out[name] = value
    return out

"""Typed run configuration, declared once (pydantic): sections, family configs, YAML and ``key=value``.

``task.name`` and ``model.name`` select the family's own config class from :mod:`iclab.registry` (each
family declares its keys in its own file), so a key of another family is an error that names it. Every
user-facing value passes through :func:`parse_config`, which raises :class:`ConfigError` with one line
naming the key, what is allowed and what was given; the CLI turns that into exit code 2. The key table in
docs/usage.md, ``iclab config keys`` and ``iclab train --help`` are generated from these declarations.
"""

from __future__ import annotations

import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from iclab.errors import UserError
from iclab.registry import MODELS, TASKS, Registry

NONE_WORDS = ("none", "null", "~")
MAX_STEPS = 10**9  # a count of steps that can finish (days at a millisecond a step)
MAX_METRICS_ROWS = 100_000  # rows of metrics.csv, all held in the checkpoint
MAX_CONFIG_BYTES = 2**20  # a config file is a few hundred bytes of YAML
MAX_CONFIG_DEPTH = 16  # nesting of a config file (its sections are 3 deep)
MAX_ENSEMBLE = 1024  # members of one batched ensemble (train.ensemble)


class ConfigError(UserError):
    """A bad configuration value; the message names the key, the allowed values and what was given."""


# --------------------------------------------------------------------------- the declarative layer


def _allows_none(annotation: Any) -> bool:
    return (isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union) and type(
        None
    ) in typing.get_args(annotation)


def _inner(annotation: Any) -> Any:
    """``X`` for ``X | None``, else the annotation itself."""
    if _allows_none(annotation):
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, Section)


class Section(BaseModel):
    """A config section: unknown keys forbidden, values finite, instances immutable. Command-line strings are
    read by the field's type: ``none`` clears an optional, ``1,2,3`` is a list; booleans are not numbers."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _read_strings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, value in data.items():
            field = cls.model_fields.get(name)
            if field is None:
                continue
            inner = _inner(field.annotation)
            if isinstance(value, str):
                value = value.strip()
                if _allows_none(field.annotation) and value.lower() in NONE_WORDS:
                    value = None
                elif typing.get_origin(inner) is tuple:
                    value = [item.strip() for item in value.split(",")]
            if isinstance(value, bool) and inner in (int, float):
                value = str(value).lower()  # not a number: refused below, under the field's dotted key
            out[name] = value
        return out

    def with_changes(self, **changes: Any) -> Section:
        """A validated copy with some fields changed (e.g. ``task.with_changes(n_queries=10)``)."""
        return type(self).model_validate({**self.model_dump(), **changes})


class TaskConfig(Section):
    """What every task family's config has; a family subclasses it with ``name: Literal["<its name>"]``
    and its own keys (see :mod:`iclab.tasks`)."""

    name: str = Field("linear", description="task family")
    d: int = Field(5, ge=1, description="input dimension")
    n: int = Field(20, ge=1, description="context length (number of labelled examples)")
    n_queries: int = Field(1, ge=1, description="query points per prompt (scored independently)")
    noise_std: float = Field(0.0, ge=0.0, description="label noise std σ (context and query labels)")

    @property
    def descriptor_dim(self) -> int:
        """Length k of the descriptor the prompts carry (0: none)."""
        return 0


class ModelConfig(Section):
    """What every model family's config has; a family subclasses it (see :mod:`iclab.models`)."""

    name: str = Field("lsa", description="model family")

    def check_task(self, task: TaskConfig) -> None:
        """Raise ValueError (one line, naming the keys) when this model cannot read ``task``'s prompts."""

    def resolved(self, task: TaskConfig) -> ModelConfig:
        """This config with its task-dependent defaults (``auto`` values) made concrete for ``task``."""
        return self


class CurriculumConfig(Section):
    """Garg et al. (2022) curriculum: start small, grow d and n every ``every`` steps."""

    enabled: bool = Field(False, description="use the curriculum (unused x coordinates are zeroed)")
    d_start: int = Field(5, ge=1, description="active dimensions at step 0")
    d_step: int = Field(1, ge=0, description="dimensions added per stage")
    n_start: int = Field(11, ge=1, description="context length at step 0")
    n_step: int = Field(2, ge=0, description="examples added per stage")
    every: int = Field(2000, ge=1, le=MAX_STEPS, description="steps per stage")


class TrainConfig(Section):
    """Optimisation (Adam, fresh prompts every step)."""

    steps: int = Field(4000, ge=0, le=MAX_STEPS, description="optimiser steps")
    batch_size: int = Field(1024, ge=1, description="prompts per step")
    objective: Literal["query", "all_prefixes", "next_example"] = Field(
        "query",
        description="loss at the queries; averaged over every context prefix 1..n; or over each next example's "
        "label from the ones before it (Garg et al.'s sequence loss, one causal pass for GPT-2)",
    )
    lr: float = Field(1e-2, gt=0.0, description="Adam learning rate")
    lr_schedule: Literal["constant", "cosine"] = Field("cosine", description="learning-rate schedule")
    warmup_steps: int = Field(0, ge=0, description="linear warm-up steps")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="Adam beta1")
    beta2: float = Field(0.999, ge=0.0, lt=1.0, description="Adam beta2")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    grad_clip: float | None = Field(None, gt=0.0, description="max gradient norm (none: no clipping)")
    dtype: Literal["float32", "float64"] = Field("float32", description="training precision")
    checkpoint_every: int = Field(1000, ge=1, le=MAX_STEPS, description="steps between checkpoints")
    log_every: int = Field(50, ge=1, le=MAX_STEPS, description="steps between metrics rows")
    diverge_loss: float = Field(1e8, gt=0.0, description="a training loss above this (or NaN/inf) stops the run")
    ensemble: int = Field(
        1, ge=1, le=MAX_ENSEMBLE,
        description="E members trained as one batched ensemble, seeds seed..seed+E-1, each equal to its run alone "
        "and in its own run dir (iclab train --out DIR: DIR/member-0, DIR/member-1, …)",
    )  # fmt: skip
    ensemble_lrs: tuple[float, ...] | None = Field(
        None, description="one learning rate per member, replacing train.lr (none: train.lr for every member)"
    )
    loggers: tuple[Literal["tensorboard", "wandb"], ...] = Field(
        (), description="experiment trackers logging each metrics row (W&B offline unless WANDB_MODE is set)"
    )
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)

    @field_validator("loggers", mode="before")
    @classmethod
    def _none_is_no_logger(cls, value: Any) -> Any:
        """``train.loggers=none`` (or a YAML null) is no logger."""
        if value is None or (isinstance(value, list) and len(value) == 1 and str(value[0]).lower() in NONE_WORDS):
            return ()
        return value

    @model_validator(mode="after")
    def _members(self) -> TrainConfig:
        if len(set(self.loggers)) != len(self.loggers):
            raise ValueError(f"train.loggers names a logger twice, got {','.join(self.loggers)}")
        lrs = self.ensemble_lrs
        if lrs is not None:
            if self.ensemble < 2:
                raise ValueError("train.ensemble_lrs needs train.ensemble >= 2 (a learning rate per member), got 1")
            if len(lrs) != self.ensemble:
                raise ValueError(f"train.ensemble_lrs must have train.ensemble={self.ensemble} entries, got {len(lrs)}")
            if not all(lr > 0 for lr in lrs):
                raise ValueError(f"train.ensemble_lrs must be > 0, got {','.join(f'{lr:g}' for lr in lrs)}")
        return self


class EvalConfig(Section):
    """Held-out evaluation."""

    batch_size: int = Field(10000, ge=1, description="prompts in the held-out and the final evaluation sets")
    every: int = Field(500, ge=1, le=MAX_STEPS, description="steps between held-out evaluations")


FAMILY_SECTIONS: dict[str, Registry] = {"task": TASKS, "model": MODELS}


def family_config(section: str, name: str) -> type[Section]:
    """The config class of the ``section`` ("task" or "model") family ``name``; ConfigError if unknown."""
    try:
        return FAMILY_SECTIONS[section].get(name).config
    except UserError as err:
        raise ConfigError(str(err)) from None


class Config(Section):
    """A whole run: seed, task, model, training and evaluation."""

    seed: int = Field(0, ge=0, description="seed of every random stream of the run")
    task: SerializeAsAny[TaskConfig] = Field(default_factory=lambda: family_config("task", "linear")())
    model: SerializeAsAny[ModelConfig] = Field(default_factory=lambda: family_config("model", "lsa")())
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="before")
    @classmethod
    def _family_classes(cls, data: Any) -> Any:
        """A task/model mapping is validated by its family's class (``name`` selects it); the model's ``auto``
        values are then resolved for the task (:meth:`ModelConfig.resolved`)."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for section, default in (("task", "linear"), ("model", "lsa")):
            value = data.get(section, {})
            if isinstance(value, dict):
                out[section] = family_config(section, str(value.get("name", default))).model_validate(value)
        if isinstance(out["task"], TaskConfig) and isinstance(out["model"], ModelConfig):
            out["model"] = out["model"].resolved(out["task"])
        return out

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        self.model.check_task(self.task)
        c, t = self.train.curriculum, self.task
        if c.enabled and (c.d_start > t.d or c.n_start > t.n):
            raise ValueError(
                f"train.curriculum.d_start/n_start must be <= task.d/task.n ({t.d}/{t.n}), got {c.d_start}/{c.n_start}"
            )
        if self.train.warmup_steps > self.train.steps:
            raise ValueError(
                f"train.warmup_steps must be <= train.steps={self.train.steps}, got {self.train.warmup_steps}"
            )
        rows = self.train.steps // self.train.log_every
        if rows > MAX_METRICS_ROWS:
            raise ValueError(
                f"train.steps/train.log_every gives {rows} metrics rows, at most {MAX_METRICS_ROWS} are kept: raise "
                f"train.log_every to >= {-(-self.train.steps // MAX_METRICS_ROWS)}"
            )
        return self


# --------------------------------------------------------------------------- errors as one line


def _type_name(tp: Any) -> str:
    return {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}.get(
        tp, "a comma-separated list of numbers"
    )


def _quote(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field_at(cls: type[Section], loc: tuple) -> tuple[str, Any, Any]:
    """(dotted key, annotation, owning section class) of the field an error location points at."""
    parts, owner, annotation = [], cls, None
    for item in loc:
        if isinstance(item, int) or owner is None:
            break
        parts.append(str(item))
        field = owner.model_fields.get(str(item))
        annotation = field.annotation if field is not None else None
        owner = annotation if _is_section(annotation) else None
    return ".".join(parts), annotation, owner


def _other_families(section: str, key: str) -> list[str]:
    """Names of the ``section`` families that do have the setting ``key``."""
    registry = FAMILY_SECTIONS[section]
    return [entry.name for entry in registry if entry.config is not None and key in entry.config.model_fields]


def _message(error: dict, cls: type[Section], prefix: str, container: Any, value: Any) -> str:
    """One line for a pydantic error of ``cls`` validated under the dotted ``prefix``; ``container`` is the
    mapping that holds the offending field and ``value`` the field's whole given value."""
    loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    rel, annotation, _ = _field_at(cls, loc)
    key = f"{prefix}{rel}" if rel else prefix.rstrip(".")
    if kind == "extra_forbidden":
        parent_rel, _, name = rel.rpartition(".")
        parent_cls = _field_at(cls, loc[:-1])[2] if len(loc) > 1 else cls
        section = (prefix + parent_rel).rstrip(".")
        if section in FAMILY_SECTIONS and isinstance(container, dict):
            family = container.get("name", cls.model_fields["name"].default)
            owners = _other_families(section, name)
            if owners:
                owned = "/".join(owners)
                return f"{key} is not a setting of {section}.name={family} (it is one of {section}.name={owned})"
        keys = ", ".join(parent_cls.model_fields) if parent_cls is not None else ""
        return f"unknown key {key!r}: " + (f"{section} has {keys}" if section else f"allowed top-level keys are {keys}")
    if _is_section(annotation):
        return f"{key} is a section with keys {', '.join(annotation.model_fields)}; got {_quote(value)}"
    if isinstance(value, dict):
        return f"unknown key {key + '.' + str(next(iter(value), ''))!r}: {key} is not a section"
    inner = _inner(annotation)
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}
    if kind in bounds:
        shown = value if isinstance(value, str) else _quote(value)  # a number as typed
        return f"{key} must be {bounds[kind]} {next(iter(ctx.values())):g}, got {shown}"
    if typing.get_origin(inner) is Literal:
        return f"{key} must be one of {', '.join(map(str, typing.get_args(inner)))}; got {_quote(value)}"
    if kind == "finite_number":
        return f"{key} must be a finite number, got {_quote(value)}"
    if _literal_items(inner):
        return f"{key} must be a comma-separated list of {', '.join(_literal_items(inner))}; got {_quote(value)}"
    return f"{key} must be {_type_name(inner)}, got {_quote(value)}"


def _literal_items(annotation: Any) -> tuple[str, ...]:
    """The words of ``tuple[Literal[...], ...]`` (empty for any other annotation)."""
    args = typing.get_args(annotation) if typing.get_origin(annotation) is tuple else ()
    return tuple(map(str, typing.get_args(args[0]))) if args and typing.get_origin(args[0]) is Literal else ()


def validate_section(cls: type[Section], data: Any, prefix: str = "") -> Section:
    """``cls.model_validate(data)`` with the first error as a one-line ConfigError naming the dotted key."""
    if not isinstance(data, dict):
        section = prefix.rstrip(".")
        raise ConfigError(f"{section} is a section with keys {', '.join(cls.model_fields)}; got {_quote(data)}")
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        path = [item for item in first["loc"] if isinstance(item, str)]
        container: Any = data
        for item in path[:-1]:
            container = container.get(item) if isinstance(container, dict) else None
        value = (
            container.get(path[-1], first.get("input")) if isinstance(container, dict) and path else first.get("input")
        )
        raise ConfigError(_message(first, cls, prefix, container, value)) from None


# --------------------------------------------------------------------------- building a config


def parse_overrides(items: list[str]) -> dict[str, str]:
    """``["task.d=5", …]`` → ``{"task.d": "5", …}``; a malformed item or a key given twice is an error."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override must look like key=value (e.g. task.d=5), got {_quote(item)}")
        if key in pairs:
            raise ConfigError(f"{key} is given twice ({key}={pairs[key]}, {key}={value}); give it once")
        pairs[key] = value
    return pairs


def _merge(base: dict, key: str, value: Any) -> None:
    """Set the dotted ``key`` of the nested dict ``base`` (creating sections as needed)."""
    *sections, leaf = key.split(".")
    node = base
    for depth, part in enumerate(sections):
        child = node.get(part)
        if not isinstance(child, dict):
            if child is not None:
                raise ConfigError(f"unknown key {key!r}: {'.'.join(sections[: depth + 1])} is not a section")
            child = node[part] = {}
        node = child
    node[leaf] = value


def parse_config(base: dict | None = None, overrides: list[str] | None = None) -> Config:
    """Build a validated :class:`Config` from a nested dict (e.g. YAML) and ``key=value`` strings (the
    strings win over ``base``); raises ConfigError with one line naming the key."""
    if base is not None and not isinstance(base, dict):
        raise ConfigError(f"a config file must hold a mapping of keys, got {type(base).__name__}")
    data = _deep_copy(base or {})
    for key, value in parse_overrides(overrides or []).items():
        _merge(data, key, value)
    unknown = [str(key) for key in data if key not in Config.model_fields]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}: allowed top-level keys are {', '.join(Config.model_fields)}")
    sections: dict[str, Any] = {}
    for name, value in data.items():
        if name in FAMILY_SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{name} is a section; got {_quote(value)}")
            default = Config.model_fields[name].default_factory().name
            family = value.get("name", default)
            cls = family_config(name, family.strip() if isinstance(family, str) else family)
            sections[name] = validate_section(cls, value, f"{name}.")
        elif _is_section(Config.model_fields[name].annotation):
            sections[name] = validate_section(Config.model_fields[name].annotation, value, f"{name}.")
        else:
            sections[name] = value
    return validate_section(Config, sections)


def _deep_copy(data: dict) -> dict:
    return {key: _deep_copy(value) if isinstance(value, dict) else value for key, value in data.items()}


class _ConfigLoader(yaml.SafeLoader):
    """YAML's safe loader for configs: no aliases (a few hundred bytes of them expand to gigabytes), at most
    MAX_CONFIG_DEPTH levels of nesting (deeper documents exhaust the recursion of YAML's composer), no key
    given twice in one mapping."""

    depth = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise ConfigError(
                f"YAML aliases are not allowed in a config (*{event.anchor} on line {event.start_mark.line + 1}); "
                "write the value out"
            )
        if self.depth >= MAX_CONFIG_DEPTH:
            raise ConfigError(
                f"nested deeper than {MAX_CONFIG_DEPTH} levels (line {event.start_mark.line + 1}); a config has "
                "sections of keys"
            )
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key {key!r} is given twice in one mapping (line {key_node.start_mark.line + 1})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str) -> Any:
    """Parse YAML safely (no code runs), refusing aliases, deep nesting and duplicate keys (ConfigError)."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """The reason and line of a YAML error, in one line."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        return f"{err.problem} (line {err.problem_mark.line + 1})"
    return str(err).splitlines()[0]


def read_config_file(path: Path) -> Any:
    """The YAML document of the config file ``path``: UTF-8 text of at most MAX_CONFIG_BYTES, parsed by
    :func:`read_yaml`; anything else is a ConfigError naming the file and the reason."""
    if not path.is_file():
        reason = "a folder" if path.is_dir() else "not a regular file" if path.exists() else "not found"
        raise ConfigError(f"--config must name a YAML file, got {str(path)!r} ({reason})")
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"--config {path} cannot be read ({err.strerror})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"--config {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB; a config is YAML text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"--config {path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); save it as UTF-8"
        ) from None
    try:
        return read_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {path} is not valid YAML: {_yaml_problem(err)}") from None
    except ConfigError as err:
        raise ConfigError(f"--config {path}: {err}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read the YAML file ``path`` (optional), apply ``overrides`` and validate."""
    base = None if path is None else read_config_file(Path(path))
    return parse_config(base or {}, overrides)


# --------------------------------------------------------------------------- views of a config


def config_to_dict(cfg: BaseModel) -> dict:
    """The config as plain nested dicts (tuples become lists), ready for YAML/JSON."""
    return cfg.model_dump(mode="json")


def config_to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def flat_keys(cfg: BaseModel | dict, prefix: str = "") -> dict[str, Any]:
    """``{"task.d": 5, …}``: every leaf of the config under its dotted key."""
    out: dict[str, Any] = {}
    for key, value in (config_to_dict(cfg) if isinstance(cfg, BaseModel) else cfg).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_keys(value, name + "."))
        else:
            out[name] = value
    return out


def describe(section: Section) -> str:
    """``name, key=value, …`` for reports: every key of a family section (e.g. ``lsa, layers=2, heads=1, …``)."""
    values = [f"{key}={_default_text(getattr(section, key))}" for key in type(section).model_fields if key != "name"]
    return ", ".join([str(getattr(section, "name", type(section).__name__)), *values])


def _default_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}" if math.isfinite(value) else str(value)
    if isinstance(value, tuple):
        return ",".join(v if isinstance(v, str) else f"{v:g}" for v in value) or "none"
    return str(value)


def _allowed_text(annotation: Any) -> str:
    inner = _inner(annotation)
    if typing.get_origin(inner) is Literal:
        return "|".join(map(str, typing.get_args(inner)))
    return ",".join(_literal_items(inner))


class KeyRow(NamedTuple):
    """One documented key: its default and allowed values as text, its meaning, and the families that have
    it (empty: every config has it)."""

    key: str
    default: str
    allowed: str
    meaning: str
    families: tuple[str, ...] = ()

    def described(self) -> str:
        """The meaning, prefixed by the families that have the key."""
        return f"{', '.join(self.families)}: {self.meaning}" if self.families else self.meaning


def _field_row(key: str, field: Any) -> KeyRow:
    default = field.default_factory() if field.default_factory is not None else field.default
    return KeyRow(key, _default_text(default), _allowed_text(field.annotation), field.description or "")


def _section_rows(cls: type[Section], prefix: str) -> list[KeyRow]:
    rows = []
    for name, field in cls.model_fields.items():
        if _is_section(field.annotation):
            rows += _section_rows(field.annotation, f"{prefix}{name}.")
        else:
            rows.append(_field_row(f"{prefix}{name}", field))
    return rows


def key_rows() -> list[KeyRow]:
    """Every key, in declaration order. A family section lists its shared keys (``task.name`` allows every
    registered family), then each family's own keys (and shared keys it gives another default) once, with the
    families that have them."""
    rows: list[KeyRow] = []
    for name, field in Config.model_fields.items():
        if name not in FAMILY_SECTIONS:
            rows += (
                _section_rows(field.annotation, f"{name}.")
                if _is_section(field.annotation)
                else [_field_row(name, field)]
            )
            continue
        registry = FAMILY_SECTIONS[name]
        base = TaskConfig if name == "task" else ModelConfig
        for row in _section_rows(base, f"{name}."):
            rows.append(row._replace(allowed="|".join(registry.names())) if row.key == f"{name}.name" else row)
        shared = {row.key: row for row in rows}
        own: dict[KeyRow, list[str]] = {}
        for entry in registry:
            for field_name, family_field in entry.config.model_fields.items():
                row = _field_row(f"{name}.{field_name}", family_field)
                if field_name != "name" and shared.get(row.key) != row:  # its own key, or its own default
                    own.setdefault(row, []).append(entry.name)
        rows += [row._replace(families=tuple(families)) for row, families in own.items()]
    return rows


def key_table() -> str:
    """:func:`key_rows` as a GitHub markdown table (the one in docs/usage.md)."""
    lines = ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for row in key_rows():
        choices = row.allowed.replace("|", " \\| ")
        lines.append(f"| `{row.key}` | {row.default} | {choices} | {row.described()} |")
    return "\n".join(lines) + "\n"

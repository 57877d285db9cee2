"""Fuzzing: invalid config values and CLI arguments exit 2 naming the field, never a traceback; random
valid configs train 3 steps cleanly."""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
import typing
from pathlib import Path

import annotated_types
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from iclab.cli import main
from iclab.config import FAMILY_SECTIONS, Config, ConfigError, Section, flat_keys, parse_config
from iclab.rundir import read_json


def _bounds(field) -> dict[str, float]:
    out = {}
    for item in field.metadata:
        for name in ("ge", "gt", "le", "lt"):
            if isinstance(item, getattr(annotated_types, name.capitalize())):
                out[name] = getattr(item, name)
    return out


def _section_leaves(cls: type[Section], prefix: str, select: list[str]) -> dict[str, tuple[list[str], typing.Any]]:
    out = {}
    for name, field in cls.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            out.update(_section_leaves(field.annotation, f"{prefix}{name}.", select))
        else:
            out[f"{prefix}{name}"] = (select, field)
    return out


def leaf_fields() -> dict[str, tuple[list[str], typing.Any]]:
    """{dotted key: (overrides that select the family owning it, pydantic field)} for every key of every
    section and every registered family (read from the registries, so a new family is fuzzed too)."""
    out = {}
    for name, field in Config.model_fields.items():
        if name in FAMILY_SECTIONS:
            for entry in FAMILY_SECTIONS[name]:
                select = [f"{name}.name={entry.name}"]
                for key, value in _section_leaves(entry.config, f"{name}.", select).items():
                    out.setdefault(key, value)
        elif isinstance(field.annotation, type) and issubclass(field.annotation, Section):
            out.update(_section_leaves(field.annotation, f"{name}.", []))
        else:
            out[name] = ([], field)
    return out


LEAVES = leaf_fields()
BOOL_WORDS = {"true", "false", "1", "0", "yes", "no", "on", "off", "t", "f", "y", "n"}
WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-!?% ", min_size=1, max_size=12)


def _inner(annotation):
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if typing.get_origin(annotation) in (typing.Union, __import__("types").UnionType) else annotation


def not_a_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return True
    return False


def invalid_value(key: str) -> st.SearchStrategy[str]:
    """Values that key=value must refuse, by construction from the field's type and range."""
    _, field = LEAVES[key]
    inner, bounds = _inner(field.annotation), _bounds(field)
    bad_words = WORDS.filter(lambda w: w.strip().lower() not in {"none", "null", "~"} and not_a_number(w))
    section = key.rpartition(".")[0]
    choices = FAMILY_SECTIONS[section].names() if key.endswith(".name") and section in FAMILY_SECTIONS else None
    if typing.get_origin(inner) is typing.Literal:
        choices = [str(c) for c in typing.get_args(inner)]
    if choices:
        return st.text(max_size=12).filter(
            lambda w: w.strip() not in choices and "\x00" not in w and w.strip().lower() not in ("none", "null", "~")
        )
    if inner is bool:
        return bad_words.filter(lambda w: w.strip().lower() not in BOOL_WORDS)
    options = [bad_words]
    low = bounds.get("ge", bounds.get("gt"))
    if inner is int:
        options.append(st.floats(0.1, 0.9).map(lambda f: str(round(f + 3, 3))))  # not an integer
        if low is not None:
            options.append(st.integers(-(10**6), math.ceil(low) - 1).map(str))
    elif inner is not str:
        options.append(st.sampled_from(["nan", "inf", "-inf"]))
        if low is not None:
            options.append(st.floats(-1e6, low, exclude_max="ge" not in bounds).map(repr))
        high = bounds.get("lt", bounds.get("le"))
        if high is not None:
            options.append(st.floats(high, 1e6, exclude_min="lt" not in bounds).map(repr))
    return st.one_of(options)


@st.composite
def bad_override(draw) -> tuple[str, list[str]]:
    """(the key the error must name, the overrides)."""
    kind = draw(st.sampled_from(["value", "value", "value", "unknown", "malformed"]))
    if kind == "unknown":
        key = draw(st.sampled_from(["", "task.", "model.", "train.", "eval.", "train.curriculum."]))
        key += draw(st.from_regex(r"[a-z_]{1,8}", fullmatch=True))
        key = key if key not in LEAVES else key + "_x"
        return key, [f"{key}=1"]
    if kind == "malformed":
        word = draw(st.from_regex(r"[a-z.]{1,10}", fullmatch=True))
        return word, [word]
    key = draw(st.sampled_from(sorted(LEAVES)))
    select = [] if key.endswith(".name") else LEAVES[key][0]
    return key, [*select, f"{key}={draw(invalid_value(key))}"]


def run_cli(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit_info:  # argparse's own errors
            code = exit_info.code
    return code, err.getvalue()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_override())
def test_invalid_config_values_exit_2_naming_the_field(case):
    name, overrides = case
    with tempfile.TemporaryDirectory() as tmp:
        code, err = run_cli(["train", *overrides, "--out", str(Path(tmp) / "run")])
        assert not (Path(tmp) / "run").exists()
    assert code == 2, (overrides, err)
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and name in err, (overrides, err)


# verbs and flags that exist: a word standing for one of them would make a valid command
REAL_WORDS = {"train", "eval", "check", "demo", "theory", "force", "quiet", "help", "json", "out", "device", "config"}
BAD_ARGV = st.sampled_from(
    [
        ["train", "--out"],
        ["train", "task.d=3"],  # --out missing
        ["train", "--out", "{tmp}/r", "--device", "{word}"],
        ["train", "--out", "{tmp}/r", "--config", "{tmp}/{word}.yaml"],
        ["train", "--out", "{tmp}/r", "--{word}"],
        ["eval", "{tmp}/{word}"],
        ["eval", "{tmp}", "--batch-size", "{word}"],
        ["check", "{tmp}/{word}"],
        ["{word}"],
        [],
    ]
)


@settings(max_examples=200, deadline=None)
@given(BAD_ARGV, st.from_regex(r"[a-z]{1,8}", fullmatch=True).filter(lambda w: w not in REAL_WORDS))
def test_invalid_cli_arguments_exit_2_without_traceback(argv, word):
    with tempfile.TemporaryDirectory() as tmp:
        filled = [a.replace("{tmp}", tmp).replace("{word}", word) for a in argv]
        code, err = run_cli(filled)
    assert code == 2, (filled, err)
    assert "Traceback" not in err and err.strip()


def _valid_value(field, d: int) -> st.SearchStrategy:
    """Small values the field's own declaration allows (the config's cross-field rules may still refuse)."""
    inner, bounds = _inner(field.annotation), _bounds(field)
    if typing.get_origin(inner) is typing.Literal:
        value = st.sampled_from(typing.get_args(inner))
    elif inner is bool:
        value = st.booleans()
    elif inner is int:
        low = int(bounds.get("ge", bounds.get("gt", -1) + 1))
        value = st.integers(low, low + 3)
    elif inner is float:
        low = bounds.get("ge", bounds.get("gt", 0.0))
        high = bounds.get("lt", bounds.get("le", math.inf))
        candidates = [
            v for v in (low, low + 0.5, low + 1.0, 2 * low + 2.0) if v < high or ("le" in bounds and v == high)
        ]
        value = st.sampled_from([v for v in candidates if "gt" not in bounds or v > bounds["gt"]])
    elif typing.get_origin(inner) is tuple:
        value = st.lists(st.sampled_from([0.5, 1.0, 2.0]), min_size=d, max_size=d).map(tuple)
    else:
        value = st.text(alphabet="abc", min_size=1, max_size=4)
    if type(None) in typing.get_args(field.annotation):
        return st.one_of(st.none(), value)
    return value


FIXED = {"train.steps": 3, "train.batch_size": 8, "train.warmup_steps": 0, "train.checkpoint_every": 2,
         "task.n": 5, "eval.every": 2}  # fmt: skip


def _text(value: object) -> str:
    if value is None:
        return "none"
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


@st.composite
def valid_config(draw) -> list[str]:
    """A random config from the registries: every family, every key drawn within its declared range; small
    sizes so that 3 steps take milliseconds. Drawn configs the cross-field rules refuse are discarded."""
    d = draw(st.integers(1, 4))
    items = {"task.d": d, **FIXED}
    for section, registry in FAMILY_SECTIONS.items():
        entry = draw(st.sampled_from(list(registry)))
        items[f"{section}.name"] = entry.name
        for key, field in entry.config.model_fields.items():
            items.setdefault(f"{section}.{key}", draw(_valid_value(field, d)))
    for key, (select, field) in LEAVES.items():
        if not select and key not in items:
            items[key] = draw(_valid_value(field, d))
    overrides = [f"{key}={_text(value)}" for key, value in items.items()]
    try:
        parse_config({}, overrides)
    except ConfigError:
        reject()
    return overrides


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(valid_config())
def test_random_valid_configs_train_three_steps_or_stop_cleanly(overrides):
    """Every valid config either trains its 3 steps (exit 0, a finished summary) or diverges (exit 1, one line,
    a "diverged" summary): never a traceback. Divergence is correct behaviour for some configs (a deep full
    LSA on mean-shifted data, a huge init scale)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        code, err = run_cli(["train", *overrides, "--out", str(out), "--quiet"])
        assert code in (0, 1) and "Traceback" not in err, (overrides, err)
        summary = read_json(out / "summary.json")
        if code == 0:
            assert summary["status"] == "finished" and summary["steps"] == 3
            assert flat_keys(summary["config"])["train.steps"] == 3
        else:
            assert summary["status"] == "diverged" and len(err.strip().splitlines()) == 1, (overrides, err)

"""Fuzzing: invalid config values and CLI arguments exit 2 naming the field, never a traceback; random
valid configs train 3 steps cleanly; hostile requests (output locations, sizes, config files, values and their
neighbours) end in one line, within the memory the machine has."""

from __future__ import annotations

import contextlib
import io
import math
import resource
import tempfile
import typing
from pathlib import Path
from unittest import mock

import annotated_types
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from iclab import limits
from iclab.cli import main
from iclab.config import FAMILY_SECTIONS, MAX_STEPS, Config, ConfigError, Section, flat_keys, parse_config
from iclab.rundir import read_json
from iclab.train import train


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


# one run dir (no ensemble) and no tracker packages needed
FIXED = {"train.steps": 3, "train.batch_size": 8, "train.warmup_steps": 0, "train.checkpoint_every": 2,
         "task.n": 5, "eval.every": 2, "train.ensemble": 1, "train.ensemble_lrs": None,
         "train.loggers": None}  # fmt: skip


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


# --------------------------------------------------------------------------- hostile requests

BASE = {"task.d": 2, "task.n": 4, "train.steps": 1, "train.batch_size": 8, "eval.batch_size": 8, "train.log_every": 1,
        "eval.every": 1, "train.checkpoint_every": 1}  # fmt: skip


def small(**changes: object) -> list[str]:
    """A one-step training of tiny prompts as overrides, ``changes`` (dotted keys with "__" for ".") applied."""
    return [
        f"{key}={value}" for key, value in {**BASE, **{k.replace("__", "."): v for k, v in changes.items()}}.items()
    ]


# {key: (overrides selecting its family, largest power of ten tried)}; model.layers stops at 10³: an LSA that deep
# fits in memory with these batches and takes minutes to build (the model families bound no depth yet).
SIZES = {"task.d": ([], 13), "task.n": ([], 13), "task.n_queries": ([], 13), "train.batch_size": ([], 13),
         "eval.batch_size": ([], 13), "model.layers": ([], 3), "model.heads": ([], 13),
         "model.mlp_hidden": (["model.name=mlp_lsa"], 13), "model.feature_dim": (["model.name=mlp_lsa"], 13),
         "model.width": (["model.name=gpt2", "model.heads=1"], 13)}  # fmt: skip
COUNTS = ["train.steps", "train.log_every", "train.checkpoint_every", "eval.every", "train.curriculum.every"]
DIGITS = ["３", "٣", "३", "3", "-3", "1e3", "3.0", "0x3", "3_0", "١٠٠٠٠٠٠٠٠٠٠٠"]


def near(largest: int = 13, huge: tuple[int, ...] = ()) -> st.SearchStrategy[int]:
    """Powers of ten up to 10**largest (and the powers ``huge``) and their neighbours."""
    powers = st.integers(0, largest) | st.sampled_from(huge) if huge else st.integers(0, largest)
    return st.tuples(powers, st.sampled_from([-1, 0, 1])).map(lambda kd: max(10 ** kd[0] + kd[1], 0))


YAML = st.one_of(
    st.binary(max_size=300),
    st.integers(1, 3000).map(lambda depth: b"[" * depth + b"]" * depth),
    st.integers(1, 40).map(lambda depth: b"task:\n" + b"".join(b" " * i + b"k:\n" for i in range(1, depth))),
    st.integers(1, 8).map(
        lambda width: b"a: &a [1]\n" + b"task:\n  x_cov_diag: [" + b", ".join([b"*a"] * width) + b"]\n"
    ),
)


@st.composite
def hostile_request(draw, run: str, scratch: str) -> list[str]:
    """A command line asking for too much, somewhere odd, or in odd characters (``run``: a trained run dir,
    ``scratch``: a folder holding the file ``a-file``)."""
    kind = draw(st.sampled_from(["size", "count", "out", "config", "value", "flag"]))
    fresh = f"{scratch}/{draw(st.integers(0, 10**9))}"
    if kind == "size":
        key = draw(st.sampled_from(sorted(SIZES)))
        select, largest = SIZES[key]
        sized = small(**{key.replace(".", "__"): draw(near(largest))})
        return ["train", *sized, *select, "--out", fresh, "--quiet"]
    if kind == "count":  # only validated: an accepted count of steps would train for days
        key = draw(st.sampled_from(COUNTS))
        value = draw(st.sampled_from([MAX_STEPS - 1, MAX_STEPS, MAX_STEPS + 1, 10**26, 0, -1]) | near())
        return ["config", "show", f"{key}={value}"]
    if kind == "out":
        unusable = [f"{scratch}/a-file", f"{scratch}/a-file/run", "/proc/iclab-fuzz", f"{scratch}/{'x' * 256}"]
        if draw(st.booleans()):  # reproduce only where it cannot start: anywhere else it trains its whole grid
            return ["reproduce", "mlp_lsa", "--quick", "--out", draw(st.sampled_from(unusable))]
        where = draw(st.sampled_from([*unusable, scratch, f"{scratch}/{'x' * draw(st.integers(240, 255))}"]))
        probe = ["probe", run, "--prompts", "4", "--max-iterations", "1", "--sweeps", "1"]
        verb = draw(st.sampled_from([["train", *small(), "--quiet"], ["train", *small(), "--force"], probe]))
        return [*verb, "--out", where]
    if kind == "config":
        path = Path(fresh + ".yaml")
        path.write_bytes(draw(YAML))
        return ["train", "--config", str(path), *small(), "--out", fresh]
    if kind == "value":
        key = draw(st.sampled_from(["task.d", "train.lr", "train.beta1", "seed", "train.steps"]))
        return ["train", *small(**{key.replace(".", "__"): draw(st.sampled_from(DIGITS))}), "--out", fresh, "--quiet"]
    # accepted, a value only takes time (up to seconds at these powers); far beyond, it must be refused
    flag = draw(st.sampled_from(["--batch-size", "--prompts", "--queries", "--max-iterations", "--seed"]))
    value = draw(near(3, huge=(7, 10, 13)))
    if flag == "--batch-size":
        return ["eval", run, "--batch-size", str(value)]
    return ["probe", run, "--prompts", "4", "--max-iterations", "1", "--sweeps", "1", flag, str(value), "--out", fresh]


ONE_GIB = 2**30


@pytest.fixture(scope="module")
def fuzz_dirs(tmp_path_factory) -> tuple[str, str]:
    run = tmp_path_factory.mktemp("fuzz-run") / "run"
    train(parse_config({}, small()), run, progress=False)
    scratch = tmp_path_factory.mktemp("fuzz-scratch")
    (scratch / "a-file").write_text("mine")
    return str(run), str(scratch)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_hostile_requests_end_in_one_line_within_the_memory(fuzz_dirs, data):
    """On a machine with 1 GiB free: every request exits 0, 1 (diverged) or 2 with one line, never a traceback,
    and nothing it runs takes this process over 4 GiB."""
    run, scratch = fuzz_dirs
    argv = data.draw(hostile_request(run, scratch))
    with mock.patch.object(limits, "available_memory", lambda device="cpu": ONE_GIB):
        code, err = run_cli(argv)
    assert code in (0, 1, 2) and "Traceback" not in err, (argv, err)
    if code == 2 and not err.startswith("usage:"):
        assert err.count("\n") == 1, (argv, err)
    assert Path(scratch, "a-file").read_text() == "mine"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 < 4 * ONE_GIB

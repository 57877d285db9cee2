"""Fuzzing: invalid config values and CLI arguments exit 2 naming the field, never a traceback; random
valid configs train 3 steps cleanly."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import tempfile
import typing
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iclab.cli import main
from iclab.config import Config, _strip_optional, flat_keys
from iclab.rundir import read_json


def leaf_fields(cls: type = Config, prefix: str = "") -> dict[str, tuple[typing.Any, dict]]:
    """{dotted key: (type, metadata)} for every leaf of the config tree."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(leaf_fields(hints[f.name], f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = (hints[f.name], dict(f.metadata))
    return out


LEAVES = leaf_fields()
BOOL_WORDS = {"true", "false", "1", "0", "yes", "no"}
WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-!?% ", min_size=1, max_size=12)


def not_a_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return True
    return False


def invalid_value(key: str) -> st.SearchStrategy[str]:
    """Values that key=value must refuse, by construction from the field's type and range."""
    tp, meta = LEAVES[key]
    inner, _ = _strip_optional(tp)
    bad_words = WORDS.filter(lambda w: w.strip().lower() not in {"none", "null", "~"} and not_a_number(w))
    if meta.get("choices"):
        return st.text(max_size=12).filter(
            lambda w: w.strip() not in meta["choices"] and "\x00" not in w and w.strip().lower() != "none"
        )
    if inner is bool:
        return bad_words.filter(lambda w: w.strip().lower() not in BOOL_WORDS)
    options = [bad_words]
    low = meta.get("ge") if meta.get("ge") is not None else meta.get("gt")
    if inner is int:
        options.append(st.floats(0.1, 0.9).map(lambda f: str(round(f + 3, 3))))  # not an integer
        if low is not None:
            options.append(st.integers(-(10**6), math.ceil(low) - 1).map(str))
    elif inner is float or inner not in (str,):
        options.append(st.sampled_from(["nan", "inf", "-inf"]))
        if low is not None:
            below = st.floats(-1e6, low, exclude_max=meta.get("gt") is None)
            options.append(below.map(repr))
    return st.one_of(options)


@st.composite
def bad_override(draw) -> tuple[str, str]:
    kind = draw(st.sampled_from(["value", "value", "value", "unknown", "malformed"]))
    if kind == "unknown":
        key = draw(st.sampled_from(["", "task.", "model.", "train.", "eval.", "train.curriculum."]))
        key += draw(st.from_regex(r"[a-z_]{1,8}", fullmatch=True))
        return key if key not in LEAVES else key + "_x", f"{key}=1" if key not in LEAVES else f"{key}_x=1"
    if kind == "malformed":
        word = draw(st.from_regex(r"[a-z.]{1,10}", fullmatch=True))
        return word, word
    key = draw(st.sampled_from(sorted(LEAVES)))
    return key, f"{key}={draw(invalid_value(key))}"


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
    name, override = case
    with tempfile.TemporaryDirectory() as tmp:
        code, err = run_cli(["train", override, "--out", str(Path(tmp) / "run")])
        assert not (Path(tmp) / "run").exists()
    assert code == 2, (override, err)
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and name in err, (override, err)


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


@st.composite
def valid_config(draw) -> list[str]:
    d = draw(st.integers(1, 4))
    items = [f"task.d={d}", f"task.n={draw(st.integers(1, 6))}", f"task.n_queries={draw(st.integers(1, 3))}"]
    items.append(f"task.noise_std={draw(st.sampled_from([0, 0.1, 1.0]))}")
    spectrum = draw(st.sampled_from(["iso", "diag", "kappa"]))
    if spectrum == "diag":
        items.append("task.x_cov_diag=" + ",".join(str(draw(st.sampled_from([0.5, 1, 2]))) for _ in range(d)))
    elif spectrum == "kappa":
        items += ["task.condition_number=5", f"task.rotation={draw(st.sampled_from(['none', 'fixed', 'per_prompt']))}"]
    items.append(f"task.w_cov={draw(st.sampled_from(['identity', 'inverse_x']))}")
    shift = draw(st.sampled_from(["none", "tau", "means"]))
    if shift == "tau":
        items += ["task.x_mean_std=1", f"task.descriptor={draw(st.sampled_from(['none', 'mean']))}"]
    elif shift == "means":
        items += ["task.x_mean_std=1", "task.n_means=3", f"task.descriptor={draw(st.sampled_from(['mean', 'onehot']))}"]
    items += [
        f"model.layers={draw(st.integers(1, 3))}",
        f"model.heads={draw(st.integers(1, 2))}",
        f"model.param={draw(st.sampled_from(['full', 'sparse']))}",
        f"model.init={draw(st.sampled_from(['gaussian', 'zero_block', 'balanced']))}",
        f"train.dtype={draw(st.sampled_from(['float32', 'float64']))}",
        f"train.lr_schedule={draw(st.sampled_from(['constant', 'cosine']))}",
        f"train.grad_clip={draw(st.sampled_from(['none', '1.0']))}",
        f"seed={draw(st.integers(0, 10**6))}",
        "train.steps=3",
        "train.batch_size=8",
        f"train.log_every={draw(st.integers(1, 4))}",
        f"eval.batch_size={draw(st.integers(1, 20))}",
    ]
    return items


@settings(max_examples=25, deadline=None)
@given(valid_config())
def test_random_valid_configs_train_three_steps(overrides):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        code, err = run_cli(["train", *overrides, "--out", str(out), "--quiet"])
        assert code == 0, (overrides, err)
        summary = read_json(out / "summary.json")
        assert summary["status"] == "finished" and summary["steps"] == 3
        assert math.isfinite(summary["final_eval_loss"])
        assert flat_keys(summary["config"])["train.steps"] == 3

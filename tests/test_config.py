"""Config parsing: types, ranges, unknown keys, YAML, and the CLI's exit code 2 with one line."""

from __future__ import annotations

import pytest
import yaml

from iclab.cli import main
from iclab.config import ConfigError, config_to_dict, config_to_yaml, load_config, parse_config
from iclab.rundir import parse_stored_config, read_config


def test_overrides_are_parsed_by_field_type():
    cfg = parse_config(
        {},
        [
            "task.d=7",
            "train.lr=3e-4",
            "task.x_cov_diag=1,2,3,4,5,6,7",
            "task.noise_std=0",
            "train.curriculum.enabled=true",
            "train.grad_clip=none",
            "model.param=sparse",
        ],
    )
    assert cfg.task.d == 7 and isinstance(cfg.task.d, int)
    assert cfg.train.lr == 3e-4
    assert cfg.task.x_cov_diag == (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)
    assert cfg.train.curriculum.enabled is True
    assert cfg.train.grad_clip is None
    assert cfg.model.param == "sparse"


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("task.d=-3", ["task.d", ">= 1", "-3"]),
        ("task.dd=5", ["task.dd", "task has", "noise_std"]),
        ("train.lr=abc", ["train.lr", "number", "abc"]),
        ("train.lr=0", ["train.lr", "> 0", "0"]),
        ("model.param=dense", ["model.param", "full, sparse", "dense"]),
        ("task.d=2.5", ["task.d", "integer", "2.5"]),
        ("train.curriculum.enabled=maybe", ["train.curriculum.enabled", "boolean", "maybe"]),
        ("train.beta1=1", ["train.beta1", "< 1", "1"]),
        ("task.noise_std=nan", ["task.noise_std", "finite", "nan"]),
        ("nope=1", ["nope", "top-level", "seed"]),
        ("task.descriptor=onehot", ["task.descriptor=onehot", "n_means"]),
        ("task.x_cov_diag=1,2", ["task.x_cov_diag", "task.d=5", "2"]),
    ],
)
def test_bad_values_name_the_key(override, fragments):
    with pytest.raises(ConfigError) as err:
        parse_config({}, [override])
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize("override", ["task.d=-3", "task.dd=5", "train.lr=abc"])
def test_cli_exits_2_with_one_line(override, tmp_path, capsys):
    code = main(["train", override, "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and override.split("=")[0] in lines[0]
    assert "Traceback" not in captured.err
    assert not (tmp_path / "run").exists()


def test_yaml_round_trip_and_overrides_win(tmp_path):
    cfg = parse_config({}, ["task.d=3", "task.x_cov_diag=1,2,3", "model.layers=2"])
    path = tmp_path / "c.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg
    assert load_config(path, ["model.layers=4"]).model.layers == 4


def test_yaml_errors_name_the_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task:\n  d: five\n")
    with pytest.raises(ConfigError, match="task.d must be an integer"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_run_dirs_of_iclab_0_1_still_read(tmp_path):
    """iclab 0.1 wrote every family's keys into task/model (a flat union); a run dir from then reads as the
    same config today."""
    cfg = parse_config({}, ["task.name=gp", "task.kernel=relu", "model.name=kernel_attention", "model.layers=2"])
    old = config_to_dict(cfg)
    old["task"] |= {"x_cov_diag": None, "condition_number": None, "rotation": "none", "w_cov": "identity",
                    "w_cov_diag": None, "x_mean_std": 0.0, "n_means": 0, "descriptor": "none",
                    "response": "identity", "random_sign": False}  # fmt: skip
    old["model"] |= {"mlp_hidden": 64, "feature_dim": 16}
    del old["train"]["objective"]  # added later, at its default
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    assert read_config(tmp_path) == cfg
    with pytest.raises(ConfigError, match="task.bogus"):  # only those keys: anything else is still refused
        parse_stored_config({**old, "task": {**old["task"], "bogus": 1}})


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        (["task.name=linear", "task.kernel=exp"], "task.kernel is not a setting of task.name=linear"),
        (["task.d=5", "task.d=6"], "task.d is given twice"),
        (["model.activation=relu"], "model.activation is not a setting of model.name=lsa"),
        (["model.name=transformer"], "model.name must be one of lsa, kernel_attention, mlp_lsa"),
        (["task.x_cov_diag=1,-2,3,4,5"], "task.x_cov_diag must be > 0"),
    ],
)
def test_family_keys_and_repeated_keys_exit_2_naming_the_key(overrides, fragment, tmp_path, capsys):
    assert main(["train", *overrides, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and err.count("\n") == 0 and not (tmp_path / "run").exists()


def test_duplicate_yaml_keys_are_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task:\n  d: 3\n  d: 7\n")
    with pytest.raises(ConfigError, match="'d' is given twice"):
        load_config(path)


def test_config_show_prints_the_resolved_config(capsys):
    assert main(["config", "show", "task.d=3", "model.name=mlp_lsa"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert parse_config(shown) == parse_config({}, ["task.d=3", "model.name=mlp_lsa"])
    assert "activation" not in shown["model"] and shown["model"]["feature_dim"] == 16

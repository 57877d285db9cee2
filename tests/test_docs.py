"""The docs say what the program does: the key table in docs/usage.md is the one the config declares, and
`iclab config show` prints the defaults that table lists, for every registered family."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from iclab.cli import main
from iclab.config import flat_keys, key_rows, key_table
from iclab.registry import MODELS, TASKS

USAGE = Path(__file__).resolve().parents[1] / "docs" / "usage.md"


def docs_table() -> str:
    text = USAGE.read_text()
    start, end = "<!-- config-keys:start -->\n", "<!-- config-keys:end -->"
    return text[text.index(start) + len(start) : text.index(end)]


def test_usage_key_table_is_generated_from_the_config():
    assert docs_table() == key_table(), "docs/usage.md is stale: paste the output of `iclab config keys`"


@pytest.mark.parametrize("task", TASKS.names())
@pytest.mark.parametrize("model", MODELS.names())
def test_config_show_prints_the_documented_defaults(task, model, capsys):
    assert main(["config", "show", f"task.name={task}", f"model.name={model}"]) == 0
    shown = flat_keys(yaml.safe_load(capsys.readouterr().out))
    documented = {}
    for row in key_rows():  # a family's own row comes after the shared one and wins
        family = {"task": task, "model": model}.get(row.key.split(".")[0])
        if not row.families or family in row.families:
            documented[row.key] = row.default
    assert set(shown) == set(documented)
    for key, value in shown.items():
        text = "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        if isinstance(value, float):
            text = f"{value:g}"
        assert text == documented[key] or key.endswith(".name"), key

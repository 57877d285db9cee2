"""The docs say what the program does: the key table in docs/usage.md is the one the config declares, and
`iclab config show` prints the defaults that table lists, for every registered family; docs/python.md and the
README's Python run as written; the recipe outputs usage.md lists are the ones written; the theory commands
run."""

from __future__ import annotations

import re
import shlex
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
        text = "none" if value in (None, []) else str(value).lower() if isinstance(value, bool) else str(value)
        if isinstance(value, float):
            text = f"{value:g}"
        if documented[key] == "auto":  # resolved for the task by the config itself: x is not mean-shifted here
            assert (key, text) == ("model.param", "full"), key
            continue
        assert text == documented[key] or key.endswith(".name"), key


DOCS = Path(__file__).resolve().parents[1] / "docs"
README = Path(__file__).resolve().parents[1] / "README.md"


def code_blocks(path: Path, language: str) -> list[str]:
    """The fenced ```language blocks of a markdown file, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), flags=re.M | re.S)


def test_python_page_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/python.md: every ```python block, in order, in one namespace, from a scratch folder: it trains
    runs/py-demo, loads it, evaluates it beside GD and least squares and writes the two figures it names."""
    blocks = code_blocks(DOCS / "python.md", "python")
    assert len(blocks) >= 6
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python.md", "exec"), namespace)
    printed = capsys.readouterr().out
    assert printed.startswith("finished ")
    assert (tmp_path / "lsa_vs_gd.png").stat().st_size > 10_000 and (tmp_path / "error_curve.png").is_file()
    assert namespace["step"] == 300 and namespace["model"].num_layers == 1
    assert [row[0] for row in namespace["record"].rows] == list(range(1, 41))
    trained, gd, _ = (float(c.mse[-1]) for c in namespace["curves"])
    assert abs(trained / gd - 1) < 0.1  # a trained one-layer LSA is about one optimal GD step
    assert "blocks.0.attn.scores" in printed


def test_readme_python_block_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (block,) = code_blocks(README, "python")
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert len(namespace["curve"].mse) == 20


def test_documented_recipe_outputs_are_what_the_recipes_write():
    """usage.md lists each recipe's files; each recipe's analysis writes exactly the files it names (read from
    the source: the writes of analyse and the figures it saves)."""
    from iclab.experiments.recipe import BUILTIN

    text = (DOCS / "usage.md").read_text()
    documented = dict(re.findall(r"^  - `(\w+)`: writes (.+)$", text, flags=re.M))
    assert set(documented) == set(BUILTIN)
    sources = {name: Path(__import__(f"iclab.experiments.{name}", fromlist=["x"]).__file__).read_text()
               for name in BUILTIN}  # fmt: skip
    for name, files in documented.items():
        named = re.findall(r"`([\w/*.]+)`", files)
        for file in named:
            stem = file.split("/")[-1].replace("*", "")
            assert stem in sources[name] or file.startswith("probes/"), (name, file)
        assert ("figures/" in files) == ('"figures"' in sources[name]), name


def test_theory_doc_commands_run(capsys):
    """Every `iclab theory …` command of docs/theory.md (its shell blocks and the inline `optimum` usage) exits 0;
    the flows shorter and without a figure."""
    lines = "\n".join(code_blocks(DOCS / "theory.md", "bash")).replace("\\\n", " ").splitlines()
    commands = [line.split("#")[0] for line in lines  # compare reads a run dir: tested in test_theory_cli.py
                if line.startswith(".venv/bin/iclab theory") and "theory compare" not in line]  # fmt: skip
    usage = re.findall(r"`(iclab theory optimum --d[^`]+)`", (DOCS / "theory.md").read_text())
    # the usage line with every optional part given (those with a value: "[--noise 0.5]" → "--noise 0.5")
    inline = [re.sub(r"\[([^\]…]+)\]", r"\1", re.sub(r"\[[^\]]*…\]", "", line)) for line in usage]
    assert len(commands) >= 5 and inline
    for command in [*commands, *inline]:
        argv = shlex.split(command.removeprefix(".venv/bin/"))[1:]
        if "flow" in argv:  # shorter: the flow to t = 5, SGD for 20 steps, no figure
            drop = {i + k for i, a in enumerate(argv) if a in ("--out", "--sgd-steps", "--t-max") for k in (0, 1)}
            argv = [a for i, a in enumerate(argv) if i not in drop] + ["--t-max", "5", "--sgd-steps", "20"]
        assert main(argv) == 0, command
        capsys.readouterr()


def test_usage_lists_every_learner_and_evals_defaults():
    """usage.md's eval entry names every learner spec `iclab eval --learners` takes, and the defaults of
    --batch-size and --device that the parser has."""
    from iclab.cli import build_parser
    from iclab.learners.specs import LEARNER_SPECS

    text = (DOCS / "usage.md").read_text()
    entry = text[text.index("- `iclab eval DIR") : text.index("- `iclab check DIR")]
    assert [name for name in LEARNER_SPECS if f"`{name}" not in entry] == []
    verbs = next(a for a in build_parser()._actions if a.dest == "verb").choices
    defaults = {a.dest: a.default for a in verbs["eval"]._actions}
    assert f"prompts (default {defaults['batch_size']})" in entry.replace("\n  ", " ")
    assert f"on `--device` (default {defaults['device']})" in entry


def test_the_demo_time_is_one_figure_everywhere(capsys):
    """README, usage.md and `iclab demo --help` give the demo's time as the same number of seconds."""
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    texts = {"help": capsys.readouterr().out, "README": README.read_text(), "usage": (DOCS / "usage.md").read_text()}
    said = {name: set(re.findall(r"(\d+) s on 2 CPU\s+cores", " ".join(text.split()))) for name, text in texts.items()}
    assert said == {name: {"30"} for name in texts}


def test_the_paper_vs_iclab_table_and_the_recipe_pages_are_generated_from_the_records():
    """docs/results.md's table and each recipe page's claims table are what `python -m iclab.experiments.records`
    writes from docs/results/claims/*.csv (no hand-typed verdicts)."""
    from iclab.experiments.recipe import all_recipes
    from iclab.experiments.records import (
        CLAIMS_END,
        CLAIMS_START,
        TABLE_END,
        TABLE_START,
        claims_table,
        paper_table,
        replace_block,
    )

    text = (DOCS / "results.md").read_text()
    assert replace_block(text, TABLE_START, TABLE_END, paper_table()) == text, "run python -m iclab.experiments.records"
    for recipe in all_recipes():
        page = DOCS / "results" / f"{recipe.name}.md"
        if page.is_file() and CLAIMS_START in page.read_text():
            block = claims_table(recipe.name)
            assert replace_block(page.read_text(), CLAIMS_START, CLAIMS_END, block) == page.read_text(), page

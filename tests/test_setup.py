"""Set-up that tells the truth (issue 15: 12): the Makefile's CPU-only paths are real variables that reach the
commands, the README documents exactly those, and ``make clean`` removes every cache the tests leave."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(tmp_path: Path, *variables: str) -> str:
    """The commands ``make setup`` would run in a fresh checkout (``make -n``: nothing runs)."""
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    done = subprocess.run(["make", "-n", "setup", *variables], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_torch_comes_from_the_given_index_only_when_asked(tmp_path):
    plain = dry_run(tmp_path)
    assert "pip install --quiet torch==2.13.0" in plain and "--index-url" not in plain
    assert re.search(r"python -c \"import torch\" 2>/dev/null \|\|", plain)  # a torch in the venv is kept
    cpu = dry_run(tmp_path, "TORCH_INDEX=https://download.pytorch.org/whl/cpu")
    torch_line = next(line for line in cpu.splitlines() if "torch==" in line)
    assert torch_line.endswith("torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu")
    assert "--index-url" not in next(line for line in cpu.splitlines() if "-e '.[dev]'" in line)  # torch only
    system = dry_run(tmp_path, "VENV_ARGS=--system-site-packages")
    assert "-m venv --system-site-packages .venv" in system


def test_readme_and_usage_name_the_makefile_variables_and_the_cuda_download():
    makefile = (ROOT / "Makefile").read_text()
    variables = set(re.findall(r"^(\w+) \?=", makefile, flags=re.M))
    for doc in (ROOT / "README.md", ROOT / "docs" / "usage.md"):
        text = doc.read_text()
        used = set(re.findall(r"make setup (\w+)=", text))
        assert used == {"TORCH_INDEX", "VENV_ARGS"} and used <= variables, doc
        assert "CUDA build" in text and "5 GB" in text, doc
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"```bash\n(.*?)```", readme, flags=re.S).group(1).splitlines()
    assert [line.split()[:2] for line in first] == [["make", "demo"], ["make", "test"]]


def test_make_clean_removes_every_cache_and_keeps_the_sources(tmp_path):
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    caches = [".venv/bin/python", "runs/demo/config.yaml", ".pytest_cache/v/cache/lastfailed",
              ".hypothesis/examples/x", ".ruff_cache/0.1/y", "src/iclab/__pycache__/cli.cpython-311.pyc",
              "tests/__pycache__/conftest.cpython-311.pyc", "build/lib/x.py", "dist/iclab.whl",
              "src/iclab.egg-info/PKG-INFO"]  # fmt: skip
    kept = ["src/iclab/cli.py", "tests/conftest.py", "docs/usage.md", "README.md"]
    for name in caches + kept:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    done = subprocess.run(["make", "clean"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == sorted(["Makefile", *kept])
    assert not any(p.name == "__pycache__" or p.name.startswith(".") for p in tmp_path.rglob("*"))

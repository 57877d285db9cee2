"""Layers only point down: the module-level imports of iclab form no cycle (so every module imports on its
own, in any order), and a fresh interpreter imports any module first."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
MODULES = {
    ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): path
    for path in sorted((SRC / "iclab").rglob("*.py"))
}


def _imports(module: str, path: Path) -> set[str]:
    """The iclab modules ``module`` imports at load time (top level, not inside functions), each package an
    import passes through included where the importer is not inside it."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.parse(path.read_text()).body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        for name in names:
            if not name.startswith("iclab"):
                continue
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                target = ".".join(parts[:depth])
                inside = module == target or module.startswith(target + ".")
                if target in MODULES and target != module and not inside:
                    found.add(target)
    return found


def test_module_imports_form_no_cycle():
    graph = {module: _imports(module, path) for module, path in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_every_module_imports_first_in_a_fresh_interpreter():
    """One interpreter per module would take minutes (torch loads each time); instead each module is imported
    first in its own subprocess for the modules nothing else in iclab imports (the tops of the graph), and
    the graph test above covers the order below them."""
    graph = {module: _imports(module, path) for module, path in MODULES.items()}
    imported = set().union(*graph.values())
    tops = sorted(set(MODULES) - imported - {"iclab.__main__"})  # __main__ runs the CLI
    code = "import importlib, sys; importlib.import_module(sys.argv[1])"
    processes = {top: subprocess.Popen([sys.executable, "-c", code, top], stderr=subprocess.PIPE, text=True)
                 for top in tops}  # fmt: skip
    failures = {top: p.communicate()[1].strip().splitlines()[-1:] for top, p in processes.items() if p.wait() != 0}
    assert not failures, failures

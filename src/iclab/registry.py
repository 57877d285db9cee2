"""Registries of families: a name → (config class, builder) table that new families join with one entry.

iclab's own families are listed by module path and imported the first time they are looked up, so that
``iclab --help`` imports no family (and no torch); a family defined anywhere else (a plug-in, a test)
calls :meth:`Registry.register` and is found from then on, exactly like a built-in one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from iclab.errors import UserError


@dataclass(frozen=True)
class Entry:
    """One registered family: its name, its config class (a pydantic model, or None) and its builder."""

    name: str
    config: type | None
    build: Callable[..., Any]
    doc: str = ""


class Registry:
    """Families of one kind (``task``, ``model``, …) by name.

    ``builtins`` maps each built-in name to the module that registers it when imported.
    """

    def __init__(self, kind: str, builtins: dict[str, str]) -> None:
        self.kind = kind
        self._builtins = dict(builtins)
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, config: type | None, build: Callable[..., Any], doc: str = "") -> Entry:
        """Add (or replace) the family ``name``; returns its entry. ``build`` is family-specific."""
        entry = Entry(name, config, build, doc)
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove a family added with :meth:`register` (a built-in comes back on its next lookup)."""
        self._entries.pop(name, None)

    def names(self) -> list[str]:
        """Every known name: built-ins first (in their listed order), then registered ones."""
        return list(dict.fromkeys([*self._builtins, *self._entries]))

    def get(self, name: str) -> Entry:
        """The entry of ``name``, importing a built-in family on first use; an unknown name raises
        :class:`UserError` naming the allowed ones."""
        if name not in self._entries and name in self._builtins:
            importlib.import_module(self._builtins[name])
        if name not in self._entries:
            raise UserError(f"{self.kind}.name must be one of {', '.join(self.names())}; got {name!r}")
        return self._entries[name]

    def __iter__(self) -> Iterator[Entry]:
        """Every entry (built-ins imported)."""
        return iter([self.get(name) for name in self.names()])

    def __contains__(self, name: object) -> bool:
        return name in self._builtins or name in self._entries


TASKS = Registry(
    "task",
    {
        "linear": "iclab.tasks.linear",
        "gp": "iclab.tasks.gp",
        "sparse_linear": "iclab.tasks.sparse_linear",
        "relu_net": "iclab.tasks.relu_net",
        "decision_tree": "iclab.tasks.decision_tree",
        "noisy_linear": "iclab.tasks.noisy_linear",
    },
)
MODELS = Registry(
    "model",
    {
        "lsa": "iclab.models.lsa",
        "kernel_attention": "iclab.models.lsa",
        "mlp_lsa": "iclab.models.mlp_lsa",
        "gpt2": "iclab.models.gpt2",
    },
)

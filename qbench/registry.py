"""Registries by name with lazy import and "did you mean" errors.

An entry points at ``"module.path:attribute"``; the module is imported only when the entry is
used, so ``qbench list`` never imports torch or diffusers.
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from qbench.errors import UnknownNameError


@dataclass(frozen=True)
class Entry:
    name: str
    target: str | Callable[..., Any]
    description: str
    meta: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        if callable(self.target):
            return self.target
        module, _, attr = self.target.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
        return obj


def plugin_options(entry: Entry) -> list[dict[str, Any]]:
    """The typed options a method or metric declares (``OPTIONS``), as JSON-able dicts."""
    from qbench.options import describe_options

    if entry.meta.get("system"):
        return []
    return describe_options(getattr(entry.load(), "OPTIONS", ()))


class Registry:
    """Named entries of one kind (``model``, ``method``, ``metric``, ``prompt set``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: str | Callable[..., Any], description: str, **meta: Any) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, target, description, dict(meta))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries.values())

    def names(self) -> list[str]:
        return list(self._entries)

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def get(self, name: str) -> Any:
        """The registered object (imported on first use)."""
        return self.entry(name).load()

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} (valid: {', '.join(sorted(self.names()))})"

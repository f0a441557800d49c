"""Checking a loaded YAML mapping with key paths: the pieces ``r2t compare``'s config uses.

:class:`Checker` collects every problem as ``key.path: what is wrong (valid choices)``;
:class:`ConfigError` carries them (one line when there is one). Type annotations give the
accepted YAML types (:func:`accepted_types`, :func:`literal_choices`).
"""
from __future__ import annotations

import os
from pathlib import Path
from types import UnionType
from typing import Any, Callable, Literal, Union, get_args, get_origin

__all__ = ["REQUIRED", "ConfigError", "Checker", "accepted_types", "literal_choices", "type_name", "positive",
           "resolve_path"]

REQUIRED = object()


class ConfigError(ValueError):
    """An invalid compare configuration; ``problems`` lists every ``path: message``."""

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:  # one line
            super().__init__(f"{source}: {self.problems[0]}")
        else:
            super().__init__(f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


def accepted_types(hint: Any) -> tuple[type, ...]:
    """The YAML value types that fit the annotation ``hint`` (an integer fits a float)."""
    out: list[type] = []
    for t in get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,):
        if get_origin(t) is Literal:
            out += [type(v) for v in get_args(t)]
        else:
            out += [t, int] if t is float else [t]
    return tuple(dict.fromkeys(out))


def literal_choices(hint: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` annotation (None for any other)."""
    return get_args(hint) if get_origin(hint) is Literal else None


def type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false",
             list: "a list", dict: "a mapping", type(None): "null"}
    return " or ".join(names.get(t, t.__name__) for t in types)


class Checker:
    """Collects ``path: message`` problems while reading a nested mapping."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, path: str, msg: str) -> None:
        self.problems.append(f"{path}: {msg}")

    def mapping(self, value: Any, path: str, allowed: list[str]) -> dict[str, Any]:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(path or "(top level)", f"expected a mapping, got {type(value).__name__}")
            return {}
        for key in value:
            if key not in allowed:
                self.fail(f"{path}.{key}" if path else str(key),
                          f"unknown key; valid keys: {', '.join(allowed)}")
        return value

    def get(self, data: dict[str, Any], key: str, path: str, types: tuple[type, ...],
            default: Any = REQUIRED, check: Callable[[Any], str | None] | None = None,
            choices: tuple[Any, ...] | None = None) -> Any:
        full = f"{path}.{key}" if path else key
        if key not in data:
            if default is REQUIRED:
                self.fail(full, "required key is missing")
            return None if default is REQUIRED else default
        value = data[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            self.fail(full, f"expected {type_name(types)}, got {type(value).__name__} {value!r}")
            return None if default is REQUIRED else default
        if choices is not None and value is not None and value not in choices:
            self.fail(full, f"{value!r} is not one of: {', '.join(map(str, choices))}")
        if check is not None and (msg := check(value)):
            self.fail(full, msg)
        return value


def positive(v: Any) -> str | None:
    return None if v >= 1 else f"must be >= 1, got {v}"


def resolve_path(base: Path, value: str) -> Path:
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else (base / p)

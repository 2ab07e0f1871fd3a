"""A strict parser for the few command lines the fast paths answer (:mod:`qwex.main`).

Contract: :func:`parse` returns ``(positionals, options)`` only for a command line that
click parses the same way for the typer command it stands for, and None at the first
doubt: an option the shape does not list (``--help`` included), a flag given a value, a
missing value or one that starts with ``-``, a value its converter refuses, ``--``, a
positional that starts with ``-``, or the wrong number of positionals. On None the typer
application parses from scratch and reports errors its way, so a fast path never answers
a command line differently from the full CLI (tests/test_fast_cli.py runs both).
"""

from __future__ import annotations

TYPE_CHECKING = False  # mypy reads it as true; not `typing`'s: its import costs ~12 ms here
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

__all__ = ["Shape", "parse", "positive_int"]


def positive_int(text: str) -> int:
    """click's ``int`` with ``min=1`` (ValueError otherwise)."""
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


class Shape:
    """What one command accepts on the fast path.

    ``flags``: boolean options by spelling -> name. ``values``: options that take one
    value, by spelling (``--limit``, ``-n``) -> name. ``convert``: name -> converter (str
    if absent). ``multiple``: names that repeat into a list (else the last one wins, as
    in click). ``positionals``: exactly how many arguments. (A plain class: dataclasses
    would import inspect, ~12 ms, on every fast path.)"""

    __slots__ = ("convert", "flags", "multiple", "positionals", "values")

    def __init__(self, *, flags: Mapping[str, str] | None = None, values: Mapping[str, str] | None = None,
                 convert: Mapping[str, Callable[[str], Any]] | None = None,
                 multiple: frozenset[str] = frozenset(), positionals: int = 0) -> None:
        self.flags = flags or {}
        self.values = values or {}
        self.convert = convert or {}
        self.multiple = multiple
        self.positionals = positionals


def _value(shape: Shape, name: str, text: str) -> Any:
    if text.startswith("-"):
        raise ValueError(text)  # click would take it; a fast path does not guess
    return shape.convert.get(name, str)(text)


def parse(args: list[str], shape: Shape) -> tuple[list[str], dict[str, Any]] | None:
    """``args`` (after the command's name) read by ``shape``; None at the first doubt."""
    pos: list[str] = []
    opts: dict[str, Any] = {}
    i = 0
    try:
        while i < len(args):
            a = args[i]
            i += 1
            if not a.startswith("-"):
                pos.append(a)
                continue
            spelling, eq, text = a.partition("=") if a.startswith("--") else (a[:2], "", a[2:])
            if spelling in shape.flags and not eq and not text:
                opts[shape.flags[spelling]] = True
                continue
            name = shape.values.get(spelling)
            if name is None:
                return None
            if not eq and not text:
                if i >= len(args):
                    return None
                text, i = args[i], i + 1
            value = _value(shape, name, text)
            if name in shape.multiple:
                opts.setdefault(name, []).append(value)
            else:
                opts[name] = value
    except ValueError:
        return None
    return (pos, opts) if len(pos) == shape.positionals else None

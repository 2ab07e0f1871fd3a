"""How ``qwex diff`` prints a :class:`~qwexstore.diff.DerivationDiff` for people."""

from __future__ import annotations

import json as jsonlib
import re
from typing import Any

import msgspec

from qwexstore.derivation import BlobInput, DrvInput, Input, TreeInput
from qwexstore.diff import DerivationDiff, InputChange, SideInfo

_COL = 9  # width of the section-name column
_MAX_FILES = 100  # changed paths listed per tree in human output
_LONG_HEX = re.compile(r"\b([0-9a-f]{12})[0-9a-f]{28,}\b")


def _short(text: str | None) -> str:
    """Digests and image ids cut to 12 hex digits; None as (none)."""
    return "(none)" if text is None else _LONG_HEX.sub(r"\1…", text)


def _j(v: Any) -> str:
    return jsonlib.dumps(v, ensure_ascii=False)


def _side(s: SideInfo) -> str:
    key = f"key {s.key}" if s.key else f"not built (derivation {s.derivation})"
    shown = "" if s.arg == s.key else f"{s.arg}  "
    return f"{shown}{key}  ({s.name})"


def _id(s: SideInfo) -> str:
    return _short(s.key) if s.key else f"{_short(s.derivation)} (not built)"


def _argv(a: list[str], b: list[str]) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    rest = ", ".join(_j(x) for x in b[n:])
    return f"{_j(a)} → " + (f"[..., {rest}]" if 0 < n < len(b) else _j(b))


def _input(i: Input | None) -> str:
    if i is None:
        return "(none)"
    if isinstance(i, BlobInput):
        return f"blob {_short(i.digest)}" + (" (executable)" if i.executable else "")
    if isinstance(i, TreeInput):
        return f"tree {_short(i.manifest)}"
    return f"drv {_short(i.drv)}"


def _files(changes: list[Any], indent: str) -> list[str]:
    shown = [f"{indent}{c.status} {c.path}" for c in changes[:_MAX_FILES]]
    more = len(changes) - _MAX_FILES
    return shown + ([f"{indent}... and {more} more (--json lists all)"] if more > 0 else [])


def _plural(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'} differ{'s' if n == 1 else ''}"


def _input_lines(ic: InputChange) -> list[str]:
    """The lines of one input, the first after the section name, the rest indented under it."""
    label = ic.dest + (f" (drv {ic.name})" if ic.name else "")
    x, y = ic.a, ic.b
    if x is None or y is None:
        return [f"{'+' if x is None else '-'} {label}: {_input(y if x is None else x)}"]
    upstream = ic.name is not None or ic.upstream is not None or DrvInput in (type(x), type(y))
    if type(x) is type(y) and not (isinstance(x, BlobInput) and isinstance(y, BlobInput)
                                   and x.executable != y.executable):
        what = _input(x) + " → " + _input(y).split(" ", 1)[1]
    else:
        what = f"{_input(x)} → {_input(y)}"
    if not upstream:
        n = f" ({_plural(len(ic.files), 'file')})" if ic.files is not None else ""
        return [f"{label}: {what}{n}", *_files(ic.files or [], "  ")]
    outs = f", {_plural(len(ic.files), 'output file')}" if ic.files is not None else ""
    both_trees = isinstance(x, TreeInput) and isinstance(y, TreeInput)
    head = "upstream output differs" if both_trees else "upstream differs"
    lines = [f"{label}: {head} ({what}{outs})" + (" ↓" if ic.upstream is not None else "")]
    if ic.note:
        lines.append(f"  ({ic.note})")
    if ic.upstream is not None:
        lines += ["  " + line for line in render(ic.upstream, top=False)]
    return lines


def render(d: DerivationDiff, top: bool = True) -> list[str]:
    """Human lines: a header (the two sides), then one section per differing identity field."""
    if top:
        head = [f"{'a':<{_COL}}{_side(d.a)}", f"{'b':<{_COL}}{_side(d.b)}"]
    else:
        head = [f"{d.b.name:<{_COL - 1}} {_id(d.a)} → {_id(d.b)}"]
    if d.identical:
        return [*head, "identical"]
    c = d.changes
    pad = " " * _COL
    out = head

    def section(name: str, lines: list[str]) -> None:
        for i, line in enumerate(lines):
            out.append((f"{name:<{_COL}}" if i == 0 else pad) + line)

    if c.source is not None:
        s = c.source
        commits = f", commit {s.a_commit[:12]} → {s.b_commit[:12]}" if (
            s.a_commit and s.b_commit and s.a_commit != s.b_commit) else ""
        trees = f"tree {_short(s.a)} → {_short(s.b)}{commits}"
        if s.files is None:
            section("source", [f"{trees} (file list unavailable: {s.note})"])
        else:
            section("source", [f"{_plural(len(s.files), 'file')} ({trees})"])
            out.extend(_files(s.files, "  "))
    if c.command is not None:
        section("command", [_argv(c.command.a, c.command.b)])
    if c.image is not None:
        section("image", [f"{_short(c.image.a)} → {_short(c.image.b)}"])
    if c.vars is not None:
        v = c.vars
        parts = [f"{k}: {_j(x)} → {_j(y)}" for k, (x, y) in v.changed.items()]
        parts += [f"+ {k}={_j(x)}" for k, x in v.added.items()]
        parts += [f"- {k}={_j(x)}" for k, x in v.removed.items()]
        section("vars", [";  ".join(parts)])
    if c.layers is not None:
        ly = c.layers
        if ly.fields:
            section("layers", [f"[{f.index}] {f.kind}.{f.field}: {_short(_j(f.a))} → {_short(_j(f.b))}"
                               for f in ly.fields])
        else:
            as_text = [_short(_j(msgspec.to_builtins(x))) for x in (ly.a, ly.b)]
            section("layers", [f"{as_text[0]} → {as_text[1]}"])
    if c.inputs:
        section("inputs", [line for ic in c.inputs for line in _input_lines(ic)])
    if c.outputs is not None:
        o = c.outputs
        parts = [f"+ {_j(x)}" for x in o.added] + [f"- {_j(x)}" for x in o.removed]
        section("outputs", [";  ".join(parts) or f"{_j(o.a)} → {_j(o.b)}"])
    return out

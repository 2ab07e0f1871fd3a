"""Path selection globs for ``[source] include/exclude`` (spec/derivation.md, "Source").

Patterns match repo-relative POSIX paths from the root: ``*`` and ``?`` stay within one
path segment, ``[...]`` is a character class, a whole-segment ``**`` matches any number
of segments (zero included). A pattern selects a path if it matches the path or any of its
parent directories, so ``src`` and ``src/`` both select everything below ``src``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["Selector"]


def _segment(seg: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(seg):
        c = seg[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = seg.find("]", i + 1)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = seg[i + 1 : j].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _compile(pattern: str) -> str:
    if not pattern or pattern.startswith("/") or "\0" in pattern:
        raise ValueError(f"invalid glob {pattern!r}: must be a non-empty relative path")
    segs = [s for s in pattern.rstrip("/").split("/") if s]
    if any(s in (".", "..") for s in segs):
        raise ValueError(f"invalid glob {pattern!r}: '.' and '..' are not allowed")
    parts: list[str] = []
    for i, s in enumerate(segs):
        if s == "**":
            parts.append("(?:[^/]+/)*" if i < len(segs) - 1 else "(?:[^/]+/)*[^/]+")
        else:
            parts.append(_segment(s) + ("/" if i < len(segs) - 1 else ""))
    # Match the path itself or any parent directory of it.
    return "".join(parts) + "(?:/.*)?"


class Selector:
    """Selects paths: included by any ``include`` (all paths if none) and no ``exclude``."""

    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        self.include = list(include)
        self.exclude = list(exclude)
        self._inc = re.compile("|".join(f"(?:{_compile(p)})" for p in include)) if include else None
        self._exc = re.compile("|".join(f"(?:{_compile(p)})" for p in exclude)) if exclude else None

    def __call__(self, path: str) -> bool:
        if self._inc is not None and not self._inc.fullmatch(path):
            return False
        return not (self._exc is not None and self._exc.fullmatch(path))

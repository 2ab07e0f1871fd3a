"""Path selection globs for ``[source] include/exclude`` (spec/derivation.md, "Source").

Patterns match repo-relative POSIX paths from the root: ``*`` and ``?`` stay within one
path segment, ``[...]`` is a character class, a whole-segment ``**`` matches any number
of segments (zero included). A pattern selects a path if it matches the path or any of its
parent directories, so ``src`` and ``src/`` both select everything below ``src``.

A path is matched as the exact string git or the file system gives: every construct matches
any character but ``/``, newline included (the regexes compile with DOTALL, and nothing
here uses ``$``). A pattern that cannot be compiled (``[]``, ``[[:alpha:]]``, ``[z-a]``)
raises ValueError when the Selector is built, which the .drv parser does for every
``include``, ``exclude`` and ``outputs`` pattern: no bad pattern survives to after a run.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

__all__ = ["Selector"]


def _char_class(body: str, negated: bool) -> str:
    """A ``[...]`` class as a regex class; a negated class never matches ``/``."""
    if not body:
        raise ValueError("empty character class")
    if body.startswith(":") or "[:" in body:
        raise ValueError("POSIX character classes like [[:alpha:]] are not supported")
    esc = "".join("\\" + ch if ch in "\\[]^&~|" else ch for ch in body).replace("--", "-\\-")
    return f"[^/{esc}]" if negated else f"[{esc}]"


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
            neg = seg[i + 1 : i + 2] in ("!", "^")
            j = seg.find("]", i + (2 if neg else 1))
            if j == -1:
                out.append(re.escape(c))
            else:
                out.append(_char_class(seg[i + (2 if neg else 1) : j], neg))
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _compile(pattern: str) -> str:
    if not pattern or pattern.startswith("/") or "\0" in pattern:
        raise ValueError("must be a non-empty relative path")
    segs = [s for s in pattern.rstrip("/").split("/") if s]
    if any(s in (".", "..") for s in segs):
        raise ValueError("'.' and '..' are not allowed")
    parts: list[str] = []
    for i, s in enumerate(segs):
        if s == "**":
            parts.append("(?:[^/]+/)*" if i < len(segs) - 1 else "(?:[^/]+/)*[^/]+")
        else:
            parts.append(_segment(s) + ("/" if i < len(segs) - 1 else ""))
    # Match the path itself or any parent directory of it.
    return "".join(parts) + "(?:/.*)?"


def _compile_all(patterns: Sequence[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    parts = []
    for p in patterns:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                parts.append(re.compile(_compile(p), re.DOTALL).pattern)
        except ValueError as e:
            raise ValueError(f"invalid glob {p!r}: {e}") from None
        except (re.error, FutureWarning):  # Python's wording is not ours to show
            raise ValueError(f"invalid glob {p!r}: bad character class (a range backwards?)") from None
    return re.compile("|".join(f"(?:{x})" for x in parts), re.DOTALL)


class Selector:
    """Selects paths: included by any ``include`` (all paths if none) and no ``exclude``."""

    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        self.include = list(include)
        self.exclude = list(exclude)
        self._inc = _compile_all(include)
        self._exc = _compile_all(exclude)

    def __call__(self, path: str) -> bool:
        if self._inc is not None and not self._inc.fullmatch(path):
            return False
        return not (self._exc is not None and self._exc.fullmatch(path))

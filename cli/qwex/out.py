"""Writing a whole answer to a stream whose reader may be gone (``qwex --help | head -1``),
for the paths that run outside :func:`qwex._ctx.handles_errors` (which does the same)."""

from __future__ import annotations

import os

TYPE_CHECKING = False  # mypy reads it as true; not `typing`'s: its import costs ~12 ms here
if TYPE_CHECKING:
    from typing import TextIO

__all__ = ["say"]


def say(stream: TextIO, text: str) -> None:
    """Write ``text`` and flush; if the reader is gone, end quietly with status 1 (stdout
    pointed at /dev/null first, so the interpreter's own flush at exit is quiet too)."""
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        raise SystemExit(1) from None

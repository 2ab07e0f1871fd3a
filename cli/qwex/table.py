"""Tables for people and for pipes.

On a terminal a table is a rich table (rich is imported then, and only then). Piped (a
script, ``| grep``, ``| less``), it is plain text: a header row and one line per row, each
column left-aligned to its widest cell and separated by two spaces, nothing wrapped, cut
or styled, trailing spaces stripped; ``awk``/``column`` read it as is. Cells are strings;
``styles`` (rich style names by column) apply on a terminal only. A character that is not
printable (a newline, a tab, an escape sequence from a run's name or a colleague's
record) is shown as its Python escape (``\\n``, ``\\x1b``), so one row stays one line
and nothing stored can drive the terminal.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from ._ctx import console, piped

__all__ = ["plain", "print_table", "safe", "width"]


def safe(text: str) -> str:
    """``text`` with every non-printable character as its escape (spaces stay)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def plain(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The piped form, newline-terminated (just the header line when there are no rows)."""
    rows = [[safe(cell) for cell in r] for r in rows]
    widths = [max(width(r[c]) for r in (headers, *rows)) for c in range(len(headers))]
    return "".join(
        "  ".join(cell + " " * (w - width(cell)) for cell, w in zip(r, widths, strict=True)).rstrip() + "\n"
        for r in (headers, *rows)
    )


def width(text: str) -> int:
    """Terminal columns of ``text``: wide (CJK) characters take two, combining marks none."""
    if text.isascii():
        return len(text)
    import unicodedata

    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in text)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]],
                styles: Sequence[Sequence[str]] | None = None) -> None:
    """Print ``rows`` under ``headers`` (``styles[i][c]``: the style of a cell, terminal only)."""
    if piped():
        sys.stdout.write(plain(headers, rows))
        return
    from rich.table import Table
    from rich.text import Text

    t = Table(*headers)
    for i, r in enumerate(rows):
        t.add_row(*(Text(safe(cell), style=styles[i][c] if styles else "") for c, cell in enumerate(r)))
    console().print(t)

"""Option types shared by several commands (typer ``Annotated`` aliases)."""

from __future__ import annotations

from typing import Annotated

import typer

__all__ = ["AllowDirty", "AllowUnpinned", "Json", "Offline", "Runner", "Substituter"]

AllowDirty = Annotated[
    bool, typer.Option("--allow-dirty", help="Snapshot uncommitted changes to tracked files.")
]
AllowUnpinned = Annotated[
    bool, typer.Option("--allow-unpinned", help="Accept an image tag not pinned by digest.")
]
Runner = Annotated[str | None, typer.Option("--runner", help="Placement from a named runner in config.")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
Substituter = Annotated[
    list[str] | None,
    typer.Option("--substituter", help="Ask this remote for a missing result before building it "
                                       "(repeatable; replaces the config's `substituters`)."),
]
Offline = Annotated[
    bool, typer.Option("--offline", help="Ask no substituter; build what is missing here.")
]

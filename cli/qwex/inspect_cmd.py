"""``qwex show``, ``qwex log`` and ``qwex ls``: options and help; the work is in
:mod:`qwex.inspect_view` (shared with the fast paths of :mod:`qwex.main`)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from qwexstore.errors import UserError

from . import inspect_view
from ._ctx import handles_errors, open_index, open_store, run_async
from ._options import Json


def show(
    key: Annotated[str, typer.Argument(help="A key, derivation hash or run id (or a unique prefix).")],
    json: Json = False,
) -> None:
    """Show a run: its derivation, run record and outputs (for a result substituted from
    a remote and not fetched yet: where it lives, and its outputs' listing)."""
    inspect_view.show(key, json)


@handles_errors
def log(
    key: Annotated[str, typer.Argument(help="A key, run id, or unique prefix.")],
    stream: Annotated[str, typer.Option("--stream", help="stdout, stderr or both.")] = "both",
) -> None:
    """Print the stored output of a run (the latest run of a key), failed runs included."""
    if stream not in ("stdout", "stderr", "both"):
        raise UserError(f"--stream must be stdout, stderr or both, not {stream!r}")

    from qwexstore.checkout import resolve_run

    async def go() -> None:
        store = await open_store()
        with open_index() as index:
            run = await resolve_run(store, index, key)
        for name, digest in (("stdout", run.stdout), ("stderr", run.stderr)):
            if digest and stream in (name, "both"):
                out = sys.stdout if name == "stdout" else sys.stderr
                out.flush()
                out.buffer.write(await store.get_blob(digest))
                out.flush()

    run_async(go)


def ls(
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many runs.")] = 50,
    json: Json = False,
) -> None:
    """List recent runs, newest first."""
    inspect_view.ls(limit, json)

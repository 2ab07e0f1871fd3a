"""``qwex index rebuild``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from qwexstore.errors import StoreError

from ._ctx import emit_json, handles_errors, run_async, store_location, workspace

app = typer.Typer(help="Maintain the local index (an accelerator rebuilt from the store).",
                  no_args_is_help=True)


@app.command()
@handles_errors
def rebuild(json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Rebuild the index from the store's records (the stat cache is kept).

    A damaged record is left out and named; everything else is indexed (exit status 1
    then: `qwex verify --repair` removes the damage).
    """
    from qwexstore.reindex import RebuildReport

    def aside(path: str) -> None:
        print(f"qwex: the index was unreadable; moved it to {path}", file=sys.stderr)

    with workspace() as ws:

        async def go() -> RebuildReport:
            return await ws.rebuild_index(on_aside=aside)

        r = run_async(go)
    if json:
        emit_json({"realisations": r.realisations, "runs": r.runs, "derivations": r.derivations,
                   "snapshots": r.snapshots, "skipped": [{"path": p, "reason": why} for p, why in r.skipped]})
    else:
        print(f"indexed {r.realisations} realisations, {r.runs} runs, {r.derivations} derivations, "
              f"{r.snapshots} snapshots from {store_location()}")
    if r.skipped:  # everything else is indexed; say what was not, and how to repair it
        path, why = r.skipped[0]
        more = f" and {len(r.skipped) - 1} more objects" if len(r.skipped) > 1 else ""
        raise StoreError(f"not indexed: {path} ({why}){more}; `qwex verify --repair` removes the damage")

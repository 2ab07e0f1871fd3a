"""``qwex index rebuild``."""

from __future__ import annotations

import os
import sys
import time
from typing import Annotated

import typer

from qwexstore.errors import StoreError

from ._ctx import emit_json, handles_errors, index_path, open_index, open_store, run_async, store_location

app = typer.Typer(help="Maintain the local index (an accelerator rebuilt from the store).",
                  no_args_is_help=True)


@app.command()
@handles_errors
def rebuild(json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Rebuild the index from the store's records (the stat cache is kept).

    A damaged record is left out and named; everything else is indexed (exit status 1
    then: `qwex verify --repair` removes the damage).
    """
    from qwexstore.build import scratch_dir
    from qwexstore.liveroots import GcLock
    from qwexstore.reindex import RebuildReport, rebuild_index

    async def go() -> RebuildReport:
        store = await open_store()
        try:
            index = open_index()
        except StoreError:  # unreadable: keep it aside for inspection, start afresh
            aside = f"{index_path()}.unreadable-{time.time_ns()}"
            os.rename(index_path(), aside)
            print(f"qwex: the index was unreadable; moved it to {aside}", file=sys.stderr)
            index = open_index()
        with index:
            # Shared gc lock: a concurrent gc cannot delete what the rebuild is indexing, so
            # the index never names an object the store lacks.
            async with GcLock(scratch_dir(store), exclusive=False):
                return await rebuild_index(store, index)

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

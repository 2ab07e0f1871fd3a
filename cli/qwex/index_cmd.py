"""``qwex index rebuild``."""

from __future__ import annotations

from typing import Annotated

import typer

from ._ctx import emit_json, handles_errors, open_index, run_async, store_location

app = typer.Typer(help="Maintain the local index (an accelerator rebuilt from the store).",
                  no_args_is_help=True)


@app.command()
@handles_errors
def rebuild(json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Rebuild the index from the store's records (the stat cache is kept)."""
    from qwexstore.reindex import RebuildReport, rebuild_index
    from qwexstore.store import open_store

    async def go() -> RebuildReport:
        store = await open_store(store_location(), create=False)
        with open_index() as index:
            return await rebuild_index(store, index)

    r = run_async(go)
    if json:
        emit_json({"realisations": r.realisations, "runs": r.runs, "derivations": r.derivations,
                   "snapshots": r.snapshots})
    else:
        print(f"indexed {r.realisations} realisations, {r.runs} runs, {r.derivations} derivations, "
              f"{r.snapshots} snapshots from {store_location()}")

"""``qwex agent stage|ingest``: the execution side of a remote run (spec/drivers.md,
"Execution side"). Hidden: the compiled job script calls these on the execution host;
a person never needs to."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Annotated

import typer

from qwexstore.errors import UserError

from ._ctx import handles_errors, run_async

if TYPE_CHECKING:
    from qwexstore.store import Store

app = typer.Typer(help="The execution side of a remote run (called by job scripts).", no_args_is_help=True)

StoreDir = Annotated[str, typer.Option("--store", help="The execution host's store (a directory).")]
Drv = Annotated[str, typer.Option("--drv", help="The derivation record's hash (blake3:...).")]
Workdir = Annotated[str, typer.Option("--workdir", help="The job's work dir.")]


async def _open(store: str, drv: str) -> Store:
    from qwexstore.digest import is_digest
    from qwexstore.store import open_store

    if not is_digest(drv):
        raise UserError(f"--drv {drv!r} is not a derivation hash (blake3:<64 hex digits>)")
    return await open_store(os.path.abspath(store), create=False)


@app.command()
@handles_errors
def stage(store: StoreDir, drv: Drv, workdir: Workdir) -> None:
    """Write the work dir of a derivation from store objects: its selected source, its
    inputs (read-only) and its output directories."""
    from qwexstore import agent

    async def go() -> None:
        await agent.stage(await _open(store, drv), drv, workdir)

    run_async(go)


@app.command()
@handles_errors
def ingest(store: StoreDir, drv: Drv, workdir: Workdir) -> None:
    """Store the outputs of a finished job (moved out of the work dir); print the manifest digest."""
    from qwexstore import agent

    async def go() -> str:
        return await agent.ingest(await _open(store, drv), drv, workdir)

    print(run_async(go))

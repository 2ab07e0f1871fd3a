"""``qwex agent stage|ingest``: the execution side of a remote run (spec/drivers.md,
"Execution side"). Hidden: the compiled job script calls these on the execution host;
a person never needs to."""

from __future__ import annotations

from typing import Annotated

import typer

from . import agent_run

app = typer.Typer(help="The execution side of a remote run (called by job scripts).", no_args_is_help=True)

StoreDir = Annotated[str, typer.Option("--store", help="The execution host's store (a directory).")]
Drv = Annotated[str, typer.Option("--drv", help="The derivation record's hash (blake3:...).")]
Workdir = Annotated[str, typer.Option("--workdir", help="The job's work dir.")]


@app.command()
def stage(store: StoreDir, drv: Drv, workdir: Workdir) -> None:
    """Write the work dir of a derivation from store objects: its selected source, its
    inputs (read-only) and its output directories."""
    agent_run.stage(store, drv, workdir)


@app.command()
def ingest(store: StoreDir, drv: Drv, workdir: Workdir) -> None:
    """Store the outputs of a finished job (moved out of the work dir); print the manifest digest."""
    agent_run.ingest(store, drv, workdir)

"""The work of ``qwex agent stage|ingest``, without the CLI framework: the job script runs
these on the execution host twice per job, so :func:`qwex.main.main` calls them directly
(about 100 ms less each than through typer); :mod:`qwex.agent_cmd` is the typer face."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from qwexstore.errors import UserError

from ._ctx import handles_errors, run_async
from .argv import Shape, parse

if TYPE_CHECKING:
    from qwexstore.store import Store

__all__ = ["fast", "ingest", "stage"]

_AGENT = Shape(values={"--store": "store", "--drv": "drv", "--workdir": "workdir"})


async def _open(store: str, drv: str) -> Store:
    from qwexstore.digest import is_digest
    from qwexstore.store import open_store

    if not is_digest(drv):
        raise UserError(f"--drv {drv!r} is not a derivation hash (blake3:<64 hex digits>)")
    return await open_store(os.path.abspath(store), create=False)


@handles_errors
def stage(store: str, drv: str, workdir: str) -> None:
    """Write the work dir of a derivation from store objects (qwexstore.agent.stage)."""
    from qwexstore import agent

    async def go() -> None:
        await agent.stage(await _open(store, drv), drv, workdir)

    run_async(go)


@handles_errors
def ingest(store: str, drv: str, workdir: str) -> None:
    """Store a finished job's outputs; print the manifest digest (qwexstore.agent.ingest)."""
    from qwexstore import agent

    async def go() -> str:
        return await agent.ingest(await _open(store, drv), drv, workdir)

    print(run_async(go))


def fast(argv: list[str]) -> bool:
    """``agent stage|ingest --store S --drv D --workdir W`` exactly (``--opt=value`` too):
    run it and return True; anything else: False (typer handles it, errors included)."""
    if len(argv) < 2 or argv[0] != "agent" or argv[1] not in ("stage", "ingest"):
        return False
    parsed = parse(argv[2:], _AGENT)
    if parsed is None or len(parsed[1]) != 3:
        return False
    o = parsed[1]
    (stage if argv[1] == "stage" else ingest)(o["store"], o["drv"], o["workdir"])
    return True

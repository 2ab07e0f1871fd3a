"""The work of ``qwex agent stage|ingest``, without the CLI framework: the job script runs
these on the execution host twice per job, so :func:`qwex.main.main` calls them directly
(about 100 ms less each than through typer); :mod:`qwex.agent_cmd` is the typer face."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from qwexstore.errors import UserError

from ._ctx import handles_errors, run_async

if TYPE_CHECKING:
    from qwexstore.store import Store

__all__ = ["fast", "ingest", "stage"]


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
    opts: dict[str, str] = {}
    rest = argv[2:]
    i = 0
    while i < len(rest):
        name, eq, value = rest[i].partition("=")
        if name not in ("--store", "--drv", "--workdir") or name in opts:
            return False
        if not eq:
            if i + 1 >= len(rest):
                return False
            i, value = i + 1, rest[i + 1]
        opts[name] = value
        i += 1
    if len(opts) != 3:
        return False
    (stage if argv[1] == "stage" else ingest)(opts["--store"], opts["--drv"], opts["--workdir"])
    return True

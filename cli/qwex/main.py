"""The ``qwex`` console script: answer a cache hit before the CLI framework is imported.

``qwex build FILE.drv [--json] [--offline] [--substituter NAME]`` whose key is realised
(the common case in scripts, loops and notebooks) is answered here with the same library
calls and the same printer as the full command (:func:`qwex.build_cmd.build`):
:meth:`Workspace.lookup` (plan, resolve ``drv:`` inputs through the index, confirm the
realisation in the store; a substituted key is answered from the index alone), print.
Anything else — other options or commands, a miss, an error of any kind — goes to the
typer application (:mod:`qwex.app`), which starts from scratch and reports errors its
way. The fast path never creates, builds, connects or prints anything before it knows
the answer is a hit, and imports no typer, rich, asyncio or remote-storage client.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def _args(argv: list[str]) -> tuple[str, bool] | None:
    """``build FILE`` with only ``--json``, ``--offline`` and ``--substituter NAME`` (which do
    not change what a hit prints): (FILE, as_json); None for anything else."""
    rest: list[str] = []
    as_json = False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--json":
            as_json = True
        elif a == "--substituter" and i + 1 < len(argv):
            i += 1
        elif not (a == "--offline" or a.startswith("--substituter=")):
            rest.append(a)
        i += 1
    if len(rest) != 2 or rest[0] != "build" or rest[1].startswith("-"):
        return None
    return rest[1], as_json


def _hit(argv: list[str]) -> bool:
    """Print the result of ``build FILE`` if every node is realised (here, or substituted
    earlier): the index and one stat per node, no connection anywhere. True if so."""
    args = _args(argv)
    if args is None:
        return False
    try:
        from qwexstore.location import locate_store
        from qwexstore.workspace import Workspace

        with Workspace(locate_store(None)) as ws:  # no store there: not a hit
            hit = ws.lookup(ws.plan(args[0]))
    except Exception:  # the full command plans again and reports the error properly
        return False
    if hit is None:
        return False
    from ._ctx import handles_errors, note_remote
    from .build_view import print_result

    handles_errors(print_result)(hit, args[1])
    note_remote(hit)
    return True


def main() -> None:
    """Console-script entry point."""
    if _hit(sys.argv[1:]):
        return
    if sys.argv[1:2] == ["agent"]:  # the execution side of a remote job: no CLI framework
        from .agent_run import fast

        if fast(sys.argv[1:]):
            return
    from .app import app

    app(prog_name="qwex")


if __name__ == "__main__":
    main()

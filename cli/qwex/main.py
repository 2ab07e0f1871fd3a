"""The ``qwex`` console script: answer a cache hit before the CLI framework is imported.

``qwex build FILE.drv [--json]`` whose key is realised (the common case in scripts,
loops and notebooks) is answered here with the same library calls and the same printer as
the full command (:func:`qwex.build_cmd.build`): plan, resolve ``drv:`` inputs through the
index, confirm the realisation in the store, print. Anything else — other options or
commands, a miss, an error of any kind — goes to the typer application
(:mod:`qwex.app`), which starts from scratch and reports errors its way. The fast path
never creates, builds or prints anything before it knows the answer is a hit.
"""

from __future__ import annotations

import sys

__all__ = ["main"]


def _hit(argv: list[str]) -> bool:
    """Print the result of ``build FILE [--json]`` if every node is realised; True if so."""
    args = [a for a in argv if a != "--json"]
    if len(args) != 2 or args[0] != "build" or args[1].startswith("-") or len(argv) - len(args) > 1:
        return False
    try:
        from qwexstore.cache import lookup
        from qwexstore.graph import try_resolve
        from qwexstore.index import Index
        from qwexstore.plan import plan_file

        from ._ctx import location

        loc = location()
        if not loc.exists():
            return False
        realised = loc.realised()
        with Index(loc.index_path()) as index:
            plan = plan_file(args[1], index)
            resolved = try_resolve(plan, index, realised)
            hit = lookup(index, resolved.key, realised) if resolved is not None else None
    except Exception:  # the full command plans again and reports the error properly
        return False
    if hit is None:
        return False
    from ._ctx import handles_errors
    from .build_view import print_result

    handles_errors(print_result)(hit, "--json" in argv)
    return True


def main() -> None:
    """Console-script entry point."""
    if _hit(sys.argv[1:]):
        return
    from .app import app

    app(prog_name="qwex")


if __name__ == "__main__":
    main()

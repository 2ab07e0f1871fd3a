"""The ``qwex`` console script: answer what scripts run most before the CLI framework is
imported (typer with click and rich costs ~80 ms of start-up here, 4x Python's own).

Fast paths, each the same library calls and the same printer as its typer command:

- ``build FILE`` whose key is realised, here or substituted earlier (the common case in
  scripts, loops and notebooks): :meth:`Workspace.lookup` (plan, resolve ``drv:`` inputs
  through the index, one stat per node; no connection, no driver), then the result. Its
  options that do not change a hit's answer are accepted: ``--json --offline
  --substituter --runner --jobs --keep-going --detach --allow-dirty --allow-unpinned``.
- ``ls [-n N] [--json]``; ``show KEY [--json]`` on a local store (read without an event
  loop, :mod:`qwex.inspect_view`).
- ``--version``; ``--help``, ``-h`` and no arguments when the reader is not a terminal
  (:mod:`qwex.help`; on a terminal typer's rich help).

The global ``--store S`` may come first. Anything else, a miss, or any doubt about the
command line (:mod:`qwex.argv`) goes to the typer application (:mod:`qwex.app`), which
starts from scratch and reports errors its way. A fast path never creates, builds,
connects or prints anything before it knows it answers. ``QWEX_NO_FAST=1`` turns them off
(tests compare both, byte for byte).
"""

from __future__ import annotations

import os
import sys

from .argv import Shape, parse, positive_int
from .out import say

TYPE_CHECKING = False  # mypy reads it as true; not `typing`'s: its import costs ~12 ms here
if TYPE_CHECKING:
    from typing import Any

__all__ = ["main"]

_BUILD = Shape(
    flags={"--json": "json", "--offline": "offline", "--allow-dirty": "allow_dirty",
           "--allow-unpinned": "allow_unpinned", "--keep-going": "keep_going", "-k": "keep_going",
           "--detach": "detach"},
    values={"--runner": "runner", "--substituter": "substituter", "--jobs": "jobs", "-j": "jobs"},
    convert={"jobs": positive_int},
    multiple=frozenset({"substituter"}),
    positionals=1,
)
_LS = Shape(flags={"--json": "json"}, values={"--limit": "limit", "-n": "limit"}, convert={"limit": int})
_SHOW = Shape(flags={"--json": "json"}, positionals=1)


def _lean_msgspec() -> None:
    """Import msgspec with ``typing_extensions`` hidden, when nothing has imported either.

    msgspec imports typing_extensions, when installed (typer needs it), only to accept its
    variants of typing's features; qwex's formats use typing alone, and on Python >= 3.11
    msgspec then takes the same functions from typing. That saves ~17 ms of a ~40 ms import
    here (typing_extensions pulls in inspect, ast, dis, tokenize). The CLI owns its process;
    the library never does this. typing_extensions imports normally afterwards."""
    if "msgspec" in sys.modules or "typing_extensions" in sys.modules:
        return
    sys.modules["typing_extensions"] = None  # type: ignore[assignment]  # its import fails
    try:
        import msgspec  # noqa: F401
    finally:
        del sys.modules["typing_extensions"]


def _global(argv: list[str]) -> tuple[str | None, list[str]] | None:
    """Leading ``--store S`` / ``--store=S`` (the last wins) and the rest; None if malformed."""
    store = None
    while argv and argv[0].startswith("--store"):
        name, eq, value = argv[0].partition("=")
        if name != "--store" or (not eq and len(argv) < 2):
            return None
        store, argv = (value, argv[1:]) if eq else (argv[1], argv[2:])
        if not store or store.startswith("-"):
            return None
    return store, argv


def _hit(file: str, opts: dict[str, Any]) -> bool:
    """Print ``build FILE``'s result if every node is realised; True if so. Any error: False
    (the full command plans again and reports it properly)."""
    from ._ctx import location

    try:
        from qwexstore.workspace import Workspace

        with Workspace(location(), substituters=opts.get("substituter"),
                       offline=bool(opts.get("offline"))) as ws:  # no store there: not a hit
            plan = ws.plan(file, allow_dirty=bool(opts.get("allow_dirty")),
                           allow_unpinned=bool(opts.get("allow_unpinned")), runner=opts.get("runner"))
            hit = ws.lookup(plan)
    except Exception:
        return False
    if hit is None:
        return False
    from ._ctx import handles_errors, note_remote
    from .build_view import print_result

    handles_errors(print_result)(hit, bool(opts.get("json")))
    note_remote(hit)
    return True


def _fast(argv: list[str]) -> bool:
    """Answer ``argv`` on a fast path; False if it is not one of theirs."""
    if argv == ["--version"]:
        from qwexstore import __version__

        say(sys.stdout, f"qwex {__version__}\n")
        return True
    if argv in ([], ["--help"], ["-h"]):
        if sys.stdout.isatty():  # typer's rich help (it looks at stdout, even for bare `qwex`)
            return False
        from .help import top_level

        say(sys.stdout if argv else sys.stderr, top_level())  # bare `qwex`: on stderr, exit 2
        if not argv:
            raise SystemExit(2)
        return True
    found = _global(argv)
    if found is None or not found[1]:
        return False
    store, (cmd, *args) = found
    shape = {"build": _BUILD, "ls": _LS, "show": _SHOW}.get(cmd)
    parsed = parse(args, shape) if shape is not None else None
    if parsed is None:
        return False
    pos, opts = parsed
    _lean_msgspec()
    from ._ctx import STATE

    STATE.store_location = store
    if cmd == "build":
        return _hit(pos[0], opts)
    from . import inspect_view

    if cmd == "ls":
        inspect_view.ls(opts.get("limit", 50), bool(opts.get("json")))
        return True
    return inspect_view.show(pos[0], bool(opts.get("json")), without_loop=True)


def main() -> None:
    """Console-script entry point."""
    argv = sys.argv[1:]
    if os.environ.get("QWEX_NO_FAST", "") in ("", "0"):
        try:
            if _fast(argv):
                return
        except KeyboardInterrupt:  # as every command reports it (qwex._ctx.handles_errors)
            print("qwex: interrupted", file=sys.stderr)
            raise SystemExit(130) from None
    if argv[:1] == ["agent"]:  # the execution side of a remote job: no CLI framework
        _lean_msgspec()
        from .agent_run import fast

        if fast(argv):
            return
    from .app import app

    app(prog_name="qwex")


if __name__ == "__main__":
    main()

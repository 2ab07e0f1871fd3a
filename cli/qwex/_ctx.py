"""Shared CLI plumbing: the invocation's workspace, printing, and error handling.

Which store, where its index lives and whether a command may create it are the library's
rules (:mod:`qwexstore.location`, :class:`qwexstore.workspace.Workspace`); this module only
carries the global ``--store`` option to them."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

from qwexstore.digest import hex_of
from qwexstore.errors import BuildCancelled, QwexError
from qwexstore.index import Index
from qwexstore.location import StoreLocation, locate_store

if TYPE_CHECKING:
    from rich.console import Console

    from qwexstore.cache import BuildResult
    from qwexstore.store import Store
    from qwexstore.workspace import Workspace

F = TypeVar("F", bound=Callable[..., Any])


class State:
    """Per-invocation settings from the global options."""

    store_location: str | None = None
    located: StoreLocation | None = None  # found once per invocation (reads config files)
    stopped_by: int | None = None  # SIGTERM or SIGHUP received during run_async


STATE = State()


def location() -> StoreLocation:
    """The store this invocation uses (``--store`` > ``$QWEX_STORE`` > config > default)."""
    if STATE.located is None:
        STATE.located = locate_store(STATE.store_location)
    return STATE.located


def store_location() -> str:
    """The store's path or URL."""
    return location().url


def index_path() -> str:
    """Where the current store's local index lives."""
    return location().index_path()


def _told(msg: str) -> None:
    print(f"qwex: {msg}", file=sys.stderr)


def workspace(
    *, create: bool = False, substituters: list[str] | None = None, offline: bool = False
) -> Workspace:
    """The workspace of this invocation's store (:class:`Workspace` rules: without
    ``create``, "no qwex store at X" and nothing created). A store created at a chosen
    location is announced on stderr (a typo in ``--store`` should not go unnoticed)."""
    from qwexstore.workspace import Workspace

    return Workspace(location(), create=create, substituters=substituters or None, offline=offline,
                     on_create=_told)


def open_index(*, create_store: bool = False) -> Index:
    """The local index of the current store (StoreError if it is unreadable); the
    :class:`Workspace` rules for a missing store."""
    if not create_store:  # the rule without the Workspace module (`ls`, `show`: fast paths)
        loc = location()
        loc.require()
        return Index(loc.index_path())
    return workspace(create=True).index


def note_remote(r: BuildResult) -> None:
    """Say on stderr where a substituted result lives (its outputs are fetched on need)."""
    if r.remote is not None:
        print(f"qwex: substituted from {r.remote}; its outputs are fetched when needed "
              f"(qwex checkout {hex_of(r.key)[:12]})", file=sys.stderr)


async def open_store(*, create: bool = False) -> Store:
    """Open the current store; see :meth:`StoreLocation.open`. A store created at a chosen
    location is announced on stderr (a typo in ``--store`` should not go unnoticed)."""

    return await location().open(create=create, on_create=_told)


def fail(err: QwexError) -> None:
    """Print one line and exit with the error's status."""
    print(f"qwex: error: {err}", file=sys.stderr)
    raise SystemExit(err.exit_code)


def handles_errors(fn: F) -> F:
    """Turn QwexError (and Ctrl-C) into one line on stderr and the documented exit status."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
            sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
            return result
        except BuildCancelled as e:  # exit 128+N for the signal that stopped us (130: Ctrl-C)
            print(f"qwex: error: {e}", file=sys.stderr)
            raise SystemExit(_interrupted_status()) from None
        except QwexError as e:
            fail(e)
        except KeyboardInterrupt:
            print("qwex: interrupted" if STATE.stopped_by is None else "qwex: terminated", file=sys.stderr)
            raise SystemExit(_interrupted_status()) from None
        except BrokenPipeError:  # our reader went away (`| head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(1) from None
        except Exception as e:
            if os.environ.get("QWEX_DEBUG"):
                raise
            if isinstance(e, OSError) and e.errno in _ENVIRONMENT_ERRNOS:
                # The machine refused a write (a read-only or full disk, no access): its
                # error, not qwex's, in one line.
                where = f": {e.filename}" if e.filename else ""
                print(f"qwex: error: {e.strerror or e}{where}", file=sys.stderr)
                raise SystemExit(1) from None
            # A bug: still one line, with the traceback on request.
            print(f"qwex: internal error: {type(e).__name__}: {e} (QWEX_DEBUG=1 shows the traceback)",
                  file=sys.stderr)
            raise SystemExit(70) from None

    return wrapper  # type: ignore[return-value]


#: Errors of the machine, not of qwex: reported in one line, exit 1, not as internal errors.
_ENVIRONMENT_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT})


def _interrupted_status() -> int:
    """128 + the signal that stopped qwex: 130 (SIGINT), 143 (SIGTERM), 129 (SIGHUP)."""
    return 128 + (STATE.stopped_by or 2)  # SIGINT is 2 on every POSIX system


def run_async(make: Callable[[], Any]) -> Any:
    """Run ``make()``'s coroutine with one ``asyncio.run`` (imported only when needed).

    SIGTERM and SIGHUP are handled like Ctrl-C (spec/runs.md, "Cancellation"): the main task
    is cancelled, so running jobs are stopped and recorded as cancelled, and the signal is
    remembered for the exit status (``handles_errors``). A second one cancels again, which
    kills the jobs at once, as a second Ctrl-C does.

    A second Ctrl-C makes asyncio cancel every task again while shutting down; the runs
    are still stopped and recorded, and the errors the tasks end with then (cancellations,
    our own errors, connections a stopped server dropped) are expected, not news: only
    anything else reaches asyncio's report.
    """
    import asyncio
    import signal

    def quiet(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # ConnectionError too: when a server goes away mid-request, the HTTP client's own
        # body-writer task fails as well, and is never awaited by anyone; the request that
        # owns it has already been retried and reported (one line) by the storage.
        expected = (asyncio.CancelledError, QwexError, KeyboardInterrupt, ConnectionError)
        if not isinstance(context.get("exception"), expected):
            loop.default_exception_handler(context)

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(quiet)
        task = asyncio.current_task()

        def stop(sig: int) -> None:
            STATE.stopped_by = sig
            if task is not None:
                task.cancel()

        for sig in (signal.SIGTERM, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not main thread
                loop.add_signal_handler(sig, stop, sig)
        return await make()

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if STATE.stopped_by is None:
            raise
        raise KeyboardInterrupt from None  # stopped outside a build: "terminated", 128+N


#: Wide enough that nothing piped is ever wrapped or cut (rich sizes tables to content).
UNLIMITED = 1 << 20


def piped() -> bool:
    """stdout is not a terminal: print whole lines, never wrapped or cut to a width."""
    return not sys.stdout.isatty()


def console() -> Console:
    """A rich console for stdout: the terminal's width on a terminal; piped, no limit."""
    from rich.console import Console

    return Console(width=UNLIMITED, soft_wrap=True) if piped() else Console()


def emit_json(obj: Any) -> None:
    """Machine output: one JSON document on stdout."""
    import json

    print(json.dumps(obj, indent=2, sort_keys=True))


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def human_duration(ns: int) -> str:
    s = ns / 1e9
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(s), 60)
    return f"{m}m{s:02d}s" if m < 60 else f"{m // 60}h{m % 60:02d}m"

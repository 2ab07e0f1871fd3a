"""Shared CLI plumbing: which store and index, printing, and error handling."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from qwexstore.config import qwex_home
from qwexstore.digest import hash_bytes, hex_of
from qwexstore.errors import QwexError
from qwexstore.index import Index

F = TypeVar("F", bound=Callable[..., Any])


class State:
    """Per-invocation settings from the global options."""

    store_location: str | None = None


STATE = State()


def store_location() -> str:
    """``--store``, else ``$QWEX_STORE``, else ``$QWEX_HOME/store``."""
    loc = STATE.store_location or os.environ.get("QWEX_STORE") or os.path.join(qwex_home(), "store")
    return loc if "://" in loc else os.path.abspath(os.path.expanduser(loc))


def index_path() -> str:
    """Where the current store's local index lives: ``$QWEX_HOME/index/<16 hex of the location>``."""
    tag = hex_of(hash_bytes(store_location().encode()))[:16]
    return os.path.join(qwex_home(), "index", tag)


def open_index() -> Index:
    """The local index of the current store (StoreError if it is unreadable)."""
    return Index(index_path())


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
        except QwexError as e:
            fail(e)
        except KeyboardInterrupt:
            print("qwex: interrupted", file=sys.stderr)
            raise SystemExit(130) from None
        except BrokenPipeError:  # our reader went away (`| head`): stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(1) from None
        except Exception as e:  # a bug: still one line, with the traceback on request
            if os.environ.get("QWEX_DEBUG"):
                raise
            print(f"qwex: internal error: {type(e).__name__}: {e} (QWEX_DEBUG=1 shows the traceback)",
                  file=sys.stderr)
            raise SystemExit(70) from None

    return wrapper  # type: ignore[return-value]


def run_async(make: Callable[[], Any]) -> Any:
    """Run ``make()``'s coroutine with one ``asyncio.run`` (imported only when needed).

    A second Ctrl-C makes asyncio cancel every task again while shutting down; the runs
    are still stopped and recorded, and the errors the tasks end with then (cancellations,
    our own errors) are expected, not news: only anything else reaches asyncio's report.
    """
    import asyncio

    def quiet(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not isinstance(context.get("exception"), (asyncio.CancelledError, QwexError, KeyboardInterrupt)):
            loop.default_exception_handler(context)

    async def main() -> Any:
        asyncio.get_running_loop().set_exception_handler(quiet)
        return await make()

    return asyncio.run(main())


def emit_json(obj: Any) -> None:
    """Machine output: one JSON document on stdout."""
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

"""Running a coroutine that never suspends, without an event loop.

The local store's reads (:class:`qwexstore.storage_local.LocalStorage` objects,
:class:`qwexstore.store.Store` records, :func:`qwexstore.checkout.resolve_run`) are async
for the sake of remote stores but do their file I/O inline: on a local store they never
await anything that suspends. :func:`run_now` drives such a coroutine to its end
synchronously, so ``qwex show`` reads a local store without importing asyncio (~60 ms)
or starting a loop.

Contract: the coroutine is stepped with ``send(None)`` until it returns; its value is
returned and any exception it raises propagates unchanged. If it ever suspends (yields to
an event loop: a thread, a socket, a sleep), it is closed at once (its ``finally`` blocks
run; nothing it started is awaited) and :class:`WouldSuspend` is raised: the caller then
redoes the work under an event loop (``asyncio.run``). A coroutine that suspended may have
done part of its work, so only give it reads (or idempotent writes).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["WouldSuspend", "run_now"]

T = TypeVar("T")


class WouldSuspend(Exception):
    """The coroutine given to :func:`run_now` suspended; it has been closed. Internal:
    not a :class:`~qwexstore.errors.QwexError`, callers fall back to an event loop."""


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """``coro``'s result, computed without an event loop; see the module docstring."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise WouldSuspend(f"{getattr(coro, '__qualname__', coro)!r} suspended; it needs an event loop")

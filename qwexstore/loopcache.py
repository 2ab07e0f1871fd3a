"""One connection per event loop, for the network storage backends (S3, SFTP).

A storage object may be used from several ``asyncio.run`` calls (the CLI makes one per
command; a library user may make many), and a connection belongs to the loop that made it.
:class:`PerLoop` keeps one per running loop: made on first use (concurrent callers share
the attempt; a failed attempt is not kept, so the next call tries again), closed by
:meth:`PerLoop.close`, or, at the latest, when the loop finalizes its async generators
(``asyncio.run``'s end), so a forgotten ``close()`` leaks nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["PerLoop"]

T = TypeVar("T")


class PerLoop(Generic[T]):
    """This loop's connection; ``shutdown(conn)`` closes one."""

    def __init__(self, shutdown: Callable[[T], Awaitable[None]]) -> None:
        self._shutdown = shutdown
        self._futs: dict[asyncio.AbstractEventLoop, asyncio.Future[T]] = {}
        self._keepers: dict[asyncio.AbstractEventLoop, AsyncIterator[None]] = {}

    async def get(self, connect: Callable[[], Awaitable[T]]) -> T:
        """This loop's connection, made by ``connect()`` on first use."""
        loop = asyncio.get_running_loop()
        for old in [lp for lp in self._futs if lp.is_closed()]:
            del self._futs[old]
            self._keepers.pop(old, None)
        fut = self._futs.get(loop)
        if fut is None:
            fut = self._futs[loop] = loop.create_future()
            try:
                conn = await connect()
            except BaseException as e:
                del self._futs[loop]
                fut.set_exception(e)
                fut.exception()  # retrieved: later waiters make their own attempt
                raise
            fut.set_result(conn)
            keeper = _keeper(self._futs, loop, conn, self._shutdown)
            await keeper.__anext__()  # registers with the loop's async-generator finalizer
            self._keepers[loop] = keeper
        return await asyncio.shield(fut)

    def current(self) -> T | None:
        """This loop's connection if one is made, else None (never connects)."""
        fut = self._futs.get(asyncio.get_running_loop())
        if fut is None or not fut.done() or fut.cancelled() or fut.exception() is not None:
            return None
        return fut.result()

    async def close(self) -> None:
        """Close this loop's connection, if any; the next :meth:`get` makes a new one."""
        loop = asyncio.get_running_loop()
        conn = self.current()
        self._futs.pop(loop, None)
        keeper = self._keepers.pop(loop, None)
        if keeper is not None:
            await keeper.aclose()  # type: ignore[attr-defined]
        elif conn is not None:
            await self._shutdown(conn)


async def _keeper(
    futs: dict[asyncio.AbstractEventLoop, asyncio.Future[T]],
    loop: asyncio.AbstractEventLoop,
    conn: T,
    shutdown: Callable[[T], Awaitable[None]],
) -> AsyncIterator[None]:
    """Closes ``conn`` when finalized. A free function, holding no reference back to its
    PerLoop: a storage dropped without ``close()`` frees it at once (no reference cycle),
    and the loop's async-generator finalizer closes the connection while the loop runs."""
    try:
        yield
    finally:
        futs.pop(loop, None)
        await shutdown(conn)

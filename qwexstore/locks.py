"""One execution per key on one machine: an exclusive ``flock`` per key (spec/locks.md).

The lock file is ``<tmp>/locks/<key hex>``; it holds the owner's pid and host for the
message other builders print while they wait. A lock dies with its process (the kernel
drops flocks on exit, kill -9 included), so a dead owner never blocks anyone. A later
format extends this to shared remote stores with a lease object written by conditional
create; :class:`KeyLock` is the local implementation of that interface.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Callable

from .digest import hex_of

__all__ = ["KeyLock"]

#: Seconds between attempts while another process holds the key.
POLL_S = 0.1


class KeyLock:
    """Exclusive lock on a key, used as ``async with``. ``on_wait(owner)`` is called once if
    it must wait."""

    def __init__(self, tmpdir: str, key: str, on_wait: Callable[[str], None] | None = None) -> None:
        self.path = os.path.join(tmpdir, "locks", hex_of(key))
        self.on_wait = on_wait
        self._fd: int | None = None

    async def __aenter__(self) -> KeyLock:
        """Acquire, polling so that the wait stays cancellable (Ctrl-C while waiting)."""
        import asyncio

        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        told = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not told and self.on_wait is not None:
                        owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                        self.on_wait(owner)
                    told = True
                    await asyncio.sleep(POLL_S)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Release the lock (the kernel also drops it if this process dies)."""
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

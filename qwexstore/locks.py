"""One execution per key on one machine: an exclusive ``flock`` per key (spec/locks.md).

The lock file is ``<tmp>/locks/<key hex>``; it holds the owner's pid and host for the
message other builders print while they wait. A lock dies with its process (the kernel
drops flocks on exit, kill -9 included), so a dead owner never blocks anyone.
:class:`KeyLock` is the lock of :class:`~qwexstore.coordinator.FlockCoordinator`; the
lease coordinator for shared stores (:mod:`.leases`) takes it first, too.
"""

from __future__ import annotations

import fcntl
import getpass
import os
import socket
from collections.abc import Callable

from .digest import hex_of

__all__ = ["KeyLock", "current_user", "flock_wait", "owner_text"]

#: Seconds between attempts while another process holds the key.
POLL_S = 0.1


def owner_text(pid: int, host: str, user: str) -> str:
    """How a holder is named in messages: ``pid 123 on gpu01 (alice)``."""
    return f"pid {pid} on {host} ({user})" if user else f"pid {pid} on {host}"


def current_user() -> str:
    """The login name of this process, or ``""`` when the system cannot tell."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


async def flock_wait(path: str, mode: int, on_busy: Callable[[int], None] | None = None) -> int:
    """Open (creating) ``path`` and take ``flock(mode)`` on it; return the descriptor.

    Polls every POLL_S rather than blocking, so the wait stays cancellable; ``on_busy(fd)``
    is called once, the first time the lock is found held.
    """
    import asyncio

    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    told = False
    try:
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if not told and on_busy is not None:
                    on_busy(fd)
                told = True
                await asyncio.sleep(POLL_S)
    except BaseException:
        os.close(fd)
        raise


class KeyLock:
    """Exclusive lock on a key, used as ``async with``. ``on_wait(owner)`` is called once if
    it must wait."""

    def __init__(self, tmpdir: str, key: str, on_wait: Callable[[str], None] | None = None) -> None:
        self.path = os.path.join(tmpdir, "locks", hex_of(key))
        self.on_wait = on_wait
        self._fd: int | None = None

    async def __aenter__(self) -> KeyLock:
        """Acquire, polling so that the wait stays cancellable (Ctrl-C while waiting)."""

        def busy(fd: int) -> None:
            if self.on_wait is not None:
                self.on_wait(os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process")

        fd = await flock_wait(self.path, fcntl.LOCK_EX, busy)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{owner_text(os.getpid(), socket.gethostname(), current_user())}\n".encode(), 0)
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

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
from types import TracebackType

from .digest import hex_of

__all__ = ["KeyLock"]


class KeyLock:
    """Blocking exclusive lock on a key. ``on_wait(owner)`` is called once if it must wait."""

    def __init__(self, tmpdir: str, key: str, on_wait: Callable[[str], None] | None = None) -> None:
        self.path = os.path.join(tmpdir, "locks", hex_of(key))
        self.on_wait = on_wait
        self._fd: int | None = None

    def __enter__(self) -> KeyLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if self.on_wait is not None:
                owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                self.on_wait(owner)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

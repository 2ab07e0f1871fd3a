"""The gc lock and live roots: how a running build keeps ``qwex gc`` away from what it has
written but not yet made reachable (spec/gc.md, "Running builds").

Files in the scratch directory (``<store>/tmp``, or ``$QWEX_HOME/tmp`` for a remote store)::

    gc.lock            flock(2): SHARED by a writer for each write phase, EXCLUSIVE by gc
    roots/<run-id>     one per running build: created under the shared lock, then kept
                       under an exclusive flock for the build's whole life; its content
                       (a :class:`LiveRoot`) names the derivation record the build runs

A flock dies with its process (``kill -9`` included), so gc tells a live build from a dead
one by trying the lock of its roots file; it never trusts pids, hosts or ages. Neither
file is inherited by the job (Python opens descriptors close-on-exec). ``gc.lock`` is never
deleted, for the reason lock files are never deleted (spec/locks.md).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable
from typing import Final

import msgspec

from . import canonical
from .digest import Digest
from .errors import StoreError
from .locks import flock_wait

__all__ = ["GcLock", "LiveRoot", "LiveRootFile", "RootsScan", "scan_roots"]

GC_LOCK: Final = "gc.lock"
ROOTS: Final = "roots"


class LiveRoot(msgspec.Struct, forbid_unknown_fields=True, tag="qwex.liveroot/1", tag_field="format"):
    """What a running build asks gc to keep: the closure of ``drv`` and ``runs/<run_id>/``
    in the scratch directory. ``pid``, ``host`` and ``started_ns`` are for messages only."""

    run_id: str
    drv: Digest
    pid: int
    host: str
    started_ns: int

    @classmethod
    def now(cls, run_id: str, drv: str) -> LiveRoot:
        return cls(run_id, drv, os.getpid(), socket.gethostname(), time.time_ns())


class GcLock:
    """``async with GcLock(scratch, exclusive=...)``: the gc lock in one mode.

    Writers take it shared for each write phase (never while a job runs); gc takes it
    exclusive from reading the roots to its last deletion. Acquisition polls, so a wait
    stays cancellable; ``on_wait()`` is called once if the caller has to wait.
    """

    def __init__(self, scratch: str, *, exclusive: bool, on_wait: Callable[[], None] | None = None) -> None:
        self.path = os.path.join(scratch, GC_LOCK)
        self.mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        self.on_wait = on_wait
        self._fd: int | None = None

    async def __aenter__(self) -> GcLock:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    async def acquire(self) -> None:
        """Take the lock (once; the caller MUST :meth:`release` it, e.g. in ``finally``)."""
        assert self._fd is None, "GcLock is not reentrant"
        on_wait = self.on_wait
        self._fd = await flock_wait(self.path, self.mode, None if on_wait is None else lambda _fd: on_wait())

    def release(self) -> None:
        """Drop the lock if held (idempotent). Closing the only descriptor releases it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LiveRootFile:
    """The roots file of one running build. Create it while holding the shared
    :class:`GcLock`; :meth:`release` it after the build's work dir is gone."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def create(cls, scratch: str, root: LiveRoot) -> LiveRootFile:
        """Create ``roots/<run_id>`` exclusively locked, with ``root`` written and flushed.

        The content is complete before the caller releases the shared gc lock, so a gc
        that holds the lock exclusively never reads a half-written file.
        """
        path = os.path.join(scratch, ROOTS, root.run_id)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, canonical.encode(root))
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return cls(path, fd)

    def release(self) -> None:
        """Remove the file, then drop the lock. Idempotent."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None


class RootsScan(msgspec.Struct):
    """Roots files found by :func:`scan_roots`: builds alive, and run ids of dead ones."""

    live: list[LiveRoot]
    dead: list[str]


def scan_roots(scratch: str) -> RootsScan:
    """Classify every roots file by trying its lock. The caller MUST hold the exclusive
    :class:`GcLock` (so no roots file is being created or half-written).

    A held lock is a live build; its file must decode (StoreError otherwise: gc cannot
    know what the build needs, so it must not sweep). A free lock is a dead build.
    """
    base = os.path.join(scratch, ROOTS)
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return RootsScan([], [])
    live: list[LiveRoot] = []
    dead: list[str] = []
    for name in names:
        path = os.path.join(base, name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:  # the build ended while we listed
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                data = os.pread(fd, 1 << 16, 0)
                try:
                    live.append(canonical.decode(data, LiveRoot))
                except (msgspec.ValidationError, msgspec.DecodeError) as e:
                    raise StoreError(f"unreadable live roots file {path} of a running build: {e}") from None
            else:
                dead.append(name)
        finally:
            os.close(fd)
    return RootsScan(live, dead)

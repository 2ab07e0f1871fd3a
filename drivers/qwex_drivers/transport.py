"""Transports: how the stack driver reaches the execution host (spec/drivers.md,
"Transports"). A transport runs a POSIX sh script there and reads files back; it knows
nothing of jobs. ``local`` is this machine; ``ssh`` is :mod:`qwex_drivers.transport_ssh`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from typing import NamedTuple, Protocol

__all__ = ["Completed", "LocalTransport", "Transport"]


class Completed(NamedTuple):
    rc: int
    stdout: bytes
    stderr: bytes


class Transport(Protocol):
    """Runs scripts on, and reads files from, the execution host. ``run`` never raises for
    a non-zero status; a failure to reach the host is a DriverError (transient or
    permanent) with one line naming the fix."""

    kind: str

    async def run(self, script: str, *, input: bytes | None = None) -> Completed: ...

    async def read(self, path: str, offset: int = 0, limit: int = 1 << 20) -> bytes | None: ...

    async def home(self) -> str: ...

    async def close(self) -> None: ...


class LocalTransport:
    """This machine: ``sh -c SCRIPT`` with this process's environment. Reads are plain
    file reads (small, local: done inline)."""

    kind = "local"

    async def run(self, script: str, *, input: bytes | None = None) -> Completed:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", script,
            stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate(input)
        assert proc.returncode is not None
        return Completed(proc.returncode, out, err)

    async def read(self, path: str, offset: int = 0, limit: int = 1 << 20) -> bytes | None:
        """None unless ``path`` is a regular file (a job may replace its log by a link to
        /dev/zero or a FIFO: never followed, never read)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO):
                return None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return os.pread(fd, limit, offset)
        finally:
            os.close(fd)

    async def home(self) -> str:
        return os.path.expanduser("~")

    async def close(self) -> None:
        return None

"""Compare-and-swap refs over SFTP, which has none (spec/storage.md, "SFTP refs").

A ref ``P`` is the directory ``P.v/`` holding write-once generations named ``%016d``. The
highest generation is the ref's value: first byte ``+`` then the value, or ``-`` (deleted).
The etag is the generation number.

A write that expects generation ``g`` (or, for a create, a missing or deleted ref at
generation ``g``) links a fully written temp file to ``g+1`` with ``hardlink@openssh.com``,
which never replaces: of two writers expecting ``g``, exactly one links ``g+1``. Old
generations are pruned below current-1, so a stalled writer could later link a pruned
number; it therefore lists the directory after linking and, if a higher generation exists,
removes its file and reports that it lost (the higher generation stays current, because
pruning never removes the two highest).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import asyncssh

from .storage_types import Versioned

if TYPE_CHECKING:
    from .storage_sftp import SftpStorage

__all__ = ["ref_get", "ref_write"]

_LIVE, _DELETED = b"+", b"-"
_READ_TRIES = 20


def _dir(st: SftpStorage, path: str) -> str:
    return st._abs(path) + ".v"


async def _generations(s: Any, d: str) -> list[int]:
    try:
        names = await s.listdir(d)
    except asyncssh.SFTPNoSuchFile:
        return []
    return sorted(int(n) for n in names if n.isdigit())


async def _current(st: SftpStorage, s: Any, path: str) -> tuple[int, bytes] | None:
    """(generation, stored bytes) of the highest generation, or None if there is none."""
    d = _dir(st, path)
    for _ in range(_READ_TRIES):
        gens = await _generations(s, d)
        if not gens:
            return None
        try:
            async with s.open(f"{d}/{gens[-1]:016d}", "rb") as f:
                return gens[-1], bytes(await f.read())
        except asyncssh.SFTPNoSuchFile:
            continue  # pruned or withdrawn while we looked: look again
    raise asyncssh.SFTPFailure(f"ref {path} changed {_READ_TRIES} times while being read")


async def ref_get(st: SftpStorage, path: str) -> Versioned | None:
    async def op(s: Any, _: int) -> Versioned | None:
        cur = await _current(st, s, path)
        if cur is None or not cur[1].startswith(_LIVE):
            return None
        return Versioned(data=cur[1][1:], etag=str(cur[0]))

    return await st._call("ref_get", path, op)


async def ref_write(
    st: SftpStorage, path: str, body: bytes, *, expect: str | None, create: bool
) -> str | None:
    """Write generation current+1 holding ``body`` if the precondition holds; its etag, or None."""
    d = _dir(st, path)

    async def op(s: Any, attempt: int) -> str | None:
        cur = await _current(st, s, path)
        live = cur is not None and cur[1].startswith(_LIVE)
        if (
            attempt > 0
            and cur is not None
            and cur[1] == body
            and (body != _DELETED or str(cur[0] - 1) == expect)
        ):
            return str(cur[0])  # an earlier attempt took effect; its answer was lost
        if create and live:
            return None
        if not create and (not live or cur is None or str(cur[0]) != expect):
            return None
        n = cur[0] + 1 if cur is not None else 0

        async def write(f: Any) -> None:
            await f.write(body)

        if not await st._write_link(s, f"{d}/{n:016d}", write):
            return None
        gens = await _generations(s, d)
        if gens and gens[-1] > n:  # we were stalled past pruning: a newer write stands
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await s.remove(f"{d}/{n:016d}")
            return None
        for g in gens:
            if g < n - 1:
                with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                    await s.remove(f"{d}/{g:016d}")
        return str(n)

    return await st._call("ref_write", path, op)

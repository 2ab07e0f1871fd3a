"""Batched existence checks for the network backends (spec/storage.md, "exists").

Three levels, cheapest first:

1. Many asked paths under one top-level directory (``blobs/`` during a push): if the
   backend can list a whole subtree (``list_tree``, S3's ListObjectsV2 without a
   delimiter), one listing answers them all, one request per page of 1,000 names. A
   subtree that turns out to hold far more names than were asked about (past
   ``TREE_RATIO`` per asked path, so the listing costs at most one request per 100 asked
   paths) is abandoned, and its paths go to level 2.
2. Many paths in one directory (``blobs/<h2>/``) are answered by listing that directory;
   past ``LIST_RATIO`` names per asked path it is abandoned, and its paths go to level 3.
3. Other paths are probed one by one.

Requests run at most ``concurrency`` at a time. When one fails, the others are
cancelled and awaited (their outcomes retrieved) before the error propagates.
"""

from __future__ import annotations

import asyncio
import posixpath
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any

__all__ = ["LIST_MIN", "LIST_RATIO", "TREE_MIN", "TREE_RATIO", "batched_exists", "gather_all", "read_upto"]

LIST_MIN = 4  # list a directory when at least this many asked paths share it
LIST_RATIO = 100  # ... and give up listing past this many names per asked path
TREE_MIN = 32  # list a whole subtree when at least this many asked paths share it
TREE_RATIO = 10  # ... and give up past this many names per asked path (capped by LIST_RATIO)


async def gather_all(coros: Iterable[Coroutine[Any, Any, Any]]) -> None:
    """Run ``coros`` as tasks; on the first failure cancel the rest, await them all (so no
    exception goes unretrieved) and raise it. Cancelled itself, it cancels them too."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def batched_exists(
    paths: Sequence[str],
    *,
    list_dir: Callable[[str, int], Awaitable[set[str] | None]],
    probe: Callable[[str], Awaitable[bool]],
    concurrency: int,
    list_tree: Callable[[str, int], Awaitable[set[str] | None]] | None = None,
) -> list[bool]:
    """One answer per path, in order. ``list_dir(dir, limit)`` returns the names in
    ``dir`` (empty if it does not exist), or None once it has seen more than ``limit``;
    ``list_tree(dir, limit)`` likewise returns every path under ``dir``, relative to it;
    ``probe(path)`` checks one path."""
    out = [False] * len(paths)
    sem = asyncio.Semaphore(max(1, concurrency))
    rest = list(range(len(paths)))
    tree_ratio = min(TREE_RATIO, LIST_RATIO)
    if list_tree is not None and tree_ratio > 0:
        tops: dict[str, list[int]] = {}
        for i in rest:
            top, sep, _ = paths[i].partition("/")
            if sep:
                tops.setdefault(top, []).append(i)
        rest = [i for i in rest if len(tops.get(paths[i].partition("/")[0], ())) < TREE_MIN]

        async def treed(top: str, idx: list[int]) -> None:
            assert list_tree is not None
            async with sem:
                names = await list_tree(top, len(idx) * tree_ratio)
            if names is None:
                rest.extend(idx)
                return
            for i in idx:
                out[i] = paths[i][len(top) + 1 :] in names

        await gather_all(treed(top, idx) for top, idx in tops.items() if len(idx) >= TREE_MIN)

    groups: dict[str, list[int]] = {}
    for i in rest:
        groups.setdefault(posixpath.dirname(paths[i]), []).append(i)
    to_probe = [i for idx in groups.values() if len(idx) < LIST_MIN for i in idx]

    async def listed(d: str, idx: list[int]) -> None:
        async with sem:
            names = await list_dir(d, len(idx) * LIST_RATIO)
        if names is None:
            to_probe.extend(idx)
            return
        for i in idx:
            out[i] = posixpath.basename(paths[i]) in names

    await gather_all(listed(d, idx) for d, idx in groups.items() if len(idx) >= LIST_MIN)

    async def probed(i: int) -> None:
        async with sem:
            out[i] = await probe(paths[i])

    await gather_all(probed(i) for i in to_probe)
    return out


async def read_upto(read: Callable[[int], Awaitable[bytes]], n: int) -> bytes:
    """Up to ``n`` bytes from a stream whose ``read(k)`` may return fewer than ``k`` (an
    HTTP body returns what has arrived); stops at the end of the stream."""
    out = bytearray()
    while len(out) < n:
        chunk = await read(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)

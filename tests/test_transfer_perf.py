"""The transfer fast paths keep their contracts (issue 8, performance).

- ``gather_all`` cancels and awaits the rest when one fails, so no exception goes
  unretrieved (the "Task exception was never retrieved" seen while a push aborted);
- ``batched_exists`` answers many paths under one top directory with one subtree
  listing, and falls back to directory listings and probes with exact answers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from qwexstore.storage_batch import batched_exists, gather_all


def test_gather_all_retrieves_every_failure() -> None:
    unretrieved: list[dict[str, Any]] = []

    async def fail(delay: float, what: str) -> None:
        await asyncio.sleep(delay)
        raise OSError(what)

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise OSError("failed while cancelled") from None  # like a put aborting

    async def go() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: unretrieved.append(ctx))
        with pytest.raises(OSError, match="first"):
            await gather_all([fail(0, "first"), fail(0, "second"), slow()])

    asyncio.run(go())
    import gc

    gc.collect()
    assert unretrieved == []


def test_batched_exists_lists_a_subtree_once() -> None:
    present = {f"blobs/{i % 256:02x}/b{i}" for i in range(0, 600, 2)}
    asked = [f"blobs/{i % 256:02x}/b{i}" for i in range(600)] + ["runs/r1", "realisations/aa/k"]
    calls: list[str] = []

    async def list_tree(d: str, limit: int) -> set[str] | None:
        calls.append(f"tree {d}")
        names = {p[len(d) + 1 :] for p in present if p.startswith(d + "/")}
        return None if len(names) > limit else names

    async def list_dir(d: str, limit: int) -> set[str] | None:
        calls.append(f"dir {d}")
        return {p.rsplit("/", 1)[1] for p in present if p.rsplit("/", 1)[0] == d}

    async def probe(p: str) -> bool:
        calls.append(f"probe {p}")
        return p in present

    go = batched_exists(asked, list_dir=list_dir, probe=probe, concurrency=4, list_tree=list_tree)
    got = asyncio.run(go)
    assert got == [p in present for p in asked]
    assert sorted(calls) == ["probe realisations/aa/k", "probe runs/r1", "tree blobs"]

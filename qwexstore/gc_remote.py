"""Garbage collection of a shared store that other machines build into and push to
(spec/gc.md, "Shared stores").

No lock covers the writers of other machines, so three things replace the exclusive gc
lock of a local store:

- **live leases** (spec/locks.md): the derivation record of a key under a live (or
  undecodable) lease is a root, so whatever that build reuses from its derivation stays;
- **a grace window**: every object younger than ``grace`` (``Storage.stat().mtime_ns``;
  an object whose age is unknown counts as young) is a root, so the blobs, records and
  signatures an in-flight build or push has written before its realisation survive;
- **the local gc lock and live roots**, for the builds of this machine.

Objects are deleted without an index (this machine's index is not the remote's), kind by
kind in the reverse of the write order, with a durability barrier after each kind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Final

import msgspec

from .errors import ObjectNotFound, StoreError
from .gc import GcReport, needed_damage, spare_upstreams
from .leases import UNKNOWN_HOLDER, decode_lease, lease_path
from .liveroots import GcLock, scan_roots
from .pins import pinned
from .reach import DELETE_ORDER, Graph, Ref, list_objects, walk
from .store import Store

__all__ = ["DEFAULT_GRACE_NS", "LiveLease", "collect_remote_garbage", "live_leases", "remove_unindexed"]

DEFAULT_GRACE_NS: Final = 86400 * 1_000_000_000
_LEASES: Final = "leases"


class LiveLease(msgspec.Struct, frozen=True):
    """A lease as gc sees it: its key, holder (for the report), etag (for a conditional
    delete) and whether it must be honoured (live, or undecodable)."""

    key: str
    holder: str
    etag: str
    live: bool


async def live_leases(store: Store, now_ns: int) -> list[LiveLease]:
    """Every lease in the store; ``live`` unless it decodes and has expired. A lease that
    does not decode counts as live (spec/locks.md): gc cannot tell when it ends."""
    out: list[LiveLease] = []
    for path in sorted(await store.storage.list(_LEASES)):
        parts = path.split("/")
        if len(parts) != 3 or len(parts[2]) != 64:
            continue
        cur = await store.storage.ref_get(path)
        if cur is None:
            continue
        lease = decode_lease(cur.data)
        key = f"blake3:{parts[2]}"
        if lease is None:
            out.append(LiveLease(key, UNKNOWN_HOLDER, cur.etag, True))
        else:
            out.append(LiveLease(key, lease.owner.text(), cur.etag, lease.expires_ns >= now_ns))
    return out


async def _ages(store: Store, paths: list[str], concurrency: int) -> dict[str, tuple[int | None, int]]:
    """``path -> (mtime_ns, size)`` for each path that still exists."""
    sem = asyncio.Semaphore(max(1, concurrency))
    out: dict[str, tuple[int | None, int]] = {}

    async def one(path: str) -> None:
        async with sem:
            try:
                info = await store.storage.stat(path)
            except ObjectNotFound:
                return
            out[path] = (info.mtime_ns, info.size)

    await asyncio.gather(*(one(p) for p in paths))
    return out


def _refuse_damage(graph: Graph) -> None:
    """G5: stop before deleting anything if a record the mark needs cannot be read."""
    if (p := needed_damage(graph)) is not None:
        raise StoreError(
            f"gc stopped before deleting anything: {p.state} object {p.path}"
            f"{': ' + p.detail if p.detail else ''}; run `qwex verify --remote NAME --repair` first"
        )


async def remove_unindexed(store: Store, refs: Iterable[Ref], *, strays: Iterable[str] = ()) -> None:
    """Delete objects of a store no local index describes, kind by kind in
    :data:`~qwexstore.reach.DELETE_ORDER` (the reverse of the write order), each kind
    durable before the next; ``strays`` last."""
    by_kind: dict[str, list[str]] = {k: [] for k in DELETE_ORDER}
    for r in refs:
        by_kind[r.kind].append(r.path)
    for paths in [*(by_kind[k] for k in DELETE_ORDER), list(strays)]:
        for path in paths:
            await store.storage.delete(path)
        if paths:
            await store.storage.sync()


async def collect_remote_garbage(
    store: Store,
    scratch: str,
    *,
    grace_ns: int = DEFAULT_GRACE_NS,
    older_than_ns: int | None = None,
    dry_run: bool = False,
    now_ns: int | None = None,
    on_wait: Callable[[], None] | None = None,
) -> GcReport:
    """Mark from the realisations (less those ``older_than_ns`` drops), the pins, the keys
    of live leases, the live roots in ``scratch`` and every object younger than
    ``grace_ns``; delete the rest, and expired leases. Nothing is deleted if a record the
    mark must read is damaged (StoreError)."""
    now = time.time_ns() if now_ns is None else now_ns
    async with GcLock(scratch, exclusive=True, on_wait=on_wait):
        local = scan_roots(scratch).live
        refs, _strays = await list_objects(store)
        leases = await live_leases(store, now)
        pins = set(await pinned(store))
        reals = [r for r in refs if r.kind == "realisation"]
        dropped: list[Ref] = []
        if older_than_ns is not None:
            for r in reals:
                real = await store.get_realisation(r.id) if r.id not in pins else None
                if real is not None and real.created_ns < now - older_than_ns:
                    dropped.append(r)
            dropped = await spare_upstreams(store, reals, dropped)
        drop = set(dropped)
        roots = [r for r in reals if r not in drop] + [r for r in refs if r.kind == "pin"]
        roots += [Ref("derivation", lr.drv) for lr in local]
        roots += [Ref("derivation", lease.key) for lease in leases if lease.live]
        graph = await walk(store, roots)
        _refuse_damage(graph)
        # Grace: what is young is a root too (with everything it names), dropped
        # realisations excepted (they were chosen by age on purpose).
        cand = [r for r in refs if r not in graph.edges]
        ages = await _ages(store, [r.path for r in cand], store.storage.capabilities.concurrency)
        cutoff = now - grace_ns

        def young(path: str) -> bool:
            mtime = ages.get(path, (None, 0))[0]
            return path in ages and (mtime is None or mtime >= cutoff)

        kept_young = [r for r in cand if young(r.path) and r not in drop]
        await walk(store, kept_young, graph)
        _refuse_damage(graph)
        keep = set(kept_young)  # kept even when unreadable (a damaged young signature)
        garbage = [r for r in cand if r not in graph.edges and r not in keep and r.path in ages]
        if not dry_run:
            await remove_unindexed(store, garbage)
            for lease in leases:
                if not lease.live:
                    await store.storage.ref_delete(lease_path(lease.key), expect=lease.etag)
    removed: dict[str, int] = {k: sum(1 for r in garbage if r.kind == k) for k in DELETE_ORDER}
    return GcReport(
        dry_run=dry_run,
        dropped=sorted(r.id for r in dropped),
        removed={k: n for k, n in removed.items() if n},
        bytes=sum(ages[r.path][1] for r in garbage),
        index_entries=0,
        tmp=[],
        tmp_bytes=0,
        live=local,
        leases=sorted(f"{lease.key} ({lease.holder})" for lease in leases if lease.live),
        young=len(kept_young),
    )

"""Verify: re-read and re-hash a store (or the closures of some keys) and report every
object that is missing, corrupt or unreadable; optionally repair (spec/gc.md, "Verifying").

Checks (spec/store.md, R1–R3): every blob's bytes hash to its name; every manifest and
snapshot hashes, with its domain tag, to its name; every derivation record's derivation
hashes to its name; realisations, run records and pins decode and carry their own name;
every object a checked record names exists (so each realisation's closure is complete);
no foreign or partial file sits under a final name; and, for a whole-store check, every
index entry names an object that exists.

Locking: a check holds the gc lock shared (gc cannot delete what is being checked, so a
concurrent gc never shows up as "missing"); ``repair`` holds it exclusively, so no build
reuses an object in the moment it is removed.
"""

from __future__ import annotations

import asyncio
import os
import stat
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final

import msgspec

from .digest import hash_file
from .errors import ObjectNotFound
from .index import Index, IndexEntries
from .liveroots import GcLock, scan_roots
from .reach import Graph, Problem, Ref, list_objects, remove, stale_entries, walk
from .store import Store

__all__ = ["VerifyReport", "verify"]

#: Blobs at least this large are hashed one at a time with all cores (mmap); smaller ones
#: are hashed several at a time, one per thread.
_BIG: Final = 4 * 1024 * 1024


class VerifyReport(msgspec.Struct):
    """``objects`` checked, ``bytes_hashed``, the problems found and, with ``repair``,
    the store paths removed, the number of index entries dropped, and the paths kept
    because a running build needs them (``in_use``; repair them after it ends).
    ``source_missing``: realised keys whose source snapshot is damaged or gone while
    their outputs are intact (they survive a repair; checkout restores outputs only)."""

    objects: int
    bytes_hashed: int
    seconds: float
    problems: list[Problem]
    removed: list[str]
    index_removed: int
    in_use: list[str] = msgspec.field(default_factory=list)
    source_missing: list[str] = msgspec.field(default_factory=list)


def _hash_one(full: str, size: int) -> str | None:
    try:
        return hash_file(full, size)
    except FileNotFoundError:
        return None


def _hash_local(root: str, refs: list[Ref]) -> tuple[int, dict[Ref, Problem]]:
    """Hash blobs of a local store: small ones in a thread pool, big ones with all cores."""
    problems: dict[Ref, Problem] = {}
    jobs: list[tuple[Ref, str, int]] = []
    for r in refs:
        full = os.path.join(root, r.path)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            problems[r] = Problem(r.path, "blob", "missing", r.id)
            continue
        if not stat.S_ISREG(st.st_mode):
            problems[r] = Problem(r.path, "blob", "unreadable", detail="not a regular file")
            continue
        jobs.append((r, full, st.st_size))
    small = [j for j in jobs if j[2] < _BIG]
    big = [j for j in jobs if j[2] >= _BIG]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as ex:
        small_digests = list(ex.map(lambda j: _hash_one(j[1], j[2]), small))
    digests = small_digests + [_hash_one(full, size) for _, full, size in big]
    total = 0
    for (r, _full, size), actual in zip(small + big, digests, strict=True):
        if actual is None:
            problems[r] = Problem(r.path, "blob", "missing", r.id)
            continue
        total += size
        if actual != r.id:
            problems[r] = Problem(r.path, "blob", "corrupt", r.id, actual)
    return total, problems


async def _hash_blobs(store: Store, refs: list[Ref], scratch: str) -> tuple[int, dict[Ref, Problem]]:
    root = store.local_root
    if root is not None:
        return await asyncio.to_thread(_hash_local, root, refs)
    return await _hash_remote(store, refs, scratch)


async def _hash_remote(store: Store, refs: list[Ref], scratch: str) -> tuple[int, dict[Ref, Problem]]:
    """Hash the blobs of a remote store: each streamed to a temp file in ``scratch``
    (never whole in memory), hashed and removed; ``capabilities.concurrency`` at a time."""
    problems: dict[Ref, Problem] = {}
    total = 0
    sem = asyncio.Semaphore(max(1, store.storage.capabilities.concurrency))
    os.makedirs(scratch, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="verify-", dir=scratch) as tmp:

        async def one(i: int, r: Ref) -> None:
            nonlocal total
            dest = os.path.join(tmp, str(i))
            async with sem:
                try:
                    await store.storage.get_file(r.path, dest)
                except ObjectNotFound:
                    problems[r] = Problem(r.path, "blob", "missing", r.id)
                    return
            try:
                size = os.path.getsize(dest)
                actual = await asyncio.to_thread(hash_file, dest, size)
            finally:
                os.unlink(dest)
            total += size
            if actual != r.id:
                problems[r] = Problem(r.path, "blob", "corrupt", r.id, actual)

        await asyncio.gather(*(one(i, r) for i, r in enumerate(refs)))
    return total, problems


def _stale_problems(stale: IndexEntries) -> list[Problem]:
    why = "the index names it but the store has no such object"
    out = [Problem(Ref("realisation", k).path, "index", "stale", k, None, why) for k in stale.realisations]
    out += [Problem(Ref("run", k).path, "index", "stale", k, None, why) for k in stale.runs]
    out += [Problem(Ref("derivation", k).path, "index", "stale", k, None, why) for k in stale.derivations]
    out += [
        Problem(Ref("snapshot", s).path, "index", "stale", s, None, f"{why} (snapshot of commit {c})")
        for c, s in stale.snapshots.items()
    ]
    return out


async def verify(
    store: Store,
    index: Index | None,
    scratch: str,
    *,
    keys: list[str] | None = None,
    repair: bool = False,
    on_wait: Callable[[], None] | None = None,
) -> VerifyReport:
    """Check the whole store, or with ``keys`` the closures of those realised keys.

    With ``repair``: remove every corrupt, unreadable or stray object, and every object
    anywhere in the store that names (transitively) a removed or missing one — so
    realisations that depend on them go, store files and index entries alike — plus
    stale index entries. Missing objects cannot be removed; what named them is. The
    next build of a removed key runs it again. With ``index`` None (a remote store, which
    no local index describes) index entries are neither checked nor removed. One
    exception: a source snapshot is removed alone (with its bad bundle), never the
    derivation records and realisations that name it; those are reported in
    ``source_missing`` and verify keeps failing.
    """
    t0 = time.monotonic()
    async with GcLock(scratch, exclusive=repair, on_wait=on_wait):
        refs, strays = await list_objects(store) if keys is None else ([], [])
        roots = refs if keys is None else [Ref("realisation", k) for k in keys]
        graph = await walk(store, roots)
        blobs = sorted(r for r in graph.edges if r.kind == "blob")
        nbytes, blob_problems = await _hash_blobs(store, blobs, scratch)
        for ref, p in blob_problems.items():
            del graph.edges[ref]
            graph.problems[ref] = p
        back = graph.referrers()
        for ref, p in graph.problems.items():
            if p.needed_by is None and back.get(ref):
                graph.problems[ref] = msgspec.structs.replace(p, needed_by=min(back[ref]).path)
        sourceless = _sourceless(graph)
        stale = IndexEntries(set(), set(), set(), {})
        if keys is None and index is not None:
            stale = await stale_entries(store, index.entries(), set(refs))
        problems = sorted([*graph.problems.values(), *strays], key=lambda p: p.path) + _stale_problems(stale)
        removed: list[str] = []
        in_use: list[str] = []
        index_removed = 0
        if repair and problems:
            # What running builds need stays, even if damaged: deleting it under them would
            # leave their records naming missing objects. A later repair removes it.
            live = await walk(store, [Ref("derivation", lr.drv) for lr in scan_roots(scratch).live])
            before = 0 if index is None else _count(index.entries())
            removed, in_use = await _repair(
                store, index, graph, keys is not None, strays, stale, {*live.edges, *live.problems}
            )
            index_removed = 0 if index is None else before - _count(index.entries())
    objects = len(graph.edges) + len(graph.problems) + len(strays)
    return VerifyReport(
        objects, nbytes, time.monotonic() - t0, problems, removed, index_removed, in_use, sourceless
    )


def _sourceless(graph: Graph) -> list[str]:
    """Realised keys that keep their outputs but whose source snapshot is lost: it is
    itself a problem, or names a bad bundle blob (a repair removes it, and keeps them)."""
    bad = set(graph.problems)
    doomed = graph.dependents(bad)
    lost = {r for r in bad | doomed if r.kind == "snapshot"}
    out: set[str] = set()
    for ref, kids in graph.edges.items():
        if ref.kind != "realisation" or ref in doomed:
            continue
        runs = [run for run in kids if run.kind == "run"]
        drvs = [d for run in runs for d in graph.edges.get(run, ()) if d.kind == "derivation"]
        if any(s in lost for d in drvs for s in graph.edges.get(d, ()) if s.kind == "snapshot"):
            out.add(ref.id)
    return sorted(out)


def _count(e: IndexEntries) -> int:
    return len(e.realisations) + len(e.runs) + len(e.derivations) + len(e.snapshots)


async def _repair(
    store: Store, index: Index | None, graph: Graph, keyed: bool, strays: list[Problem], stale: IndexEntries,
    protected: set[Ref],
) -> tuple[list[str], list[str]]:
    """Remove bad objects and their dependents, except ``protected`` ones; return the
    removed store paths and the protected ones that would have gone."""
    bad = set(graph.problems)
    # Dependents are searched in the whole store, so that no record outside the checked
    # closures is left naming a removed object (records only: blobs are not re-hashed).
    full = await walk(store, (await list_objects(store))[0], None) if keyed else graph
    doomed = full.dependents(bad) | {r for r, p in graph.problems.items() if p.state != "missing"}
    kept = doomed & protected
    doomed -= kept
    if index is None:
        from .gc_remote import remove_unindexed

        await remove_unindexed(store, doomed, strays=[p.path for p in strays])
    else:
        await remove(store, index, doomed, strays=[p.path for p in strays], entries=index.entries(),
                     stale=stale)
    return sorted([r.path for r in doomed] + [p.path for p in strays]), sorted(r.path for r in kept)

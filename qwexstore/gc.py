"""Garbage collection: remove every store object no root reaches (spec/gc.md).

Roots are the realisations (less, with ``older_than``, the unpinned ones created before
the cutoff that no kept realisation was built from), the pins, and the live roots of
running builds (liveroots.py). Everything they reach through :mod:`.reach` stays; every
other object goes: unreferenced blobs and manifests, failed and cancelled run records with
their logs, derivation records and snapshots that no kept run needs. The scratch directory
loses the work dirs and temp files of dead builds. The whole mark and sweep runs under the
exclusive gc lock, and deletes in the reverse of the write order (index entries first), so
a ``kill -9`` of gc at any point leaves a consistent store.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec

from .errors import ObjectNotFound, StoreError, UserError
from .index import Index, IndexEntries
from .liveroots import GC_LOCK, ROOTS, GcLock, LiveRoot, RootsScan, scan_roots
from .pins import pinned
from .reach import DELETE_ORDER, Graph, Problem, Ref, list_objects, remove, stale_entries, walk
from .store import Store

__all__ = ["GcReport", "collect_garbage", "needed_damage", "parse_age", "spare_upstreams"]

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE_RE: Final = re.compile(r"^(\d+)([smhdw])$")
#: Scratch entries that belong to protocols and are never removed (spec/locks.md, gc.md);
#: ``kept/`` holds finished runs' outputs that a failing store could not take (build.py).
_KEEP: Final = {GC_LOCK, "locks", ROOTS, "runs", "kept", "jobs"}


class GcReport(msgspec.Struct):
    """What gc removed (or, with ``dry_run``, would remove).

    ``removed`` counts store objects by kind; ``bytes`` is their total size (None when the
    store is not local and sizes are unknown). ``tmp`` lists scratch entries (relative to
    the scratch directory) of dead builds and crashed writers. ``live`` are the running
    builds whose objects and work dirs were kept. For a shared store (``gc --remote``):
    ``leases`` names the keys under a live lease (and their holders), whose derivations'
    closures were kept; ``young`` counts the unreachable objects kept by the grace window.
    """

    dry_run: bool
    dropped: list[str]
    removed: dict[str, int]
    bytes: int | None
    index_entries: int
    tmp: list[str]
    tmp_bytes: int
    live: list[LiveRoot]
    leases: list[str] = msgspec.field(default_factory=list)
    young: int = 0


def parse_age(text: str, option: str = "--older-than") -> int:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` -> nanoseconds. UserError (naming
    ``option``) otherwise."""
    m = _AGE_RE.match(text.strip())
    if m is None:
        raise UserError(
            f"{option}: {text!r} is not an age (want a number and a unit s, m, h, d or w, e.g. 30d)"
        )
    return int(m.group(1)) * _UNITS[m.group(2)] * 1_000_000_000


def _tree_size(path: str) -> int:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not os.path.isdir(path) or os.path.islink(path):
        return st.st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total


def _rmtree(path: str) -> None:
    """Remove a file or a work dir, even one a job made read-only."""
    if not os.path.isdir(path) or os.path.islink(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return

    def retry(fn: Callable[..., Any], p: str, _exc: Any) -> None:
        for d in (os.path.dirname(p), p):
            with contextlib.suppress(OSError):
                os.chmod(d, 0o700)
        with contextlib.suppress(FileNotFoundError):
            fn(p)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=retry)
    else:
        shutil.rmtree(path, onerror=retry)


def _with_jobs(scan: RootsScan, scratch: str) -> RootsScan:
    """A job in flight (a handle in ``jobs/``: submitted, not yet recorded, its client
    possibly gone) is a live root like a running build: its derivation closure and its run
    dir stay (spec/drivers.md, "Lifecycle")."""
    from .jobs import list_handles

    handles = list_handles(scratch)
    if not handles:
        return scan
    ids = {h.run_id for h in handles}
    jobs = [LiveRoot(h.run_id, h.drv, 0, h.host or "this host", h.submitted_ns) for h in handles]
    live = [*scan.live, *jobs]
    return RootsScan(live, [d for d in scan.dead if d not in ids])


def _scratch_garbage(scratch: str, live: Iterable[LiveRoot], dead: list[str]) -> list[str]:
    """Scratch entries to remove, relative to ``scratch``: work dirs of dead builds and of
    no build at all, roots files of dead builds (after their work dirs), and every other
    entry except the protocol files (gc.lock, locks/, roots/)."""
    alive = {lr.run_id for lr in live}
    out: list[str] = []
    runs = os.path.join(scratch, "runs")
    if os.path.isdir(runs):
        out += [f"runs/{n}" for n in sorted(os.listdir(runs)) if n not in alive]
    out += [f"{ROOTS}/{n}" for n in dead]
    if os.path.isdir(scratch):
        out += sorted(n for n in os.listdir(scratch) if n not in _KEEP)
    return out


async def collect_garbage(
    store: Store,
    index: Index,
    scratch: str,
    *,
    older_than_ns: int | None = None,
    dry_run: bool = False,
    now_ns: int | None = None,
    on_wait: Callable[[], None] | None = None,
) -> GcReport:
    """Mark from the roots, then sweep everything else; see the module docstring.

    Raises StoreError, before deleting anything, if a record the mark must read is
    corrupt or unreadable (``qwex verify --repair`` first): gc never deletes on a guess.
    """
    now = time.time_ns() if now_ns is None else now_ns
    async with GcLock(scratch, exclusive=True, on_wait=on_wait):
        roots_scan = _with_jobs(scan_roots(scratch), scratch)
        refs, _strays = await list_objects(store)  # strays are verify's business, not gc's
        pins = set(await pinned(store))
        reals = [r for r in refs if r.kind == "realisation"]
        dropped: list[Ref] = []
        if older_than_ns is not None:
            for r in reals:
                if r.id in pins:
                    continue
                try:
                    real = await store.get_realisation(r.id)
                except StoreError as e:
                    raise StoreError(f"gc stopped before deleting anything: {e}; "
                                     "run `qwex verify --repair` first") from None
                if real is not None and real.created_ns < now - older_than_ns:
                    dropped.append(r)
            dropped = await spare_upstreams(store, reals, dropped)
        roots = [r for r in reals if r not in set(dropped)]
        roots += [r for r in refs if r.kind == "pin"]
        roots += [Ref("derivation", lr.drv) for lr in roots_scan.live]
        graph = await walk(store, roots)
        if (p := needed_damage(graph)) is not None:
            raise StoreError(
                f"gc stopped before deleting anything: {p.state} object {p.path}"
                f"{': ' + p.detail if p.detail else ''}; run `qwex verify --repair` first"
            )
        garbage = [r for r in refs if r not in graph.edges]
        kept = set(refs) - set(garbage)
        entries = index.entries()
        stale = await stale_entries(store, entries, kept)
        n_index = _index_count(entries, garbage) + len(stale.realisations) + len(stale.runs)
        n_index += len(stale.derivations) + len(stale.snapshots)
        root = store.local_root
        size = None if root is None else sum(_tree_size(os.path.join(root, r.path)) for r in garbage)
        tmp = _scratch_garbage(scratch, roots_scan.live, roots_scan.dead)
        tmp_bytes = sum(_tree_size(os.path.join(scratch, rel)) for rel in tmp)
        if not dry_run:
            await remove(store, index, garbage, entries=entries, stale=stale)
            for rel in tmp:  # work dirs before the roots files that named them
                _rmtree(os.path.join(scratch, rel))
    removed: dict[str, int] = {k: sum(1 for r in garbage if r.kind == k) for k in DELETE_ORDER}
    return GcReport(
        dry_run=dry_run,
        dropped=sorted(r.id for r in dropped),
        removed={k: n for k, n in removed.items() if n},
        bytes=size,
        index_entries=n_index,
        tmp=tmp,
        tmp_bytes=tmp_bytes,
        live=roots_scan.live,
    )


def needed_damage(graph: Graph) -> Problem | None:
    """A damaged record the mark needed (G5), if any. Missing objects have nothing to keep;
    a damaged signature names nothing, so it is garbage like any unreached object."""
    for p in graph.problems.values():
        if p.state != "missing" and p.kind != "signature":
            return p
    return None


async def spare_upstreams(store: Store, reals: list[Ref], dropped: list[Ref]) -> list[Ref]:
    """``dropped`` less every realisation that a kept one was built from, transitively
    (its derivation record's ``upstreams``): a kept result keeps its pipeline cached, so
    building its .drv again runs nothing."""
    drop = set(dropped)
    todo = [r for r in reals if r not in drop]
    while todo and drop:
        real = await store.get_realisation(todo.pop().id)
        if real is None:
            continue
        try:
            record = await store.get_derivation((await store.get_run(real.run_id)).drv)
        except ObjectNotFound:  # nothing to spare through it (a missing object is verify's report)
            continue
        except StoreError as e:
            raise StoreError(f"gc stopped before deleting anything: {e}; "
                             "run `qwex verify --repair` first") from None
        for key in record.upstreams.values():
            ref = Ref("realisation", key)
            if ref in drop:
                drop.discard(ref)
                todo.append(ref)
    return [r for r in dropped if r in drop]


def _index_count(entries: IndexEntries, garbage: list[Ref]) -> int:
    """Index entries that name garbage (the count gc reports)."""
    gone = {(r.kind, r.id) for r in garbage}
    n = sum(1 for k in entries.realisations if ("realisation", k) in gone)
    n += sum(1 for k in entries.runs if ("run", k) in gone)
    n += sum(1 for k in entries.derivations if ("derivation", k) in gone)
    n += sum(1 for s in entries.snapshots.values() if ("snapshot", s) in gone)
    return n

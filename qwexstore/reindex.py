"""Rebuild the local index from the store (spec/index.md, "Rebuilding").

The store is the truth; the index only accelerates it. :func:`rebuild_index` empties every
sub-database except the stat cache (a local hint about files outside the store) and fills
them again from the store's records, in one write transaction: a crash midway leaves the
old index untouched.

A record that cannot be read (corrupt, unreadable, or naming a missing or corrupt
manifest) is not indexed and is reported in :attr:`RebuildReport.skipped`; everything
else is. The index then never names a realisation that a checkout could not serve, and
``qwex verify --repair`` removes the damage.
"""

from __future__ import annotations

import msgspec

from .cache import LISTING
from .derivation import derivation_hash
from .digest import is_digest
from .errors import StoreError
from .index import Index, IndexedRealisation, RunSummary
from .manifest import Manifest
from .records import Realisation, RunRecord
from .store import Store

__all__ = ["RebuildReport", "indexed_realisation", "rebuild_index", "run_summary", "write_entries"]


class RebuildReport(msgspec.Struct):
    """Counts of indexed records, and (path, reason) of each record that was skipped."""

    realisations: int
    runs: int
    derivations: int
    snapshots: int
    skipped: list[tuple[str, str]] = msgspec.field(default_factory=list)


def _digest_of(path: str) -> str | None:
    """``kind/ab/<hex>`` -> ``blake3:<hex>``; None for names that are not objects."""
    name = path.rsplit("/", 1)[-1]
    d = f"blake3:{name}"
    return d if is_digest(d) else None


async def rebuild_index(store: Store, index: Index) -> RebuildReport:
    """Re-derive the index's realisations, runs, derivations and snapshots from the store."""
    skipped: list[tuple[str, str]] = []
    reals: list[tuple[str, IndexedRealisation]] = []
    for path in await store.storage.list("realisations"):
        key = _digest_of(path)
        if key is None:
            continue
        try:
            real = await store.get_realisation(key)
            if real is None:
                continue
            m = await store.get_manifest(real.manifest)
        except StoreError as e:
            skipped.append((path, str(e)))
            continue
        reals.append((key, indexed_realisation(real, m)))
    runs: list[tuple[str, RunSummary]] = []
    for path in await store.storage.list("runs"):
        try:
            run = await store.get_run(path.rsplit("/", 1)[-1])
        except StoreError as e:
            skipped.append((path, str(e)))
            continue
        runs.append((run.run_id, run_summary(run)))
    drvs: list[tuple[str, str]] = []
    for path in await store.storage.list("derivations"):
        digest = _digest_of(path)
        if digest is None:
            continue
        try:
            record = await store.get_derivation(digest)
        except StoreError as e:
            skipped.append((path, str(e)))
            continue
        drvs.append((derivation_hash(record.derivation), record.name))
    snaps: list[tuple[str, str]] = []
    for path in await store.storage.list("snapshots"):
        digest = _digest_of(path)
        if digest is None:
            continue
        try:
            snaps.append(((await store.get_snapshot(digest)).commit, digest))
        except StoreError as e:
            skipped.append((path, str(e)))
    write_entries(index, reals, runs, drvs, snaps, replace=True)
    return RebuildReport(len(reals), len(runs), len(drvs), len(snaps), sorted(skipped))


def indexed_realisation(real: Realisation, manifest: Manifest) -> IndexedRealisation:
    """The index entry of a realisation whose output manifest is ``manifest``."""
    files = manifest.files()
    listing = [(e.path, e.size) for e in files[:LISTING]]
    return IndexedRealisation(real.manifest, real.run_id, real.created_ns, len(files),
                              manifest.total_size(), listing)


def run_summary(run: RunRecord) -> RunSummary:
    """The index entry of a run record."""
    return RunSummary(run.key, run.name, run.status, run.exit_code, run.started_ns, run.finished_ns)


def write_entries(
    index: Index,
    reals: list[tuple[str, IndexedRealisation]],
    runs: list[tuple[str, RunSummary]],
    drvs: list[tuple[str, str]],
    snaps: list[tuple[str, str]],
    *,
    replace: bool = False,
) -> None:
    """Write index entries in one transaction (with ``replace``, instead of all others);
    realisations last, as in the store's write order."""
    with index.writer() as w:
        if replace:
            w.drop_all()
        for run_id, summary in runs:
            w.run(run_id, summary)
        for digest, name in drvs:
            w.derivation(digest, name)
        for commit, digest in snaps:
            w.snapshot(commit, digest)
        for key, value in reals:
            w.realisation(key, value)

"""What a push or pull moves: the closure of some keys at the source (spec/remotes.md).

:func:`plan_closure` reads the source's records once, through a recording wrapper of its
storage, so every record's bytes are kept exactly as they were verified (a server cannot
answer a second read differently). The closure of a key is:

- its realisation and the realisation's signature objects;
- everything :func:`qwexstore.reach.walk` reaches from the realisation (run, derivation,
  snapshot, manifests, blobs);
- the realisations named in reached derivation records' ``upstreams`` that the source
  holds, and their closures (recursively).

With ``trust`` (a pull), each realisation's signatures are checked BEFORE its objects are
read further, and an upstream realisation that is not trusted is left out (it is
informational; its outputs still move as the downstream's input manifests).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import msgspec

from .errors import CorruptObject, ObjectNotFound, StoreError, UntrustedObject, UserError
from .manifest import FileEntry
from .reach import Graph, Problem, Ref, walk
from .records import Realisation
from .store import Store

if TYPE_CHECKING:
    from .index import Index
    from .keys import Trust
    from .plan import Plan
    from .storage import Storage

__all__ = [
    "PHASES", "Closure", "Item", "all_keys", "keys_at", "layers", "plan_closure", "plan_job_closure",
    "plan_key",
]

#: Destination write order (MUST): each phase durable before the next starts.
#: Derivations go before runs (a run names its derivation, and verify checks it); within
#: a phase, an object naming another of the same phase goes after it.
PHASES: tuple[tuple[str, ...], ...] = (
    ("blob",), ("manifest", "snapshot"), ("derivation",), ("run",), ("signature",), ("realisation",),
)


class Item(msgspec.Struct, frozen=True):
    """One object to move: its store path and kind, the digest that names it (None for
    run records and signatures, which are not content-addressed by name), and its size
    in bytes where known (blobs named by a manifest, every record)."""

    path: str
    kind: str
    digest: str | None
    size: int | None


class Closure(msgspec.Struct):
    """The planned closure. ``records`` holds the verified bytes of every record read
    (by path); ``needs`` maps each realisation's path to every path its closure names."""

    reals: dict[str, Realisation]
    items: dict[str, Item]
    records: dict[str, bytes]
    needs: dict[str, set[str]]
    edges: dict[str, list[str]] = msgspec.field(default_factory=dict)
    skipped: list[str] = msgspec.field(default_factory=list)


class _Recording:
    """A storage wrapper that keeps the bytes of every ``get`` (records are small)."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.seen: dict[str, bytes] = {}

    async def get(self, path: str) -> bytes:
        data: bytes = await self.inner.get(path)
        self.seen[path] = data
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _raise_problem(p: Problem, *, untrusted: bool) -> None:
    """A damaged closure at the source: the one-line error naming the object."""
    match p.state:
        case "missing":
            raise ObjectNotFound(p.path)
        case "corrupt":
            raise CorruptObject(p.path, p.expected or "?", p.actual or "?")
        case _:
            if untrusted:
                raise UntrustedObject(p.path, f"malformed: {p.detail}")
            raise StoreError(p.detail or f"unreadable object {p.path}")


async def _blob_sizes(src: Store, paths: list[str]) -> dict[str, int]:
    """Sizes of blobs no manifest gives (logs, bundles, file inputs): a stat each."""
    root = src.local_root
    out: dict[str, int] = {}
    if root is not None:
        for p in paths:
            try:
                out[p] = os.stat(os.path.join(root, p)).st_size
            except FileNotFoundError:
                raise ObjectNotFound(p) from None
        return out
    stat = getattr(src.storage, "stat", None)
    if stat is None:
        return out
    import asyncio

    sem = asyncio.Semaphore(16)

    async def one(p: str) -> None:
        async with sem:
            out[p] = (await stat(p)).size

    tasks = [asyncio.ensure_future(one(p)) for p in paths]
    try:
        await asyncio.gather(*tasks)
    finally:  # on the first failure, stop the rest and collect their outcomes
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return out


async def _signatures(src: Store, rec: _Recording, key: str) -> list[str]:
    """Paths of the key's signature objects at the source, their bytes recorded."""
    paths = sorted(await src.storage.list(Store.signature_prefix(key)))
    for p in paths:
        if p not in rec.seen:
            await rec.get(p)
    return paths


async def plan_closure(
    src: Store, keys: Sequence[str], *, trust: Trust | None = None, where: str | None = None,
    strict: bool = True,
) -> Closure:
    """Plan the closure of ``keys`` at ``src`` (see the module docstring).

    Raises UserError if a key has no realisation at ``src``; ObjectNotFound,
    CorruptObject or StoreError (UntrustedObject with ``trust``) for a damaged closure;
    UntrustedObject if a requested key is not signed by a trusted key. Without ``strict``
    (``--all``), a requested key that is not trusted is left out like an upstream.
    """
    rec = _Recording(src.storage)
    store = Store(cast("Storage", rec), src.location)
    where = where or src.location
    reals: dict[str, Realisation] = {}
    skipped: list[str] = []
    graph = Graph()
    todo = list(dict.fromkeys(keys))
    roots = set(todo) if strict else set()
    untrusted: set[str] = set()
    seen_drvs: set[Ref] = set()
    while todo:
        batch, todo = todo, []
        for key in batch:
            try:
                real = await store.get_realisation(key)
            except StoreError as e:
                if trust is not None and not isinstance(e, CorruptObject):
                    raise UntrustedObject(store.realisation_path(key), f"malformed: {e}") from None
                raise
            if real is None:
                if key in roots:
                    raise UserError(f"{key} is not realised at {where}")
                continue
            if trust is not None:
                from .signing import check_trusted

                try:
                    await check_trusted(store, real, trust, where)
                except UntrustedObject as e:
                    if key in roots:
                        raise
                    untrusted.add(key)
                    skipped.append(f"{key}: left out: {e.reason}")
                    continue
            reals[key] = real
            await walk(store, [Ref("realisation", key)], graph)
        for ref in [r for r in graph.edges if r.kind == "derivation" and r not in seen_drvs]:
            seen_drvs.add(ref)
            record = await store.get_derivation(ref.id)  # already read: served from the recording
            todo += [k for k in record.upstreams.values() if k not in reals and k not in untrusted]
        todo = list(dict.fromkeys(todo))
        if todo:
            there = await src.storage.exists([Store.realisation_path(k) for k in todo])
            todo = [k for k, ok in zip(todo, there, strict=True) if ok]
    for p in graph.problems.values():
        if p.kind == "snapshot" and p.state == "missing":
            # A lost source: the result stays valid without it (spec/gc.md V2).
            skipped.append(f"{p.path}: missing at {where}; moved without its source")
            continue
        _raise_problem(p, untrusted=trust is not None)
    return await _finish(src, store, rec, graph, reals, skipped, untrusted=trust is not None)


async def plan_job_closure(src: Store, drv_hash: str) -> Closure:
    """The job closure of derivation record ``drv_hash`` at ``src`` (spec/drivers.md, "Job
    closure"): the record, its snapshot record and bundle blobs, its input manifests and
    every blob they or its ``blob:`` inputs name; what the execution side needs to stage
    the work dir. Records are read once, as :func:`plan_closure` reads them; no realisation
    is in it (``reals`` and ``needs`` are empty). UserError for a record with ``drv:``
    inputs (only a resolved derivation runs); ObjectNotFound, CorruptObject or StoreError
    naming a missing or damaged object, the source snapshot included (a job cannot be
    staged without its source)."""
    rec = _Recording(src.storage)
    store = Store(cast("Storage", rec), src.location)
    record = await store.get_derivation(drv_hash)
    if not record.derivation.is_resolved():
        raise UserError(f"{record.name}: derivation {drv_hash} has unresolved drv: inputs; "
                        "only a resolved derivation runs")
    graph = await walk(store, [Ref("derivation", drv_hash)])
    for p in graph.problems.values():
        _raise_problem(p, untrusted=False)
    return await _finish(src, store, rec, graph, {}, [], untrusted=False)


async def _finish(
    src: Store, store: Store, rec: _Recording, graph: Graph, reals: dict[str, Realisation],
    skipped: list[str],
    *, untrusted: bool,
) -> Closure:
    items: dict[str, Item] = {}
    sizes: dict[str, int] = {}
    said_by: dict[str, str] = {}
    for ref in graph.edges:
        if ref.kind == "manifest":
            for e in (await store.get_manifest(ref.id)).entries:
                if isinstance(e, FileEntry):
                    bp = Store.blob_path(e.digest)
                    if sizes.setdefault(bp, e.size) != e.size:  # a size is a fact of the digest
                        why = f"says {bp} has {e.size} bytes; {said_by[bp]} says {sizes[bp]}"
                        if untrusted:
                            raise UntrustedObject(ref.path, why)
                        raise StoreError(f"inconsistent manifests: {ref.path} {why}")
                    said_by.setdefault(bp, ref.path)
    for ref in graph.edges:
        if ref.kind != "realisation":
            path = ref.path
            data = rec.seen.get(path)
            size = len(data) if data is not None else sizes.get(path)
            items[path] = Item(path, ref.kind, None if ref.kind == "run" else ref.id, size)
    unknown = [p for p, it in items.items() if it.size is None]
    for p, n in (await _blob_sizes(src, unknown)).items():
        items[p] = msgspec.structs.replace(items[p], size=n)
    needs: dict[str, set[str]] = {}
    for key in reals:
        start = Ref("realisation", key)
        reach: set[str] = set()
        stack = [start]
        seen = {start}
        while stack:
            for kid in graph.edges.get(stack.pop(), ()):
                if kid not in seen and kid in graph.edges:
                    seen.add(kid)
                    reach.add(kid.path)
                    stack.append(kid)
        sigs = await _signatures(src, rec, key)
        for p in sigs:
            items[p] = Item(p, "signature", None, len(rec.seen[p]))
        path = Store.realisation_path(key)
        items[path] = Item(path, "realisation", key, len(rec.seen[path]))
        needs[path] = reach
    records = {p: d for p, d in rec.seen.items() if p in items}
    edges = {ref.path: [k.path for k in kids] for ref, kids in graph.edges.items() if kids}
    return Closure(reals, items, records, needs, edges=edges, skipped=skipped)


def layers(batch: list[Item], edges: dict[str, list[str]]) -> list[list[Item]]:
    """``batch`` split so that no object comes before one of the batch it names."""
    left = {i.path: i for i in batch}
    out: list[list[Item]] = []
    while left:
        ready = [i for p, i in left.items() if not any(k in left and k != p for k in edges.get(p, ()))]
        if not ready:  # a cycle cannot happen in content-addressed records; do not hang on one
            ready = list(left.values())
        out.append(ready)
        for i in ready:
            del left[i.path]
    return out


async def all_keys(store: Store) -> list[str]:
    """Every key realised at ``store`` (one listing)."""
    from .reach import list_objects

    refs, _ = await list_objects(store, ["realisation"])
    return [r.id for r in refs]


async def keys_at(store: Store, prefix: str) -> list[str]:
    """The keys realised at ``store`` that start with ``prefix`` (``blake3:`` optional, at
    least 2 hex digits): one listing of a ``realisations/<h2>/`` directory."""
    from .digest import is_digest

    h = prefix.removeprefix("blake3:").lower()
    if len(h) < 2 or any(c not in "0123456789abcdef" for c in h):
        raise UserError(f"{prefix!r} is not a key, key prefix (at least 2 hex digits) or .drv file")
    full = f"blake3:{h}"
    if is_digest(full):
        return [full]
    names = await store.storage.list(f"realisations/{h[:2]}")
    return sorted({f"blake3:{p.rsplit('/', 1)[-1]}" for p in names if p.rsplit("/", 1)[-1].startswith(h)})


async def plan_key(plan: Plan, index: Index | None, src: Store) -> str:
    """The key of a planned .drv file, its ``drv:`` inputs resolved with the manifests of
    their realisations: the local index's first, else ``src``'s (a pull of a pipeline
    that was never built here). The manifests so taken from a remote are not trusted by
    this: the realisations they lead to are trust-checked when pulled."""
    return (await _resolve_at(plan, index, src)).key


async def _resolve_at(plan: Plan, index: Index | None, src: Store) -> Plan:
    from .derivation import DrvInput
    from .graph import _resolved

    if plan.derivation.is_resolved():
        return plan
    manifests: dict[str, str] = {}
    for dest, inp in plan.derivation.inputs.items():
        if isinstance(inp, DrvInput) and dest not in plan.upstreams:
            manifests[inp.drv] = await _manifest_of(inp.drv, index, src, plan.drv_path)
    ups: dict[str, Plan] = {}
    for dest, up in plan.upstreams.items():
        resolved = await _resolve_at(up, index, src)
        manifests[up.derivation.hash()] = await _manifest_of(resolved.key, index, src, up.drv_path)
        ups[dest] = resolved
    return _resolved(plan, manifests, ups)


async def _manifest_of(key: str, index: Index | None, src: Store, drv_path: str) -> str:
    hit = index.realisation(key) if index is not None else None
    if hit is not None:
        return hit.manifest
    real = await src.get_realisation(key)
    if real is None:
        raise UserError(f"{drv_path}: {key} is not realised here or at {src.location}, "
                        "so the key of what depends on it is unknown")
    return real.manifest

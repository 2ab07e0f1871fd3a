"""What reaches what: the reference graph of a store, shared by verify and gc (spec/gc.md).

Edges (every one a MUST-exist reference, W3/W5 in spec/store.md)::

    realisation -> manifest, run, its signatures (found by listing signatures/<h2>/<key hex>/)
    signature   -> nothing (it names its realisation's key and manifest, checked on read)
    run         -> derivation, stdout blob, stderr blob, manifest (if any)
    derivation  -> snapshot (if a source), input blobs (blob:), input manifests (tree:),
                   upstream derivations (drv:, unresolved records only)
    snapshot    -> bundle blobs
    manifest    -> file blobs
    pin, blob   -> nothing

A derivation record's informational ``upstreams`` keys are not edges: their realisations
are roots of their own, or gone. The derivation -> snapshot edge is *weak* for repair
(:meth:`Graph.dependents`): a result whose outputs are intact survives the loss of its
source snapshot (spec/gc.md, "Verifying"). So is realisation -> signature: a bad signature
is removed alone, and a signature whose realisation is gone is garbage. :func:`walk` reads
every record it reaches through the store's verifying getters, so a record that is
corrupt, unreadable or missing becomes a :class:`Problem` instead of an exception. Blobs
are leaves and are not read here (verify hashes them; gc only needs their names).
:func:`remove` deletes in the reverse of the write order, index entries first.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from typing import Final, Literal, NamedTuple

import msgspec

from .derivation import BlobInput, DrvInput, TreeInput
from .digest import is_digest
from .errors import CorruptObject, KeyLookupError, ObjectNotFound, StoreError
from .faults import crashpoint
from .index import Index, IndexEntries
from .manifest import FileEntry
from .store import Store

__all__ = [
    "DELETE_ORDER",
    "Graph",
    "Kind",
    "Problem",
    "Ref",
    "list_objects",
    "remove",
    "resolve_key",
    "stale_entries",
    "walk",
]

Kind = Literal["pin", "realisation", "signature", "run", "derivation", "snapshot", "manifest", "blob"]
State = Literal["missing", "corrupt", "unreadable", "stray", "stale"]

#: Store prefix of each kind.
PREFIX: Final[dict[Kind, str]] = {
    "pin": "pins",
    "realisation": "realisations",
    "signature": "signatures",
    "run": "runs",
    "derivation": "derivations",
    "snapshot": "snapshots",
    "manifest": "manifests",
    "blob": "blobs",
}
#: The reverse of the write order: what names others goes before what it names. A
#: realisation goes before its signatures (a transfer writes them before it), so a reader
#: never meets a realisation whose signatures were deleted.
DELETE_ORDER: Final[tuple[Kind, ...]] = (
    "pin", "realisation", "signature", "run", "derivation", "snapshot", "manifest", "blob",
)


class Ref(NamedTuple):
    """One store object: its kind and its id (a digest; a run id for runs; for a
    signature ``<key digest>/<signer id>``)."""

    kind: Kind
    id: str

    @property
    def path(self) -> str:
        if self.kind == "run":
            return Store.run_path(self.id)
        if self.kind == "signature":
            key, _, sid = self.id.partition("/")
            return Store.signature_path(key, sid)
        h = self.id.removeprefix("blake3:")
        return f"{PREFIX[self.kind]}/{h[:2]}/{h}"


class Problem(msgspec.Struct, frozen=True):
    """Something wrong with one object. ``expected``/``actual`` are digests (or ids) where
    the problem is a mismatch; ``actual`` is None for a missing object. ``needed_by`` is
    the path of one object that names it."""

    path: str
    kind: str
    state: State
    expected: str | None = None
    actual: str | None = None
    detail: str = ""
    needed_by: str | None = None


def _ref_of(kind: Kind, path: str) -> Ref | None:
    """The object a listed path is, or None if the name is not an object name of its kind."""
    name = path.rsplit("/", 1)[-1]
    if kind == "run":
        ok = path == f"runs/{name}" and _valid_run_id(name)
        return Ref("run", name) if ok else None
    if kind == "signature":
        parts = path.split("/")
        if len(parts) != 4 or not _SIGNER_ID.fullmatch(parts[3]):
            return None
        sref = Ref("signature", f"blake3:{parts[2]}/{parts[3]}")
        return sref if is_digest(sref.id.partition("/")[0]) and sref.path == path else None
    ref = Ref(kind, f"blake3:{name}")
    return ref if is_digest(ref.id) and ref.path == path else None


_SIGNER_ID: Final = re.compile(r"[0-9a-f]{32}")


def _valid_run_id(run_id: str) -> bool:
    return bool(run_id) and "/" not in run_id and run_id not in (".", "..") and "\0" not in run_id


async def list_objects(store: Store, kinds: Iterable[Kind] = DELETE_ORDER) -> tuple[list[Ref], list[Problem]]:
    """Every object of ``kinds`` in the store, and every listed path that is not an object
    name (``stray``: a foreign or partial file under a final directory)."""
    refs: list[Ref] = []
    strays: list[Problem] = []
    for kind in kinds:
        for path in sorted(await store.storage.list(PREFIX[kind])):
            ref = _ref_of(kind, path)
            if ref is None:
                why = "not an object name (partial or foreign file)"
                strays.append(Problem(path, kind, "stray", detail=why))
            else:
                refs.append(ref)
    return refs, strays


#: Edges a repair does not follow back: losing the target does not doom the source.
_WEAK: Final = {("derivation", "snapshot"), ("realisation", "signature")}


class _BadSignature(StoreError):
    """A well-formed signature object that does not verify, or signs another manifest."""


class Graph:
    """The part of the reference graph :func:`walk` reached.

    ``edges`` holds every object that exists and could be read (blobs are assumed to, and
    have no edges); ``problems`` every reached object that could not.
    """

    def __init__(self) -> None:
        self.edges: dict[Ref, tuple[Ref, ...]] = {}
        self.problems: dict[Ref, Problem] = {}

    def referrers(self) -> dict[Ref, list[Ref]]:
        """Object -> the reached objects that name it."""
        back: dict[Ref, list[Ref]] = {}
        for src, kids in self.edges.items():
            for k in kids:
                back.setdefault(k, []).append(src)
        return back

    def dependents(self, bad: Iterable[Ref]) -> set[Ref]:
        """Every reached object that names, directly or through others, one of ``bad``
        (``bad`` itself excluded unless it also depends on another bad object).

        A derivation record does not depend on its source snapshot here: losing the
        snapshot loses the source, not the key or the outputs, so the record and the
        realisations built from it stay (their source is reported missing)."""
        back = self.referrers()
        out: set[Ref] = set()
        todo = list(bad)
        while todo:
            ref = todo.pop()
            for src in back.get(ref, ()):
                if (src.kind, ref.kind) in _WEAK:
                    continue
                if src not in out:
                    out.add(src)
                    todo.append(src)
        return out


async def _children(store: Store, ref: Ref) -> tuple[Ref, ...]:
    """Read one record (verified as spec/store.md R1 requires) and return what it names."""
    path = ref.path
    match ref.kind:
        case "realisation":
            real = await store.get_realisation(ref.id)
            if real is None:
                raise ObjectNotFound(path)
            if not _valid_run_id(real.run_id):
                raise StoreError(f"unreadable object {path}: invalid run id {real.run_id!r}")
            with contextlib.suppress(ObjectNotFound):  # a missing run is reported as the run's
                await store.get_run_of(real)  # it must agree with the realisation (R8)
            sigs = [_ref_of("signature", p) for p in await store.storage.list(Store.signature_prefix(ref.id))]
            return (Ref("manifest", real.manifest), Ref("run", real.run_id),
                    *sorted(s for s in sigs if s is not None))
        case "signature":
            from .signing import verifies  # imports cryptography only when a signature exists

            sig = await store.get_signature(path)
            if not verifies(sig):
                raise _BadSignature(f"bad signature {path}: it does not verify under its signer's key")
            try:
                real = await store.get_realisation(sig.key)
            except StoreError:  # the realisation's own problem, reported on its own
                real = None
            if real is not None and real.manifest != sig.manifest:
                raise _BadSignature(f"stale signature {path}: it signs manifest {sig.manifest}, "
                                    f"the realisation names {real.manifest}")
            return ()
        case "run":
            run = await store.get_run(ref.id)
            if run.run_id != ref.id:
                raise CorruptObject(path, ref.id, run.run_id)
            kids = [Ref("derivation", run.drv)]
            kids += [Ref("blob", d) for d in (run.stdout, run.stderr) if d is not None]
            if run.manifest is not None:
                kids.append(Ref("manifest", run.manifest))
            return tuple(kids)
        case "derivation":
            record = await store.get_derivation(ref.id)
            kids = [Ref("snapshot", record.source.snapshot)] if record.source is not None else []
            for inp in record.derivation.inputs.values():
                match inp:
                    case BlobInput():
                        kids.append(Ref("blob", inp.digest))
                    case TreeInput():
                        kids.append(Ref("manifest", inp.manifest))
                    case DrvInput():
                        kids.append(Ref("derivation", inp.drv))
            return tuple(kids)
        case "snapshot":
            return tuple(Ref("blob", b) for b in (await store.get_snapshot(ref.id)).bundles)
        case "manifest":
            m = await store.get_manifest(ref.id)
            return tuple(Ref("blob", e.digest) for e in m.entries if isinstance(e, FileEntry))
        case "pin":
            from .pins import read_pin  # pins imports the gc lock; keep this module light

            await read_pin(store, ref.id)
            return ()
        case "blob":
            return ()


async def walk(store: Store, roots: Iterable[Ref], graph: Graph | None = None) -> Graph:
    """Reach everything ``roots`` name, transitively; extend ``graph`` if given."""
    g = graph or Graph()
    todo: list[tuple[Ref, Ref | None]] = [(r, None) for r in roots]
    while todo:
        ref, parent = todo.pop()
        if ref in g.edges or ref in g.problems:
            continue
        by = parent.path if parent is not None else None
        try:
            kids = await _children(store, ref)
        except ObjectNotFound:
            g.problems[ref] = Problem(ref.path, ref.kind, "missing", ref.id, None, needed_by=by)
        except CorruptObject as e:
            g.problems[ref] = Problem(ref.path, ref.kind, "corrupt", e.expected, e.actual, needed_by=by)
        except _BadSignature as e:
            g.problems[ref] = Problem(ref.path, ref.kind, "corrupt", detail=str(e), needed_by=by)
        except StoreError as e:
            g.problems[ref] = Problem(ref.path, ref.kind, "unreadable", detail=str(e), needed_by=by)
        else:
            g.edges[ref] = kids
            todo.extend((k, ref) for k in kids)
    return g


def resolve_key(index: Index, prefix: str) -> str:
    """The key a key, derivation-hash or run-id prefix names (index lookup, as other
    commands resolve their arguments). KeyLookupError if none or several match."""
    kind, full = index.resolve_prefix(prefix)
    if kind == "runs":
        summary = index.run(full)
        if summary is None:  # pragma: no cover - resolve_prefix just found it
            raise KeyLookupError(prefix, f"no run {full}")
        return summary.key
    return full


async def remove(
    store: Store, index: Index, refs: Iterable[Ref], *, strays: Iterable[str] = (),
    entries: IndexEntries | None = None, stale: IndexEntries | None = None,
) -> None:
    """Delete objects so that a crash at any point leaves a consistent store.

    1. Index entries first, in one transaction (the index may lag the store, never lead
       it): those of the removed realisations, runs, derivations and snapshots (a ``snap``
       entry goes when its snapshot goes), plus the ``stale`` entries given.
    2. Then the store objects in :data:`DELETE_ORDER` (the reverse of the write order),
       with a durability barrier after each kind, so every surviving object still names
       only objects that exist (W3).
    3. Then ``strays`` (paths that are not objects, so nothing names them).
    """
    by_kind: dict[Kind, list[Ref]] = {k: [] for k in DELETE_ORDER}
    for r in refs:
        by_kind[r.kind].append(r)
    gone_snaps = {r.id for r in by_kind["snapshot"]}
    with index.writer() as w:
        for r in by_kind["realisation"]:
            w.delete_realisation(r.id)
        for r in by_kind["run"]:
            w.delete_run(r.id)
        for r in by_kind["derivation"]:
            w.delete_derivation(r.id)
        if entries is not None:
            for commit, snap in entries.snapshots.items():
                if snap in gone_snaps:
                    w.delete_snapshot(commit)
        if stale is not None:
            for key in stale.realisations:
                w.delete_realisation(key)
            for run_id in stale.runs:
                w.delete_run(run_id)
            for digest in stale.derivations:
                w.delete_derivation(digest)
            for commit in stale.snapshots:
                w.delete_snapshot(commit)
    for kind in DELETE_ORDER:
        if by_kind[kind]:
            for r in by_kind[kind]:
                await store.storage.delete(r.path)
                crashpoint("delete")
            await store.storage.sync()
    stray_list = list(strays)
    for path in stray_list:
        await store.storage.delete(path)
    if stray_list:
        await store.storage.sync()


async def stale_entries(store: Store, entries: IndexEntries, present: set[Ref]) -> IndexEntries:
    """Index entries naming objects the store lacks. Candidates are checked again against
    the store, so an object written since ``present`` was listed is not called stale."""
    cand: list[tuple[str, str, Ref]] = []
    cand += [("real", k, Ref("realisation", k)) for k in entries.realisations if is_digest(k)]
    cand += [("runs", k, Ref("run", k)) for k in entries.runs if _valid_run_id(k)]
    cand += [("drv", k, Ref("derivation", k)) for k in entries.derivations if is_digest(k)]
    cand += [("snap", c, Ref("snapshot", s)) for c, s in entries.snapshots.items() if is_digest(s)]
    cand = [c for c in cand if c[2] not in present]
    there = await store.storage.exists([c[2].path for c in cand])
    out = IndexEntries(set(), set(), set(), {})
    for (db, k, ref), ok in zip(cand, there, strict=True):
        if ok:
            continue
        match db:
            case "real":
                out.realisations.add(k)
            case "runs":
                out.runs.add(k)
            case "drv":
                out.derivations.add(k)
            case _:
                out.snapshots[k] = ref.id
    return out

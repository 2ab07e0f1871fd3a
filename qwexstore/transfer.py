"""Push and pull: move the closure of keys between two stores (spec/remotes.md).

Both directions run the same steps:

1. Plan the closure at the source (:func:`qwexstore.transfer_plan.plan_closure`). A pull
   checks every realisation's signatures against ``trust`` and validates every record
   it reads (manifests may not name escaping paths) here, BEFORE anything is written.
2. Ask the destination which of the closure's paths it already has: ONE batched
   ``exists`` call, never a round trip per object.
3. Copy what is missing, phase by phase in the write order: blobs, then manifests and
   snapshots, then derivation and run records, then signatures, each phase made durable
   (``sync``) before the next. Blobs go in parallel, largest first, each verified by
   digest (and size, where a manifest gives it) as it arrives, through a temporary name:
   nothing partial or wrong ever appears under a final name.
4. Check completeness (one more batched ``exists`` over everything the realisations'
   closures name), then write the realisations, last.

Every object is write-once and every phase idempotent, so an interrupted transfer is
resumed by running it again: what arrived is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import stat
import tempfile
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Protocol

import msgspec

from . import blobcopy
from .digest import hash_bytes, hash_file
from .errors import CorruptObject, ObjectNotFound, StoreError, UntrustedObject, UserError
from .faults import crashpoint
from .index import Index, IndexedRealisation, RunSummary
from .manifest import Manifest
from .records import Realisation
from .storage_batch import gather_all
from .store import Store
from .transfer_plan import PHASES, Closure, Item, layers, plan_closure

if TYPE_CHECKING:
    from .keys import SecretKey, Trust

__all__ = ["TransferProgress", "TransferReport", "copy_closure", "fetch_realisation", "pull", "push"]

#: Parallel copies when neither storage says how many it wants.
DEFAULT_CONCURRENCY = 8
#: Blobs up to this size are read and hashed in the event loop (a thread hop costs more).
_INLINE = 64 * 1024
#: ... up to this size, read once in a thread and sent (or, pulled, received) as bytes.
_IN_MEMORY = 1024 * 1024
#: Worker threads for small local-to-local copies (as Store.materialize_blobs).
_LOCAL_WORKERS = 8


class TransferReport(msgspec.Struct):
    """What a transfer did (or, with ``dry_run``, would do).

    ``keys``: the requested keys; ``objects``/``bytes``: objects copied and their size;
    ``skipped``: closure objects the destination already had; ``realisations``: keys whose
    realisation was written at the destination; ``paths``: the copied objects' paths;
    ``notes``: one line for each thing left out (a lost source snapshot, an untrusted
    upstream, a key realised differently at the destination)."""

    keys: list[str]
    objects: int
    bytes: int
    skipped: int
    realisations: list[str]
    paths: list[str] = msgspec.field(default_factory=list)
    notes: list[str] = msgspec.field(default_factory=list)


class TransferProgress(Protocol):
    """Told the totals once, then each object as it is stored (for progress bars)."""

    def begin(self, objects: int, nbytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...


def _concurrency(src: Store, dst: Store) -> int:
    vals = [getattr(s.storage.capabilities, "concurrency", None) for s in (src, dst)]
    given = [v for v in vals if isinstance(v, int) and v > 0]
    return max(given) if given else DEFAULT_CONCURRENCY


class _Copier:
    """Copies items from ``src`` to ``dst``, verifying each."""

    def __init__(
        self, src: Store, dst: Store, closure: Closure, progress: TransferProgress | None, untrusted: bool
    ) -> None:
        self.src, self.dst, self.closure, self.progress = src, dst, closure, progress
        self.untrusted = untrusted  # a pull: a bad object is the source's fault, not ours
        self.slots = asyncio.Semaphore(_concurrency(src, dst))
        self.tmpdir = self._tmpdir()
        self._names = itertools.count()
        self._prefix = f".qwex-tmp-{secrets.token_hex(6)}-"  # temp names: one random draw
        self.stored: set[str] = set()  # paths this transfer stored (or found stored)

    def _tmpdir(self) -> str:
        root = self.dst.local_root or self.src.local_root
        if root is None:
            return tempfile.mkdtemp(prefix="qwex-transfer-")
        d = os.path.join(root, "tmp")
        os.makedirs(d, exist_ok=True)
        return d

    def close(self) -> None:
        if self.dst.local_root is None and self.src.local_root is None:
            with contextlib.suppress(OSError):
                os.rmdir(self.tmpdir)

    async def phase(self, items: list[Item]) -> None:
        """Copy ``items`` in parallel, largest first; the first error stops the rest (all
        of them are awaited, their outcomes retrieved, before it propagates)."""
        items = sorted(items, key=lambda i: -(i.size or 0))
        if self.src.local_root is not None and self.dst.local_root is not None:
            big = [i for i in items if i.kind == "blob" and (i.size or 0) >= blobcopy.LARGE]
            small = [i for i in items if i.kind == "blob" and (i.size or 0) < blobcopy.LARGE]
            records = [i for i in items if i.kind != "blob"]
            await gather_all([*(self._one(i) for i in big), self._local_blobs(small),
                              *(self._one(i) for i in records)])
            return
        await gather_all(self._one(i) for i in items)

    async def _one(self, it: Item) -> None:
        async with self.slots:
            if it.kind == "blob":
                try:
                    await self._blob(it)
                except CorruptObject as e:
                    raise self._blame(it, e) from None
            else:
                await self.dst.storage.put(it.path, self.closure.records[it.path])
            self._done(it)

    def _done(self, it: Item) -> None:
        self.stored.add(it.path)
        crashpoint("transfer")
        if self.progress is not None:
            self.progress.advance(it.size or 0)

    def _blame(self, it: Item, e: CorruptObject) -> Exception:
        if not self.untrusted:
            return e
        return UntrustedObject(f"{self.src.location.rstrip('/')}/{it.path}",
                               f"its content hashes to {e.actual}, not to its name")

    async def _local_blobs(self, items: list[Item]) -> None:
        """Local to local: small blobs copied, verified and published by a pool of worker
        threads (system calls release the GIL), one event-loop hop for all of them."""
        if not items:
            return
        s_root, d_root = self.src.local_root, self.dst.local_root
        assert s_root is not None and d_root is not None
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def one(it: Item) -> None:
            if stop.is_set():
                return
            src, final = os.path.join(s_root, it.path), os.path.join(d_root, it.path)
            if os.path.lexists(final):  # another writer got there first: write-once
                loop.call_soon_threadsafe(self._done, it)
                return
            tmp = self._temp()
            try:
                mode = _regular_of_size(src, it) & 0o555
                blobcopy.copy_verified(src, tmp, it.digest or "?", mode=mode, where=it.path)
                _check_size(tmp, it)
                try:
                    os.link(tmp, final)
                except FileNotFoundError:
                    os.makedirs(os.path.dirname(final), exist_ok=True)
                    with contextlib.suppress(FileExistsError):
                        os.link(tmp, final)
                except FileExistsError:
                    pass
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            loop.call_soon_threadsafe(self._done, it)

        def run_all() -> None:
            with ThreadPoolExecutor(_LOCAL_WORKERS, thread_name_prefix="qwex-push") as pool:
                futures = [pool.submit(one, it) for it in items]
                try:
                    for f, it in zip(futures, items, strict=True):
                        try:
                            f.result()
                        except CorruptObject as e:
                            raise self._blame(it, e) from None
                finally:
                    stop.set()

        try:
            await asyncio.shield(fut := asyncio.ensure_future(asyncio.to_thread(run_all)))
        except asyncio.CancelledError:
            stop.set()  # no new file starts; return once no worker writes any more
            with contextlib.suppress(BaseException):
                await fut
            raise

    def _temp(self) -> str:
        return os.path.join(self.tmpdir, f"{self._prefix}{next(self._names)}")

    async def _blob(self, it: Item) -> None:
        if it.digest is None:  # pragma: no cover - plan_closure names every blob by digest
            raise StoreError(f"{it.path}: a blob without a digest")
        s_root, d_root = self.src.local_root, self.dst.local_root
        if s_root is not None and d_root is None:
            # Push from a local store: hash the file as it is read, then send it as is
            # (store blobs are read-only and write-once, so it cannot change in between).
            path = os.path.join(s_root, it.path)
            if (it.size or 0) <= _INLINE:  # read and hash in the loop: cheaper than a thread hop
                await self.dst.storage.put(it.path, _read_verified(path, it))
            elif (it.size or 0) <= _IN_MEMORY:  # read once, in a thread; send the bytes hashed
                await self.dst.storage.put(it.path, await asyncio.to_thread(_read_verified, path, it))
            else:
                await asyncio.to_thread(_check_file, path, it)
                await self.dst.storage.put_file(it.path, path, consume=False)
            return
        tmp = self._temp()
        try:
            if s_root is not None:  # local to local: copy and hash at once
                path = os.path.join(s_root, it.path)
                mode = _regular_of_size(path, it) & 0o555
                await asyncio.to_thread(
                    blobcopy.copy_verified, path, tmp, it.digest, mode=mode, where=it.path)
                _check_size(tmp, it)
            elif it.size is not None and it.size <= _IN_MEMORY:
                data = await self.src.storage.get(it.path, limit=it.size)  # an endless object stops here
                _check_bytes(data, it)
                with open(tmp, "wb") as f:  # durable at the phase's sync, not per object
                    f.write(data)
            else:
                await self.src.storage.get_file(it.path, tmp)
                await asyncio.to_thread(_check_file, tmp, it)
            await self.dst.storage.put_file(it.path, tmp, consume=True)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _check_present_sizes(root: str, closure: Closure, there: dict[str, bool]) -> None:
    """A pull: a blob we already have must have the size the remote's manifests claim
    (else they lie about it, and the realisation naming them must not be written)."""
    for path, it in closure.items.items():
        if it.kind == "blob" and there[path] and it.size is not None:
            actual = os.stat(os.path.join(root, path)).st_size
            if actual != it.size:
                raise UntrustedObject(path, f"a manifest says {it.size} bytes; the blob has {actual}")


def _regular_of_size(path: str, it: Item) -> int:
    """The mode of the source object ``path``, a regular file of the size its manifest
    says; else StoreError or CorruptObject before a byte is read (a directory remote may
    hold a FIFO, a link to a device, or an oversized file under the object's name)."""
    st = os.stat(path, follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{path} is not a regular file")
    if it.size is not None and st.st_size != it.size:
        raise CorruptObject(it.path, it.digest or "?", f"an object of {st.st_size} bytes, not {it.size}")
    return st.st_mode


def _check_size(path: str, it: Item) -> None:
    if it.size is not None and os.stat(path).st_size != it.size:
        raise CorruptObject(it.path, it.digest or "?", hash_file(path))


def _check_bytes(data: bytes, it: Item) -> None:
    """CorruptObject naming the object unless ``data`` has its size and digest."""
    actual = hash_bytes(data)
    if actual != it.digest or (it.size is not None and len(data) != it.size):
        raise CorruptObject(it.path, it.digest or "?", actual)


def _read_verified(path: str, it: Item) -> bytes:
    """The bytes of the file ``path``, read once, checked against the item's size and
    digest (CorruptObject otherwise): what is sent is what was hashed."""
    with open(path, "rb") as f:
        data = f.read()
    _check_bytes(data, it)
    return data


def _check_file(path: str, it: Item) -> None:
    """CorruptObject naming the object unless the file has its size and digest."""
    _check_size(path, it)
    actual = hash_file(path)
    if actual != it.digest:
        raise CorruptObject(it.path, it.digest or "?", actual)


async def _transfer(
    src: Store, dst: Store, closure: Closure, keys: Sequence[str], progress: TransferProgress | None,
    dry_run: bool, *, untrusted: bool = False,
) -> TransferReport:
    items = closure.items
    paths = list(items)
    there = dict(zip(paths, await dst.storage.exists(paths), strict=True))
    notes = list(closure.skipped)
    # A key realised at the destination with another output (a non-deterministic job
    # built twice): theirs stays, and our signatures (over our manifest) do not go there.
    for key, real in closure.reals.items():
        path = Store.realisation_path(key)
        if there[path]:
            theirs = await dst.get_realisation(key)
            if theirs is not None and theirs.manifest != real.manifest:
                notes.append(f"{key} is realised at {dst.location} with another manifest; kept theirs")
                for p in [p for p, it in items.items() if it.kind == "signature" and key.split(":")[1] in p]:
                    there[p] = True
    if untrusted and dst.local_root is not None:
        await asyncio.to_thread(_check_present_sizes, dst.local_root, closure, there)
    missing = [items[p] for p in paths if not there[p]]
    report = TransferReport(
        keys=list(keys), objects=len(missing), bytes=sum(i.size or 0 for i in missing),
        skipped=len(paths) - len(missing),
        realisations=sorted(i.digest for i in missing if i.kind == "realisation" and i.digest),
        paths=sorted(i.path for i in missing), notes=notes,
    )
    if dry_run or not missing:
        return report
    if progress is not None:
        progress.begin(report.objects, report.bytes)
    copier = _Copier(src, dst, closure, progress, untrusted)
    try:
        for kinds in PHASES:
            batch = [i for i in missing if i.kind in kinds]
            if kinds == ("realisation",) and batch:
                await _check_complete(dst, closure, batch, copier.stored)
            for layer in layers(batch, closure.edges):
                await copier.phase(layer)
                await dst.storage.sync()
    finally:
        copier.close()
    return report


def _gc_held(dst: Store, dry_run: bool) -> contextlib.AbstractAsyncContextManager[object]:
    """The destination's gc lock, shared, while objects arrive that no realisation names
    yet: a gc of a local destination must not sweep them (a remote one keeps them for its
    grace window instead, spec/gc.md)."""
    root = dst.local_root
    if root is None or dry_run:
        return contextlib.nullcontext()
    from .liveroots import GcLock

    return GcLock(os.path.join(root, "tmp"), exclusive=False)


async def _check_complete(dst: Store, closure: Closure, reals: list[Item], stored: set[str]) -> None:
    """Every object the realisations' closures name exists at ``dst`` (one batched call
    over those this transfer did not itself just store: a write that returned is there)."""
    need = sorted(set().union(*(closure.needs[i.path] for i in reals)) - stored)
    for path, ok in zip(need, await dst.storage.exists(need), strict=True):
        if not ok:
            raise StoreError(f"incomplete closure at {dst.location}: {path} is missing; "
                             "no realisation was written (run the transfer again)")


async def push(
    src: Store, dst: Store, keys: Sequence[str], *, signer: SecretKey | None = None,
    progress: TransferProgress | None = None, dry_run: bool = False,
) -> TransferReport:
    """Copy the closure of ``keys`` from ``src`` (the local store) to ``dst``.

    With ``signer``, every realisation in the closure gets our signature first (written at
    ``src``, write-once, so it moves with the rest). Raises UserError for a key not
    realised at ``src``, StoreError subclasses for a damaged closure or a failing
    destination (TransientStoreError: run it again to resume)."""
    closure = await plan_closure(src, keys)
    if signer is not None and not dry_run:
        from .signing import sign_realisation

        signed = [await sign_realisation(src, real, signer) for real in closure.reals.values()]
        if any(signed):
            closure = await plan_closure(src, keys)
    async with _gc_held(dst, dry_run):
        return await _transfer(src, dst, closure, keys, progress, dry_run)


async def copy_closure(
    src: Store, dst: Store, closure: Closure, *, progress: TransferProgress | None = None,
    dry_run: bool = False,
) -> TransferReport:
    """Copy a planned closure without realisations (a job closure:
    :func:`qwexstore.transfer_plan.plan_job_closure`) from ``src`` to ``dst``, by the steps
    of a push: one batched ``exists``, then the missing objects phase by phase, verified,
    under ``dst``'s shared gc lock. Errors as :func:`push`."""
    async with _gc_held(dst, dry_run):
        return await _transfer(src, dst, closure, [], progress, dry_run)


async def pull(
    src: Store, dst: Store, keys: Sequence[str], *, trust: Trust, index: Index | None = None,
    progress: TransferProgress | None = None, dry_run: bool = False, strict: bool = True,
) -> TransferReport:
    """Copy the closure of ``keys`` from ``src`` (a remote) into ``dst`` (the local store).

    Every requested realisation must carry a signature by a key ``trust`` accepts, and
    every record must be well formed; both are checked before anything is written
    (UntrustedObject, CorruptObject naming the object). Signature objects that do not
    verify are not copied. With ``index``, what was pulled is indexed afterwards. Without
    ``strict`` (``--all``), untrusted realisations are left out (and noted) instead."""
    closure = await plan_closure(src, keys, trust=trust, strict=strict)
    _drop_invalid_signatures(closure)
    async with _gc_held(dst, dry_run):
        report = await _transfer(src, dst, closure, keys, progress, dry_run, untrusted=True)
        if index is not None and not dry_run:
            await index_closure(dst, index, closure)
    return report


def _drop_invalid_signatures(closure: Closure) -> None:
    """Keep only signature objects that verify over their realisation (a remote may hold
    junk there; a signature is only worth copying if a third lab could accept it)."""
    for path in [p for p, it in closure.items.items() if it.kind == "signature"]:
        hexkey = path.split("/")[2]
        real = closure.reals.get(f"blake3:{hexkey}")
        if real is None or not _signature_valid(path, closure.records[path], real):
            del closure.items[path]


def _signature_valid(path: str, data: bytes, real: Realisation) -> bool:
    """The object at ``path`` is a signature over ``real`` that verifies under the public
    key it names, stored under that key's signer id."""
    from . import canonical
    from .keys import parse_public_key
    from .records import Signature, decode_sig
    from .signing import signed_bytes

    try:
        sig = canonical.decode(data, Signature)
        sig.validate()
        pub = parse_public_key(sig.signer)
        raw = decode_sig(sig.sig)
    except (ValueError, UserError, msgspec.ValidationError, msgspec.DecodeError):
        return False  # malformed in any way: not worth copying
    return (sig.key == real.key and sig.manifest == real.manifest and path.rsplit("/", 1)[-1] == pub.id
            and pub.verify(signed_bytes(sig.key, sig.manifest), raw))


async def index_closure(store: Store, index: Index, closure: Closure) -> None:
    """Index the closure's realisations, runs, derivations and snapshots (now in ``store``)."""
    from .reindex import indexed_realisation, run_summary, write_entries

    reals: list[tuple[str, IndexedRealisation]] = []
    for key in closure.reals:
        real = await store.get_realisation(key)  # ours: T7 may have kept another manifest
        if real is not None:
            reals.append((key, indexed_realisation(real, await store.get_manifest(real.manifest))))
    runs: list[tuple[str, RunSummary]] = []
    drvs: list[tuple[str, str]] = []
    snaps: list[tuple[str, str]] = []
    for it in closure.items.values():
        if it.kind == "run":
            run = await store.get_run(it.path.rsplit("/", 1)[-1])
            runs.append((run.run_id, run_summary(run)))
        elif it.kind == "derivation" and it.digest is not None:
            drvs.append((it.digest, (await store.get_derivation(it.digest)).name))
        elif it.kind == "snapshot" and it.digest is not None:
            snaps.append(((await store.get_snapshot(it.digest)).commit, it.digest))
    write_entries(index, reals, runs, drvs, snaps)


async def fetch_realisation(src: Store, key: str, *, trust: Trust) -> tuple[Realisation, Manifest] | None:
    """For substitution: ``key``'s realisation at ``src`` and its manifest, verified and
    validated; None if ``src`` does not realise ``key``. UntrustedObject if no trusted
    signature covers it or a record is malformed; CorruptObject for a wrong digest."""
    from .signing import check_trusted

    try:
        real = await src.get_realisation(key)
    except CorruptObject:
        raise
    except StoreError as e:
        raise UntrustedObject(Store.realisation_path(key), f"malformed: {e}") from None
    if real is None:
        return None
    await check_trusted(src, real, trust, src.location)
    try:
        await src.get_run_of(real)  # what checkout and show will read must agree with what is signed
    except CorruptObject:
        raise
    except StoreError as e:
        raise UntrustedObject(Store.run_path(real.run_id), str(e)) from None
    try:
        manifest = await src.get_manifest(real.manifest)
    except CorruptObject:
        raise
    except StoreError as e:
        raise UntrustedObject(Store.manifest_path(real.manifest), f"malformed: {e}") from None
    # The outputs are fetched later, when needed: they must be there to fetch (one batched
    # check), or the hit would be a result nobody can ever check out.
    blobs = sorted({Store.blob_path(e.digest) for e in manifest.files()})
    for path, there in zip(blobs, await src.storage.exists(blobs), strict=True):
        if not there:
            raise ObjectNotFound(path)
    return real, manifest

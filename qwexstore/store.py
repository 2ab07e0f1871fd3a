"""The store: a self-describing tree of objects on any :class:`Storage` (spec/store.md).

Layout (format version 2)::

    qwex-store.json                 {"format": "qwex-store", "version": 2}
    blobs/<h2>/<hex>                raw content: output files, inputs, logs, source bundles
    manifests/<h2>/<hex>            canonical manifest bytes
    snapshots/<h2>/<hex>            canonical snapshot bytes
    derivations/<h2>/<hex>          derivation records (the hash is over the derivation)
    runs/<run-id>                   run records, one per execution
    realisations/<h2>/<key-hex>     realisations: key -> output manifest
    signatures/<h2>/<key-hex>/<id>  signatures of a realisation, one per signer (write-once;
                                    <id>: 32 hex digits of blake3 of the public key)
    pins/<h2>/<key-hex>             pins: gc roots that ``--older-than`` never drops (pins.py)
    leases/<h2>/<key-hex>           mutable lease refs (spec/locks.md; Storage.ref_* only)
    refs/                           reserved for other mutable refs
    tmp/                            scratch (temporary files, work dirs); never read

``<h2>`` is the first two hex digits. Every name is derivable from a digest or run id, so
the layout is listable by prefix and needs no server-side index.

Write order (MUST): blobs, then manifests and snapshots, then the derivation record and
run record, then the realisation; each stage is durable (``Storage.sync``) before the next
starts. Signatures SHOULD precede the realisation they sign (a reader then never meets
it unsigned) and MAY be added at any time after it. Everything outside ``leases/`` and
``refs/`` is write-once. Readers verify content against names (:class:`CorruptObject`).

Reading records (``get_run``, ``get_derivation``, ``get_manifest``, ``get_realisation``,
``open_store``) from a local store never suspends, so :func:`qwexstore.syncrun.run_now`
runs them without an event loop; this module imports asyncio, threads and
:mod:`qwexstore.blobcopy` only in the methods that copy blobs (``qwex show`` never loads them).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Final, TypeVar

import msgspec

from . import canonical
from .derivation import derivation_hash
from .digest import hash_bytes, hash_tagged, hex_of
from .errors import CorruptObject, ObjectNotFound, StoreError, UserError
from .faults import crashpoint
from .manifest import Manifest
from .records import DerivationRecord, Realisation, RunRecord, Signature, Snapshot
from .storage import LocalStorage, Storage, open_storage

__all__ = ["STORE_VERSION", "BlobTarget", "Store", "open_store", "open_store_on"]

T = TypeVar("T")

STORE_VERSION: Final = 2
_VERSION_FILE: Final = "qwex-store.json"

#: Worker threads that copy blobs out of a local store (see materialize_blobs).
_COPY_WORKERS: Final = 2


class BlobTarget(msgspec.Struct, frozen=True):
    """One file to materialize: the blob's digest, the absolute destination path (absent;
    its directory exists), and the entry's executable bit."""

    digest: str
    dest: str
    executable: bool


class _StoreInfo(msgspec.Struct):
    format: str
    version: int


def _fan(kind: str, digest: str) -> str:
    h = hex_of(digest)
    return f"{kind}/{h[:2]}/{h}"


class Store:
    """Typed access to one store. Create with :func:`open_store`. Holds no open files."""

    def __init__(self, storage: Storage, location: str) -> None:
        self.storage = storage
        self.location = location

    @property
    def local_root(self) -> str | None:
        """The store's directory when it is local (hard links and renames work into it)."""
        return self.storage.capabilities.local_root

    # -- paths -------------------------------------------------------------------------
    @staticmethod
    def blob_path(digest: str) -> str:
        return _fan("blobs", digest)

    @staticmethod
    def manifest_path(digest: str) -> str:
        return _fan("manifests", digest)

    @staticmethod
    def snapshot_path(digest: str) -> str:
        return _fan("snapshots", digest)

    @staticmethod
    def derivation_path(digest: str) -> str:
        return _fan("derivations", digest)

    @staticmethod
    def realisation_path(key: str) -> str:
        return _fan("realisations", key)

    @staticmethod
    def signature_prefix(key: str) -> str:
        """The directory holding every signature of ``key``'s realisation."""
        return _fan("signatures", key)

    @staticmethod
    def signature_path(key: str, signer_id: str) -> str:
        """Where ``signer_id``'s signature of ``key``'s realisation lives."""
        return f"{_fan('signatures', key)}/{signer_id}"

    @staticmethod
    def run_path(run_id: str) -> str:
        return f"runs/{run_id}"

    @staticmethod
    def pin_path(key: str) -> str:
        return _fan("pins", key)

    # -- blobs -------------------------------------------------------------------------
    async def put_blob(self, data: bytes) -> str:
        """Store raw bytes; return their digest. Idempotent."""
        digest = hash_bytes(data)
        await self.storage.put(self.blob_path(digest), data)
        return digest

    async def get_blob(self, digest: str) -> bytes:
        """Raw bytes of a blob, verified against its digest."""
        path = self.blob_path(digest)
        data = await self.storage.get(path)
        actual = hash_bytes(data)
        if actual != digest:
            raise CorruptObject(path, digest, actual)
        return data

    async def materialize_blob(
        self, digest: str, dest: str, *, executable: bool, read_only: bool = False, link: bool = False
    ) -> None:
        """Write blob ``digest`` as the file ``dest``, verified (R1, R6; qwexstore/blobcopy.py).

        ``dest`` must not exist and its directory must. The file is a copy, mode 0644/0755
        (0444/0555 with ``read_only``), published only once its bytes hash to ``digest``;
        with ``link`` (a local store only) it is a hard link to the verified blob instead.
        Raises ObjectNotFound, CorruptObject (nothing is left under ``dest``), UserError if
        ``dest`` exists.
        """
        await self.materialize_blobs([BlobTarget(digest, dest, executable)], read_only=read_only, link=link)

    async def materialize_blobs(
        self, targets: Sequence[BlobTarget], *, read_only: bool = False, link: bool = False
    ) -> None:
        """:meth:`materialize_blob` for many files. A local store copies in a small pool of
        worker threads (copying many small files is system calls, which release the GIL;
        measured as fast as ``cp -r``, benchmarks/README.md);
        other storages transfer each object raw (``Storage.get_file``) to a temporary name,
        then verify it. The first error stops the rest and is raised; files already
        published stay (callers write into a directory they remove on error). Cancelled,
        it returns only once no worker is writing any more."""
        from . import blobcopy  # threads and mmap: only copying blobs needs them

        root = self.local_root
        mode_for = {x: blobcopy.file_mode(x, read_only or link) for x in (False, True)}
        if root is None:
            for t in targets:
                await self._fetch_verified(t, mode_for[t.executable])
            return

        import asyncio
        import threading
        from concurrent.futures import ThreadPoolExecutor

        stop = threading.Event()  # set on cancellation: start no further file

        def one(t: BlobTarget) -> None:
            if stop.is_set():
                return
            src = os.path.join(root, self.blob_path(t.digest))
            where = self.blob_path(t.digest)
            crashpoint("materialize")
            if link:
                blobcopy.link_verified(src, t.dest, t.digest, executable=t.executable, where=where)
            else:
                blobcopy.copy_verified(src, t.dest, t.digest, mode=mode_for[t.executable], where=where)

        def run_all() -> None:
            if len(targets) < 2 * _COPY_WORKERS:
                for t in targets:
                    one(t)
                return
            with ThreadPoolExecutor(_COPY_WORKERS, thread_name_prefix="qwex-copy") as pool:
                futures = [pool.submit(one, t) for t in targets]
                try:
                    for f in futures:
                        f.result()
                finally:
                    for f in futures:
                        f.cancel()

        work = asyncio.ensure_future(asyncio.to_thread(run_all))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            # Let the threads finish the file in hand before the caller removes the
            # directory they write into, then let the cancellation proceed.
            stop.set()
            with contextlib.suppress(BaseException):
                await work
            raise

    async def _fetch_verified(self, t: BlobTarget, mode: int) -> None:
        """A non-local store: raw transfer to a temporary name, verify, publish."""
        import asyncio

        from . import blobcopy

        where = self.blob_path(t.digest)
        tmp = blobcopy.temp_name(os.path.dirname(t.dest))
        try:
            await self.storage.get_file(where, tmp)
            await asyncio.to_thread(blobcopy.verify_file, tmp, t.digest, where)
            os.chmod(tmp, mode)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        crashpoint("materialize")
        blobcopy.publish(tmp, t.dest)

    # -- typed, content-addressed records -----------------------------------------------
    async def put_manifest(self, manifest: Manifest) -> str:
        digest = manifest.digest()
        await self.storage.put(self.manifest_path(digest), manifest.canonical())
        crashpoint("manifest")
        return digest

    async def get_manifest(self, digest: str) -> Manifest:
        """A manifest, verified against its digest and validated (paths cannot escape)."""
        path = self.manifest_path(digest)
        m = await self._get_tagged("manifest", path, digest, Manifest)
        try:
            m.validate()
        except ValueError as e:
            raise StoreError(f"invalid manifest {path}: {e}") from None
        return m

    async def put_snapshot(self, snapshot: Snapshot) -> str:
        digest = snapshot.digest()
        await self.storage.put(self.snapshot_path(digest), snapshot.canonical())
        return digest

    async def get_snapshot(self, digest: str) -> Snapshot:
        return await self._get_tagged("snapshot", self.snapshot_path(digest), digest, Snapshot)

    async def _get_tagged(self, kind: str, path: str, digest: str, typ: type[T]) -> T:
        """Read a tagged-hash object and check its bytes against ``digest``."""
        data = await self.storage.get(path)
        actual = hash_tagged(kind, data)
        if actual != digest:
            raise CorruptObject(path, digest, actual)
        return _decode(path, data, typ)

    async def put_derivation(self, record: DerivationRecord) -> str:
        """Store a derivation record under its derivation's hash (first writer wins)."""
        digest = derivation_hash(record.derivation)
        await self.storage.put(self.derivation_path(digest), canonical.encode(record))
        return digest

    async def get_derivation(self, digest: str) -> DerivationRecord:
        path = self.derivation_path(digest)
        record = _decode(path, await self.storage.get(path), DerivationRecord)
        actual = derivation_hash(record.derivation)
        if actual != digest:
            raise CorruptObject(path, digest, actual)
        return record

    # -- runs and realisations ------------------------------------------------------------
    async def put_run(self, run: RunRecord) -> None:
        await self.storage.put(self.run_path(run.run_id), canonical.encode(run))
        crashpoint("run")

    async def get_run(self, run_id: str) -> RunRecord:
        path = self.run_path(run_id)
        return _decode(path, await self.storage.get(path), RunRecord)

    async def get_run_of(self, real: Realisation) -> RunRecord:
        """The run record ``real`` names, checked to agree with it (spec/store.md R8): the
        same key and output manifest, and a successful run. A signature covers only the key
        and the manifest, so a run record (which checkout, show and log read) is trusted
        only through this agreement; StoreError if it does not hold."""
        run = await self.get_run(real.run_id)
        if run.key != real.key or run.manifest != real.manifest or run.status != "succeeded":
            raise StoreError(
                f"run record {self.run_path(real.run_id)} does not match the realisation of {real.key} "
                f"(it records key {run.key}, manifest {run.manifest}, {run.status})"
            )
        return run

    async def put_realisation(self, real: Realisation) -> bool:
        """Write a realisation. The caller MUST have made everything it names durable."""
        written = await self.storage.put(self.realisation_path(real.key), canonical.encode(real))
        crashpoint("realisation")
        return written

    async def put_signature(self, sig: Signature) -> bool:
        """Write a signature at its path (write-once; False if one is there already).
        ValueError if ``sig.signer`` is malformed (its id names the object)."""
        return await self.storage.put(self.signature_path(sig.key, sig.signer_id()), canonical.encode(sig))

    async def get_signature(self, path: str) -> Signature:
        """The signature object at ``path``, decoded only: StoreError if it does not
        decode or does not belong at ``path``. Verifying it is qwexstore.signing's."""
        sig = _decode(path, await self.storage.get(path), Signature)
        try:
            sig.validate()
        except ValueError as e:
            raise StoreError(f"unreadable object {path}: {e}") from None
        at = self.signature_path(sig.key, sig.signer_id())
        if at != path:
            raise StoreError(f"unreadable object {path}: it belongs at {at}")
        return sig

    async def get_realisation(self, key: str) -> Realisation | None:
        path = self.realisation_path(key)
        try:
            data = await self.storage.get(path)
        except ObjectNotFound:
            return None
        real = _decode(path, data, Realisation)
        if real.key != key:
            raise CorruptObject(path, key, real.key)
        return real


def _decode(path: str, data: bytes, typ: type[T]) -> T:
    try:
        return canonical.decode(data, typ)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise StoreError(f"unreadable object {path}: {e}") from None


async def open_store(location: str, *, create: bool = True) -> Store:
    """Open (and with ``create``, initialise) the store at a path or URL (:func:`open_storage`).

    Raises StoreError if the location holds a store of an unknown format or version.
    """
    return await open_store_on(open_storage(location), location, create=create)


async def open_store_on(storage: Storage, location: str, *, create: bool) -> Store:
    """:func:`open_store` on an opened storage (a remote's, with its endpoint and profile).

    Without ``create``, a location holding no store is the UserError "no qwex store at X"
    (a typo in a URL is the usual cause); with it, an empty store is initialised there.
    Raises StoreError for a store of another format or version.
    """
    if isinstance(storage, LocalStorage) and create:
        os.makedirs(storage.root, exist_ok=True)
    try:
        info = canonical.decode(await storage.get(_VERSION_FILE), _StoreInfo)
    except ObjectNotFound:
        if not create:
            raise UserError(f"no qwex store at {location}") from None
        info = _StoreInfo(format="qwex-store", version=STORE_VERSION)
        await storage.put(_VERSION_FILE, canonical.encode(info))
    except (msgspec.ValidationError, msgspec.DecodeError):
        raise StoreError(f"{location}/{_VERSION_FILE} is not a qwex store version file") from None
    if info.format != "qwex-store" or info.version != STORE_VERSION:
        hint = ""
        if info.format == "qwex-store" and info.version == 1:
            hint = " (version 2 moved signatures out of realisations; build into a new store)"
        raise StoreError(
            f"{location} is a {info.format} store of version {info.version}; "
            f"this qwex reads version {STORE_VERSION}{hint}"
        )
    return Store(storage, location)

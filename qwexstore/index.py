"""The local index: an LMDB accelerator over one store (spec/index.md).

It holds nothing that cannot be rebuilt from the store (``qwex index rebuild``), except the
stat cache, which is only ever a hint. Sub-databases (keys are ASCII, values msgpack):

==============  =====================  ============================================
name            key                    value
==============  =====================  ============================================
``real``        key hex                :class:`IndexedRealisation`
``runs``        run id (time-sorted)   :class:`RunSummary`
``drv``         derivation hash hex    derivation name (UTF-8)
``snap``        commit oid hex         snapshot digest (ASCII)
``stat``        absolute path          :class:`StatEntry`
==============  =====================  ============================================

Entries are written after the store objects they describe (the store is the truth). One
write transaction per build keeps the cost at a single fsync.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Final

import lmdb
import msgspec

from .digest import hash_bytes, hex_of
from .errors import KeyLookupError, StoreError
from .faults import crashpoint

__all__ = ["Index", "IndexEntries", "IndexWriter", "IndexedRealisation", "RunSummary", "StatEntry"]

_MAP_SIZE: Final = 1 << 36  # 64 GiB of address space; the file grows only as used
_DBS: Final = (b"real", b"runs", b"drv", b"snap", b"stat")


class IndexedRealisation(msgspec.Struct, array_like=True):
    """A realisation plus a summary of its outputs (the first paths and sizes), so a cache
    hit can report without reading the store.

    ``remote``: the substituter (a remote's name) that holds the realisation, when this
    store does not hold it yet (spec/remotes.md, "Substitution"); None for a realisation in
    this store. A trailing optional field: entries written before it decode with None."""

    manifest: str
    run_id: str
    created_ns: int
    files: int
    size: int
    listing: list[tuple[str, int]]
    remote: str | None = None


class RunSummary(msgspec.Struct, array_like=True):
    key: str
    name: str
    status: str
    exit_code: int | None
    started_ns: int
    finished_ns: int


class IndexEntries(msgspec.Struct):
    """What the index names: realised keys, run ids, derivation hashes, commit -> snapshot.

    ``realisations`` are the keys this store realises; ``substituted`` (key -> remote) the
    keys only a substituter holds, which name no object of this store, so gc and verify
    leave them alone (they are neither stale nor damage)."""

    realisations: set[str]
    runs: set[str]
    derivations: set[str]
    snapshots: dict[str, str]
    substituted: dict[str, str] = msgspec.field(default_factory=dict)


class StatEntry(msgspec.Struct, array_like=True):
    """A file's stat fingerprint and the digest it had then. Any change means re-hash."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    digest: str

    @classmethod
    def of(cls, st: os.stat_result, digest: str) -> StatEntry:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest)

    def matches(self, st: os.stat_result) -> bool:
        return (self.dev, self.ino, self.size, self.mtime_ns, self.ctime_ns) == (
            st.st_dev,
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
            st.st_ctime_ns,
        )


def _stat_key(path: str) -> bytes:
    """The stat cache key: the path, or a digest of it past LMDB's 511-byte key limit."""
    raw = path.encode("utf-8", errors="surrogateescape")
    return raw if len(raw) <= 480 else b"\0blake3:" + hash_bytes(raw).encode()


_enc = msgspec.msgpack.Encoder()
_real_dec = msgspec.msgpack.Decoder(IndexedRealisation)
_run_dec = msgspec.msgpack.Decoder(RunSummary)
_stat_dec = msgspec.msgpack.Decoder(StatEntry)


class Index:
    """An open LMDB environment. Safe across processes; close() when done."""

    def __init__(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        self.path = path
        try:
            self.env = lmdb.open(path, map_size=_MAP_SIZE, max_dbs=len(_DBS), subdir=True)
            self._db = {name.decode(): self.env.open_db(name) for name in _DBS}
        except lmdb.Error as e:
            raise StoreError(
                f"the index {path} is unreadable ({type(e).__name__}: {str(e).split(':')[0]}); "
                "`qwex index rebuild` recreates it from the store"
            ) from None

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads ---------------------------------------------------------------------------
    def realisation(self, key: str) -> IndexedRealisation | None:
        """The indexed realisation of a key (``blake3:<hex>``), or None."""
        with self.env.begin(db=self._db["real"]) as txn:
            raw = txn.get(hex_of(key).encode())
        return None if raw is None else _real_dec.decode(raw)

    def run(self, run_id: str) -> RunSummary | None:
        with self.env.begin(db=self._db["runs"]) as txn:
            raw = txn.get(run_id.encode())
        return None if raw is None else _run_dec.decode(raw)

    def recent_runs(self, limit: int) -> list[tuple[str, RunSummary]]:
        """Newest runs first (run ids sort by start time)."""
        out: list[tuple[str, RunSummary]] = []
        if limit <= 0:
            return out
        with self.env.begin(db=self._db["runs"]) as txn:
            cur = txn.cursor()
            if not cur.last():
                return out
            for k, v in cur.iterprev():
                out.append((k.decode(), _run_dec.decode(v)))
                if len(out) >= limit:
                    break
        return out

    def runs_of(self, key: str) -> list[tuple[str, RunSummary]]:
        """Every indexed run of a key, oldest first (a scan: used by ``show``/``log``)."""
        with self.env.begin(db=self._db["runs"]) as txn:
            return [(k.decode(), s) for k, v in txn.cursor() if (s := _run_dec.decode(v)).key == key]

    def snapshot_of(self, commit: str) -> str | None:
        with self.env.begin(db=self._db["snap"]) as txn:
            raw = txn.get(commit.encode())
        return None if raw is None else raw.decode()

    def stat(self, path: str) -> StatEntry | None:
        with self.env.begin(db=self._db["stat"]) as txn:
            raw = txn.get(_stat_key(path))
        return None if raw is None else _stat_dec.decode(raw)

    def has_derivation(self, digest: str) -> bool:
        with self.env.begin(db=self._db["drv"]) as txn:
            return txn.get(hex_of(digest).encode()) is not None

    def resolve_prefix(
        self, prefix: str, kinds: tuple[str, ...] = ("real", "drv", "runs")
    ) -> tuple[str, str]:
        """Find the one key, derivation hash or run id starting with ``prefix``.

        Accepts ``blake3:`` prefixed or bare hex. Returns (kind, full id) where kind is
        ``real``, ``drv`` or ``runs``; raises KeyLookupError if none or several match. A
        derivation without ``drv`` inputs has its key as its hash: that is one match, and
        the earlier kind in ``kinds`` names it.
        """
        bare = prefix.removeprefix("blake3:")
        if not bare:
            raise KeyLookupError(prefix, "empty key prefix")
        found: dict[str, str] = {}
        with self.env.begin() as txn:
            for kind in kinds:
                cur = txn.cursor(db=self._db[kind])
                if not cur.set_range(bare.encode()):
                    continue
                for k in cur.iternext(values=False):
                    ks = k.decode()
                    if not ks.startswith(bare):
                        break
                    full = ks if kind == "runs" else f"blake3:{ks}"
                    found.setdefault(full, kind)
                    if len(found) > 5:
                        break
        if not found:
            raise KeyLookupError(prefix, f"no key, derivation or run matches {prefix!r}")
        if len(found) > 1:
            shown = ", ".join(sorted(found)[:5])
            raise KeyLookupError(prefix, f"{prefix!r} is ambiguous; it matches {shown}", tuple(sorted(found)))
        ((full, kind),) = found.items()
        return kind, full

    def count(self, db: str) -> int:
        with self.env.begin(db=self._db[db]) as txn:
            return int(txn.stat(self._db[db])["entries"])

    # -- writes ---------------------------------------------------------------------------
    def writer(self) -> IndexWriter:
        """A write transaction; commits on clean exit of the ``with`` block."""
        return IndexWriter(self)

    def iter_realisations(self) -> Iterator[tuple[str, IndexedRealisation]]:
        with self.env.begin(db=self._db["real"]) as txn:
            for k, v in txn.cursor():
                yield "blake3:" + k.decode(), _real_dec.decode(v)

    def entries(self) -> IndexEntries:
        """Every key of ``real``, ``runs``, ``drv`` and ``snap`` (one read transaction), so
        that gc and verify can make the index agree with the store."""
        with self.env.begin() as txn:
            def keys(db: str) -> list[str]:
                return [k.decode() for k in txn.cursor(db=self._db[db]).iternext(values=False)]

            snaps = {k.decode(): v.decode() for k, v in txn.cursor(db=self._db["snap"])}
            reals: set[str] = set()
            substituted: dict[str, str] = {}
            for k, v in txn.cursor(db=self._db["real"]):
                remote = _real_dec.decode(v).remote
                if remote is None:
                    reals.add(f"blake3:{k.decode()}")
                else:
                    substituted[f"blake3:{k.decode()}"] = remote
            return IndexEntries(
                realisations=reals,
                runs=set(keys("runs")),
                derivations={f"blake3:{k}" for k in keys("drv")},
                snapshots=snaps,
                substituted=substituted,
            )


class IndexWriter:
    """Batches index writes into one LMDB transaction (one fsync)."""

    def __init__(self, index: Index) -> None:
        self._index = index
        self._txn: lmdb.Transaction | None = None

    def __enter__(self) -> IndexWriter:
        self._txn = self._index.env.begin(write=True)
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        txn = self._live()
        if exc_type is None:
            crashpoint("index.commit")
            txn.commit()
        else:
            txn.abort()

    def _live(self) -> lmdb.Transaction:
        """The open transaction (RuntimeError outside the ``with`` block)."""
        if self._txn is None:
            raise RuntimeError("IndexWriter used outside its `with` block")
        return self._txn

    def _put(self, db: str, key: bytes, value: bytes) -> None:
        self._live().put(key, value, db=self._index._db[db])

    def realisation(self, key: str, value: IndexedRealisation) -> None:
        self._put("real", hex_of(key).encode(), _enc.encode(value))

    def run(self, run_id: str, summary: RunSummary) -> None:
        self._put("runs", run_id.encode(), _enc.encode(summary))

    def derivation(self, digest: str, name: str) -> None:
        self._put("drv", hex_of(digest).encode(), name.encode())

    def snapshot(self, commit: str, digest: str) -> None:
        self._put("snap", commit.encode(), digest.encode())

    def stat(self, path: str, entry: StatEntry) -> None:
        self._put("stat", _stat_key(path), _enc.encode(entry))

    # Deletes (gc, verify --repair). They run before the store objects go, so the index
    # never names an object the store lacks (spec/gc.md); a missing entry is not an error.
    def _delete(self, db: str, key: bytes) -> None:
        self._live().delete(key, db=self._index._db[db])

    def delete_realisation(self, key: str) -> None:
        self._delete("real", hex_of(key).encode())

    def delete_run(self, run_id: str) -> None:
        self._delete("runs", run_id.encode())

    def delete_derivation(self, digest: str) -> None:
        self._delete("drv", hex_of(digest).encode())

    def delete_snapshot(self, commit: str) -> None:
        self._delete("snap", commit.encode())

    def drop_all(self) -> None:
        """Empty every database except the stat cache (used by rebuild)."""
        txn = self._live()
        for name in ("real", "runs", "drv", "snap"):
            txn.drop(self._index._db[name], delete=False)

"""Store: typed round-trips, verification on read, and the version file."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest

from qwexstore import canonical
from qwexstore.derivation import BlobInput, Derivation, DrvInput, Env, TreeInput, derivation_hash
from qwexstore.digest import hash_bytes, hash_tagged, hex_of
from qwexstore.errors import CorruptObject, ObjectNotFound, StoreError, UserError
from qwexstore.layers import KueueIdentity, LocalLayer, SingularityIdentity, SingularityLayer, SlurmLayer
from qwexstore.manifest import FileEntry, Manifest, SymlinkEntry
from qwexstore.records import DerivationRecord, Realisation, RunRecord, Snapshot, SourceRef
from qwexstore.storage import FsspecStorage, LocalStorage
from qwexstore.store import STORE_VERSION, Store, open_store

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


D1 = "blake3:" + "1" * 64
D2 = "blake3:" + "2" * 64


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return run(open_store(str(tmp_path / "store")))


@pytest.fixture(params=["local", "memory"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return run(open_store(str(tmp_path / "store")))
    return run(open_store(f"memory://store-{uuid.uuid4().hex}"))


def _derivation() -> Derivation:
    return Derivation(
        source=D1,
        command=["python", "train.py", "--lr", "0.1", 'é\n"q"'],
        env=Env(image="oci:sha256:" + "a" * 64, vars={"SEED": "1", "B": ""}),
        inputs={
            "data/x.bin": BlobInput(digest=D1, executable=False),
            "data/tree": TreeInput(manifest=D2),
            "up": DrvInput(drv=D2),
        },
        layers=[
            SingularityIdentity(image="file:" + D1, contain=True, cleanenv=False, args=["--nv"]),
            KueueIdentity(image="oci:x"),
        ],
        outputs=["out/", "metrics.json"],
    )


def _record() -> DerivationRecord:
    return DerivationRecord(
        name="train",
        derivation=_derivation(),
        source=SourceRef(commit="c" * 40, snapshot=D2, include=["src"], exclude=["src/big"]),
        image_ref="docker://x@sha256:" + "a" * 64,
        layers=[
            LocalLayer(),
            SlurmLayer(partition="gpu", nodes=2),
            SingularityLayer(image="x.sif", binds=["/a"]),
        ],
        pass_env=["HOME_TOKEN"],
        upstream_names={"up": "prepare"},
    )


def _manifest() -> Manifest:
    return Manifest.of(
        [
            FileEntry(path="out/model.bin", size=3, digest=hash_bytes(b"abc"), executable=False),
            FileEntry(path="out/run.sh", size=0, digest=hash_bytes(b""), executable=True),
            SymlinkEntry(path="out/latest", target="model.bin"),
        ]
    )


def _run_record(run_id: str = "20260101T000000000000Z-abcd") -> RunRecord:
    return RunRecord(
        run_id=run_id,
        key=D1,
        drv=D2,
        name="train",
        status="succeeded",
        exit_code=0,
        started_ns=1,
        finished_ns=2_000_000_001,
        host="h",
        user="u",
        driver="local",
        stdout=D1,
        stderr=None,
        manifest=D2,
        impure={"PATH": "/usr/bin"},
        message="ok",
    )


def _local_file(store: Store, path: str) -> Path:
    assert store.local_root is not None
    return Path(store.local_root) / path


def _tamper(store: Store, path: str, data: bytes) -> None:
    f = _local_file(store, path)
    os.chmod(f, 0o644)
    f.write_bytes(data)


# ---------------------------------------------------------------------------------------
# round-trips
# ---------------------------------------------------------------------------------------


def test_blob_round_trip(any_store: Store) -> None:
    for data in (b"", b"hello", bytes(range(256))):
        d = run(any_store.put_blob(data))
        assert d == hash_bytes(data)
        assert run(any_store.get_blob(d)) == data
        assert run(any_store.put_blob(data)) == d  # idempotent


def test_manifest_round_trip(any_store: Store) -> None:
    m = _manifest()
    d = run(any_store.put_manifest(m))
    assert d == m.digest()
    assert run(any_store.get_manifest(d)) == m
    assert run(any_store.storage.get(Store.manifest_path(d))) == m.canonical()


def test_snapshot_round_trip(any_store: Store) -> None:
    s = Snapshot(commit="c" * 40, bundles=[D1, D2])
    d = run(any_store.put_snapshot(s))
    assert d == s.digest()
    assert run(any_store.get_snapshot(d)) == s


def test_derivation_round_trip(any_store: Store) -> None:
    rec = _record()
    d = run(any_store.put_derivation(rec))
    assert d == rec.derivation.hash() == derivation_hash(rec.derivation)
    assert run(any_store.get_derivation(d)) == rec


def test_derivation_first_writer_wins(store: Store) -> None:
    rec = _record()
    d = run(store.put_derivation(rec))
    other = msgspec.structs.replace(rec, name="renamed")
    assert run(store.put_derivation(other)) == d
    assert run(store.get_derivation(d)).name == "train"


def test_run_round_trip(any_store: Store) -> None:
    r = _run_record()
    run(any_store.put_run(r))
    assert run(any_store.get_run(r.run_id)) == r
    assert r.duration_ns == 2_000_000_000


def test_realisation_round_trip(any_store: Store) -> None:
    real = Realisation(key=D1, manifest=D2, run_id="r1", created_ns=5)
    assert run(any_store.put_realisation(real)) is True
    assert run(any_store.get_realisation(D1)) == real
    again = msgspec.structs.replace(real, manifest=D1, run_id="r2")
    assert run(any_store.put_realisation(again)) is False
    assert run(any_store.get_realisation(D1)) == real
    assert run(any_store.get_realisation(D2)) is None


def test_layout_paths() -> None:
    h = hex_of(D1)
    assert Store.blob_path(D1) == f"blobs/{h[:2]}/{h}"
    assert Store.manifest_path(D1) == f"manifests/{h[:2]}/{h}"
    assert Store.snapshot_path(D1) == f"snapshots/{h[:2]}/{h}"
    assert Store.derivation_path(D1) == f"derivations/{h[:2]}/{h}"
    assert Store.realisation_path(D1) == f"realisations/{h[:2]}/{h}"
    assert Store.run_path("r1") == "runs/r1"


def test_objects_land_at_their_layout_paths(store: Store) -> None:
    b = run(store.put_blob(b"x"))
    m = run(store.put_manifest(_manifest()))
    s = run(store.put_snapshot(Snapshot(commit="c", bundles=[b])))
    d = run(store.put_derivation(_record()))
    assert _local_file(store, Store.blob_path(b)).read_bytes() == b"x"
    for path in (Store.manifest_path(m), Store.snapshot_path(s), Store.derivation_path(d)):
        assert _local_file(store, path).is_file()


def test_missing_objects(any_store: Store) -> None:
    with pytest.raises(ObjectNotFound):
        run(any_store.get_blob(D1))
    with pytest.raises(ObjectNotFound):
        run(any_store.get_manifest(D1))
    with pytest.raises(ObjectNotFound):
        run(any_store.get_snapshot(D1))
    with pytest.raises(ObjectNotFound):
        run(any_store.get_derivation(D1))
    with pytest.raises(ObjectNotFound):
        run(any_store.get_run("nope"))


# ---------------------------------------------------------------------------------------
# verification on read
# ---------------------------------------------------------------------------------------


def test_get_blob_detects_corruption(store: Store) -> None:
    d = run(store.put_blob(b"original"))
    _tamper(store, Store.blob_path(d), b"tampered")
    with pytest.raises(CorruptObject) as ei:
        run(store.get_blob(d))
    assert ei.value.expected == d
    assert ei.value.actual == hash_bytes(b"tampered")
    assert ei.value.path == Store.blob_path(d)


def test_get_manifest_detects_corruption(store: Store) -> None:
    m = _manifest()
    d = run(store.put_manifest(m))
    # Still a perfectly decodable manifest, just not the one named d.
    other = Manifest.of([FileEntry(path="x", size=1, digest=hash_bytes(b"y"))]).canonical()
    _tamper(store, Store.manifest_path(d), other)
    with pytest.raises(CorruptObject) as ei:
        run(store.get_manifest(d))
    assert ei.value.expected == d
    assert ei.value.actual == hash_tagged("manifest", other)


def test_get_manifest_detects_garbage(store: Store) -> None:
    d = run(store.put_manifest(_manifest()))
    _tamper(store, Store.manifest_path(d), b"\xff not json")
    with pytest.raises(CorruptObject) as ei:
        run(store.get_manifest(d))
    assert ei.value.actual == hash_tagged("manifest", b"\xff not json")


def test_get_snapshot_detects_corruption(store: Store) -> None:
    s = Snapshot(commit="c" * 40, bundles=[D1])
    d = run(store.put_snapshot(s))
    altered = Snapshot(commit="d" * 40, bundles=[D1]).canonical()
    _tamper(store, Store.snapshot_path(d), altered)
    with pytest.raises(CorruptObject) as ei:
        run(store.get_snapshot(d))
    assert ei.value.expected == d
    assert ei.value.actual == hash_tagged("snapshot", altered)


def test_get_derivation_detects_identity_corruption(store: Store) -> None:
    rec = _record()
    d = run(store.put_derivation(rec))
    bad_drv = msgspec.structs.replace(rec.derivation, command=["rm", "-rf", "/"])
    bad = msgspec.structs.replace(rec, derivation=bad_drv)
    _tamper(store, Store.derivation_path(d), canonical.encode(bad))
    with pytest.raises(CorruptObject) as ei:
        run(store.get_derivation(d))
    assert ei.value.expected == d
    assert ei.value.actual == bad_drv.hash()


def test_get_derivation_unreadable_is_store_error(store: Store) -> None:
    d = run(store.put_derivation(_record()))
    _tamper(store, Store.derivation_path(d), b"{truncated")
    with pytest.raises(StoreError):
        run(store.get_derivation(d))


def test_get_run_unreadable_is_store_error(store: Store) -> None:
    r = _run_record()
    run(store.put_run(r))
    _tamper(store, Store.run_path(r.run_id), b'{"format":"qwex.run/1"}')
    with pytest.raises(StoreError):
        run(store.get_run(r.run_id))


def test_get_realisation_detects_wrong_key(store: Store) -> None:
    real = Realisation(key=D1, manifest=D2, run_id="r", created_ns=1)
    run(store.put_realisation(real))
    moved = canonical.encode(msgspec.structs.replace(real, key=D2))
    _tamper(store, Store.realisation_path(D1), moved)
    with pytest.raises(CorruptObject) as ei:
        run(store.get_realisation(D1))
    assert ei.value.expected == D1 and ei.value.actual == D2


def test_get_manifest_refuses_invalid_manifest(store: Store) -> None:
    # A manifest whose bytes hash to its name but whose paths are not normal (as a hostile
    # or buggy writer of a shared store could produce) must not be handed out.
    evil = Manifest([FileEntry(path="../../escape", size=0, digest=hash_bytes(b""))])
    d = run(store.put_manifest(evil))
    with pytest.raises(StoreError):
        run(store.get_manifest(d))


# ---------------------------------------------------------------------------------------
# the version file
# ---------------------------------------------------------------------------------------


def test_open_store_creates_version_file(tmp_path: Path) -> None:
    root = tmp_path / "s"
    st = run(open_store(str(root)))
    assert isinstance(st.storage, LocalStorage)
    assert st.local_root == str(root)
    data = (root / "qwex-store.json").read_bytes()
    assert json.loads(data) == {"format": "qwex-store", "version": STORE_VERSION}
    assert data == b'{"format":"qwex-store","version":2}'
    # reopening, with or without create, works and does not rewrite it
    run(open_store(str(root)))
    run(open_store(str(root), create=False))
    assert (root / "qwex-store.json").read_bytes() == data


def test_open_store_memory() -> None:
    loc = f"memory://store-{uuid.uuid4().hex}"
    st = run(open_store(loc))
    assert isinstance(st.storage, FsspecStorage)
    assert st.local_root is None
    run(open_store(loc, create=False))


@pytest.mark.parametrize(
    "content",
    [
        b'{"format":"qwex-store","version":1}',
        b'{"format":"qwex-store","version":3}',
        b'{"format":"qwex-store","version":0}',
        b'{"format":"other-store","version":1}',
        b'{"format":"qwex-store"}',
        b'{"format":"qwex-store","version":"1"}',
        b"[]",
        b"",
        b"not json",
    ],
)
@pytest.mark.parametrize("create", [True, False])
def test_open_store_refuses_other_versions(tmp_path: Path, content: bytes, create: bool) -> None:
    root = tmp_path / "s"
    root.mkdir()
    (root / "qwex-store.json").write_bytes(content)
    with pytest.raises(StoreError):
        run(open_store(str(root), create=create))
    assert (root / "qwex-store.json").read_bytes() == content  # never "repaired"


def test_a_version_1_store_is_refused_in_one_line_naming_both_versions(tmp_path: Path) -> None:
    (tmp_path / "qwex-store.json").write_bytes(b'{"format":"qwex-store","version":1}')
    with pytest.raises(StoreError) as ei:
        run(open_store(str(tmp_path)))
    msg = str(ei.value)
    assert "\n" not in msg and "version 1" in msg and f"reads version {STORE_VERSION}" in msg
    assert STORE_VERSION == 2


def test_open_store_no_create_on_empty_dir(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no qwex store at"):  # a typo in a path or URL
        run(open_store(str(tmp_path), create=False))
    assert list(tmp_path.iterdir()) == []


def test_open_store_no_create_on_missing_dir(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no qwex store at"):
        run(open_store(str(tmp_path / "absent"), create=False))
    assert not (tmp_path / "absent").exists()


def test_open_store_no_create_memory() -> None:
    with pytest.raises(UserError, match="no qwex store at"):
        run(open_store(f"memory://absent-{uuid.uuid4().hex}", create=False))


def test_store_over_explicit_storage(tmp_path: Path) -> None:
    st = Store(LocalStorage(str(tmp_path)), str(tmp_path))
    d = run(st.put_blob(b"z"))
    assert run(st.get_blob(d)) == b"z"

"""gc and verify of a shared store (qwexstore/gc_remote.py, spec/gc.md "Shared stores"),
against a real S3 server (moto): pins, live leases, the grace window, signatures, damage,
and the ``--remote NAME`` options of ``qwex gc`` and ``qwex verify``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from conftest import Qwex
from servers import S3Server

from qwexstore import canonical
from qwexstore.derivation import BlobInput, Derivation, Env
from qwexstore.errors import StoreError
from qwexstore.gc_remote import collect_remote_garbage
from qwexstore.keys import SecretKey
from qwexstore.leases import Lease, Owner, lease_path
from qwexstore.manifest import FileEntry, Manifest
from qwexstore.pins import pin
from qwexstore.records import DerivationRecord, Realisation, RunRecord
from qwexstore.signing import make_signature
from qwexstore.store import Store, open_store
from qwexstore.verify import verify

T = TypeVar("T")
DAY_NS = 86400 * 10**9


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Built(msgspec.Struct):
    """Paths of one synthetic build: ``key`` realised unless ``realised`` was False."""

    key: str
    manifest: str
    paths: list[str]


async def build(store: Store, tag: str, *, realised: bool = True, created_ns: int | None = None) -> Built:
    """Write what a build (or a push) writes, in the write order: input and output blobs,
    manifest, derivation record, log, run record and (if ``realised``) the realisation."""
    inp = await store.put_blob(f"input {tag}".encode())
    out = await store.put_blob(f"output {tag}".encode())
    manifest = await store.put_manifest(
        Manifest.of([FileEntry(path="out/x", size=8 + len(tag), digest=out, executable=False)])
    )
    drv = Derivation(
        source=None,
        command=["echo", tag],
        env=Env(image=None, vars={}),
        inputs={"in.bin": BlobInput(digest=inp, executable=False)},
        layers=[],
        outputs=["out/"],
    )
    key = await store.put_derivation(
        DerivationRecord(name=tag, derivation=drv, source=None, image_ref=None, layers=[], pass_env=[])
    )
    log = await store.put_blob(f"log {tag}".encode())
    run_id = f"20260101T000000000000Z-{uuid.uuid4().hex[:4]}"
    await store.put_run(
        RunRecord(
            run_id=run_id,
            key=key,
            drv=key,
            name=tag,
            status="succeeded",
            exit_code=0,
            started_ns=1,
            finished_ns=2,
            host="h",
            user="u",
            driver="local",
            stdout=log,
            stderr=None,
            manifest=manifest,
            impure={},
        )
    )
    paths = [
        Store.blob_path(inp),
        Store.blob_path(out),
        Store.manifest_path(manifest),
        Store.derivation_path(key),
        Store.blob_path(log),
        Store.run_path(run_id),
    ]
    if realised:
        real = Realisation(
            key=key,
            manifest=manifest,
            run_id=run_id,
            created_ns=time.time_ns() if created_ns is None else created_ns,
        )
        await store.put_realisation(real)
        paths.append(Store.realisation_path(key))
    return Built(key, manifest, paths)


async def signature(store: Store, built: Built) -> str:
    """A real signature of ``built``'s key and manifest, by a fixed test key."""
    sig = make_signature(SecretKey("lab", bytes(range(32))), built.key, built.manifest)
    assert await store.put_signature(sig)
    return Store.signature_path(built.key, sig.signer_id())


async def present(store: Store, paths: list[str]) -> list[bool]:
    return await store.storage.exists(paths)


async def present_at(url: str, paths: list[str]) -> list[bool]:
    store = await open_store(url, create=False)
    try:
        return await present(store, paths)
    finally:
        await store.storage.close()


@pytest.fixture
def s3_url(moto_s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    for k, v in moto_s3.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("QWEX_STORE_RETRY_S", "2")
    return moto_s3.new_bucket()


def wait_past(t: float) -> None:
    """Let the wall clock pass ``t`` by more than a second (S3 times have 1 s resolution)."""
    while time.time() < t + 1.2:
        time.sleep(0.1)


def test_old_garbage_goes_closures_pins_and_signatures_stay(s3_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        store = await open_store(s3_url)
        kept = await build(store, "kept")
        failed = await build(store, "failed", realised=False)  # a failed run: nothing names it
        sig_kept = await signature(store, kept)
        sig_orphan = await signature(store, failed)
        # Much later (the grace window long past):
        r = await collect_remote_garbage(store, str(tmp_path), now_ns=time.time_ns() + 2 * DAY_NS)
        assert await present(store, [*kept.paths, sig_kept]) == [True] * (len(kept.paths) + 1)
        assert await present(store, [*failed.paths, sig_orphan]) == [False] * (len(failed.paths) + 1)
        assert r.removed == {"run": 1, "derivation": 1, "manifest": 1, "blob": 3, "signature": 1}
        assert r.bytes is not None and r.bytes > 0 and r.young == 0
        report = await verify(store, None, str(tmp_path))
        assert report.problems == []
        await store.storage.close()

    run(go())


def test_older_than_honours_pins(s3_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        store = await open_store(s3_url)
        old = await build(store, "old", created_ns=1)
        pinned_old = await build(store, "pinned", created_ns=1)
        assert await pin(store, str(tmp_path), pinned_old.key)
        later = time.time_ns() + 2 * DAY_NS
        r = await collect_remote_garbage(store, str(tmp_path), older_than_ns=DAY_NS, now_ns=later)
        assert r.dropped == [old.key]
        assert await present(store, old.paths) == [False] * len(old.paths)
        assert await present(store, pinned_old.paths) == [True] * len(pinned_old.paths)
        await store.storage.close()

    run(go())


def test_grace_keeps_what_in_flight_writers_wrote_and_what_it_names(s3_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        store = await open_store(s3_url)
        orphan = await build(store, "orphan", realised=False)
        reused = await build(store, "reused", realised=False)
        cut = time.time()
        wait_past(cut)
        # An in-flight push or build: a new run record naming an old, unreachable
        # derivation record, and new blobs and a manifest, no realisation yet.
        young = await build(store, "young", realised=False)
        rec = await store.get_run(reused.paths[-1].removeprefix("runs/"))
        again = msgspec.structs.replace(rec, run_id=f"{rec.run_id}-2", manifest=None)
        await store.put_run(again)
        grace = time.time_ns() - int(cut * 1e9)
        r = await collect_remote_garbage(store, str(tmp_path), grace_ns=grace)
        assert await present(store, orphan.paths) == [False] * len(orphan.paths)
        assert await present(store, young.paths) == [True] * len(young.paths)
        # The young run record keeps the old derivation record and its input blob.
        drv, inp = Store.derivation_path(reused.key), reused.paths[0]
        assert await present(store, [drv, inp, Store.run_path(again.run_id)]) == [True, True, True]
        assert r.young >= len(young.paths) + 1
        await store.storage.close()

    run(go())


def test_live_leases_keep_their_derivations_expired_ones_go(s3_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        store = await open_store(s3_url)
        building = await build(store, "building", realised=False)
        crashed = await build(store, "crashed", realised=False)
        now = time.time_ns() + 2 * DAY_NS  # long after every write: only the leases protect
        live = Lease(building.key, Owner("gpu01", 1, "alice"), "a" * 32, 0, now + 60 * 10**9)
        dead = Lease(crashed.key, Owner("gpu02", 2, "bob"), "b" * 32, 0, now - 1)
        assert await store.storage.ref_put(lease_path(building.key), canonical.encode(live), expect=None)
        assert await store.storage.ref_put(lease_path(crashed.key), canonical.encode(dead), expect=None)
        r = await collect_remote_garbage(store, str(tmp_path), now_ns=now)
        drv, inp = Store.derivation_path(building.key), building.paths[0]
        assert await present(store, [drv, inp]) == [True, True]
        assert r.leases == [f"{building.key} (pid 1 on gpu01 (alice))"]
        assert await present(store, [Store.derivation_path(crashed.key)]) == [False]
        assert await store.storage.ref_get(lease_path(crashed.key)) is None  # expired lease removed
        assert await store.storage.ref_get(lease_path(building.key)) is not None
        await store.storage.close()

    run(go())


def test_a_damaged_record_stops_gc_before_any_deletion(s3_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        store = await open_store(s3_url)
        kept = await build(store, "kept")
        junk = await build(store, "junk", realised=False)
        run_path = next(p for p in kept.paths if p.startswith("runs/"))
        await store.storage.delete(run_path)
        await store.storage.put(run_path, b"{not a run")
        with pytest.raises(StoreError, match="gc stopped before deleting anything"):
            await collect_remote_garbage(store, str(tmp_path), now_ns=time.time_ns() + 2 * DAY_NS)
        assert await present(store, junk.paths) == [True] * len(junk.paths)
        await store.storage.close()

    run(go())


# -- the CLI ---------------------------------------------------------------------------------


def _remote_config(qwex: Qwex, url: str, server: S3Server) -> dict[str, str]:
    qwex.home.mkdir(parents=True, exist_ok=True)
    (qwex.home / "config.toml").write_text(f'[remotes.lab]\nurl = "{url}"\nendpoint = "{server.endpoint}"\n')
    return {**server.env, "QWEX_STORE_RETRY_S": "2"}


def test_cli_gc_and_verify_remote(qwex: Qwex, moto_s3: S3Server, s3_url: str) -> None:
    async def setup() -> tuple[Built, Built]:
        store = await open_store(s3_url)
        out = await build(store, "kept"), await build(store, "junk", realised=False)
        await store.storage.close()
        return out

    kept, junk = run(setup())
    env = _remote_config(qwex, s3_url, moto_s3)
    cp = qwex("verify", "--remote", "lab", env=env)
    assert cp.returncode == 0, cp.stderr
    assert "no problems" in cp.stdout
    assert not qwex.store.exists()  # the local store was never touched

    cp = qwex("gc", "--remote", "lab", "--json", env=env)
    assert cp.returncode == 0, cp.stderr
    report = json.loads(cp.stdout)
    assert report["removed"] == {} and report["young"] == len(junk.paths)  # all young: kept
    cp = qwex("gc", "--remote", "lab", "--grace", "0s", "--dry-run", env=env)
    assert cp.returncode == 0, cp.stderr
    assert "would remove 1 run, 1 derivation, 1 manifest, 3 blobs" in cp.stdout
    assert run(present_at(s3_url, junk.paths)) == [True] * len(junk.paths)
    cp = qwex("gc", "--remote", "lab", "--grace", "0s", env=env)
    assert cp.returncode == 0, cp.stderr
    assert "removed 1 run, 1 derivation, 1 manifest, 3 blobs" in cp.stdout
    assert run(present_at(s3_url, junk.paths)) == [False] * len(junk.paths)
    cp = qwex("verify", "--remote", "lab", "--keys", kept.key[:16], env=env)
    assert cp.returncode == 0, cp.stderr
    assert "checked 7 objects" in cp.stdout  # the key's closure: realisation, run, drv, manifest, 3 blobs

    # A tampered blob is reported with its path; exit 1.
    blob = kept.paths[1]
    bucket, prefix = s3_url.removeprefix("s3://").split("/", 1)
    import botocore.session

    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=moto_s3.endpoint,
        region_name=moto_s3.region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    client.put_object(Bucket=bucket, Key=f"{prefix}/{blob}", Body=b"tampered")
    cp = qwex("verify", "--remote", "lab", env=env)
    assert cp.returncode == 1
    assert f"corrupt    blob        {blob}" in cp.stdout


def test_cli_remote_options_bad_input(qwex: Qwex, moto_s3: S3Server, s3_url: str) -> None:
    env = _remote_config(qwex, s3_url, moto_s3)
    for args, needle in [
        (["gc", "--remote", "nope"], "no remote named 'nope'"),
        (["gc", "--grace", "1d"], "--grace"),
        (["gc", "--remote", "lab", "--grace", "soon"], "--grace"),
        (["verify", "--remote", "lab"], "no qwex store"),
    ]:
        cp = qwex(*args, env=env)
        assert cp.returncode == 2, (args, cp.stdout, cp.stderr)
        assert needle in cp.stderr and len(cp.stderr.strip().splitlines()) == 1, cp.stderr

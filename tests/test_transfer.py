"""Transfer mechanics: batched existence checks, ordering, verification, crashes, forgeries.

Stores are built by the real CLI (lab A of tests/test_cli_remote.py); the library calls
run in-process against real directories and a real moto S3 server. Crashes are SIGKILLs
at the N-th stored object (``QWEX_TEST_CRASH_AT=transfer:N``), N drawn at random.
"""

from __future__ import annotations

import asyncio
import base64
import os
import random
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import Qwex
from test_cli_remote import Labs, assert_pull_refused, config, remote_verify

from qwexstore import canonical
from qwexstore.config import Remote
from qwexstore.digest import hash_bytes
from qwexstore.errors import UserError
from qwexstore.keys import SecretKey, Trust, parse_public_key
from qwexstore.manifest import FileEntry, Manifest
from qwexstore.records import Realisation
from qwexstore.remotes import open_remote
from qwexstore.signing import make_signature, signatures_of
from qwexstore.storage import Capabilities, LocalStorage
from qwexstore.store import Store, open_store
from qwexstore.transfer import pull, push

RNG = random.Random(8)


@pytest.fixture
def labs(tmp_path: Path) -> Labs:
    return Labs(tmp_path)


class Recording(LocalStorage):
    """A real directory storage that records existence checks and blob writes, and copies
    one object at a time (so the order is observable)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.capabilities = Capabilities(local_root=self.root, concurrency=1)
        self.exists_calls: list[int] = []
        self.order: list[str] = []

    async def exists(self, paths: Sequence[str]) -> list[bool]:
        self.exists_calls.append(len(paths))
        return await super().exists(paths)

    async def put_file(self, path: str, src: str, *, consume: bool) -> bool:
        self.order.append(path)
        return await super().put_file(path, src, consume=consume)

    async def put(self, path: str, data: bytes) -> bool:
        self.order.append(path)
        return await super().put(path, data)


def _secret(lab: Qwex, name: str) -> SecretKey:
    text = (lab.home / "keys" / f"{name}.secret").read_text().strip()
    return SecretKey(name, base64.b64decode(text.split(":", 1)[1]))


async def _stores(labs: Labs, dst_dir: Path) -> tuple[Store, Store, Recording]:
    src = await open_store(str(labs.a.store), create=False)
    await open_store(str(dst_dir), create=True)
    rec = Recording(str(dst_dir))
    src.storage.capabilities = Capabilities(local_root=src.local_root, concurrency=1)  # type: ignore[misc]
    return src, Store(rec, str(dst_dir)), rec


def test_one_batched_existence_check_and_write_order(labs: Labs, tmp_path: Path) -> None:
    async def go() -> None:
        src, dst, rec = await _stores(labs, tmp_path / "dst")
        rep = await push(src, dst, [labs.built.key], signer=_secret(labs.a, "alice"))
        assert rep.objects > 20 and len(rep.realisations) == 3
        # One check over the whole closure, one completeness check before the realisations.
        assert len(rec.exists_calls) == 2 and rec.exists_calls[0] == rep.objects
        kinds = [p.split("/")[0] for p in rec.order]
        rank = {
            "blobs": 0,
            "manifests": 1,
            "snapshots": 1,
            "derivations": 2,
            "runs": 2,
            "signatures": 3,
            "realisations": 4,
        }
        assert [rank[k] for k in kinds] == sorted(rank[k] for k in kinds)
        blobs = [p for p in rec.order if p.startswith("blobs/")]
        sizes = [os.path.getsize(os.path.join(src.local_root or "", p)) for p in blobs]
        assert sizes == sorted(sizes, reverse=True)  # largest first
        assert kinds.count("signatures") == 3
        rec.exists_calls.clear()
        again = await push(src, dst, [labs.built.key])
        assert again.objects == 0 and rec.exists_calls == [rep.objects]

    asyncio.run(go())


def test_push_and_pull_through_moto(
    labs: Labs, tmp_path: Path, moto_s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in moto_s3.env.items():
        monkeypatch.setenv(k, v)
    remote = Remote(moto_s3.new_bucket(), endpoint=moto_s3.endpoint)
    alice = _secret(labs.a, "alice")

    async def go() -> None:
        with pytest.raises(UserError, match="no qwex store at"):
            await open_remote(remote, create=False)
        src = await open_store(str(labs.a.store), create=False)
        dst = await open_remote(remote, create=True)
        rep = await push(src, dst, [labs.built.key], signer=alice)
        local = await open_store(str(tmp_path / "pulled"), create=True)
        nobody = Trust([])
        with pytest.raises(Exception, match="untrusted") as e:
            await pull(dst, local, [labs.built.key], trust=nobody)
        assert type(e.value).__name__ == "UntrustedObject"
        assert not os.path.exists(tmp_path / "pulled" / "realisations")
        got = await pull(dst, local, [labs.built.key], trust=Trust([alice.public()]))
        assert got.objects == rep.objects and sorted(got.realisations) == sorted(rep.realisations)
        real = await local.get_realisation(labs.built.key)
        assert real is not None
        m = await local.get_manifest(real.manifest)
        for e in m.files():
            assert hash_bytes(await local.storage.get(local.blob_path(e.digest))) == e.digest

    asyncio.run(go())


def killed(cp: Any) -> bool:
    return bool(cp.returncode == -signal.SIGKILL)


@pytest.mark.parametrize("nth", sorted(RNG.sample(range(1, 20), 3)))
def test_kill_during_push_then_resume(labs: Labs, nth: int) -> None:
    a = labs.a
    cp = a("push", "lab", labs.built.key, env={"QWEX_TEST_CRASH_AT": f"transfer:{nth}"})
    assert killed(cp), cp.stderr
    assert remote_verify(a, labs.remote).returncode == 0
    assert not list(Path(labs.remote, "realisations").rglob("*"))
    rep = a.json("push", "lab", labs.built.key)
    assert len(rep["realisations"]) == 3 and rep["skipped"] >= nth - 1
    assert remote_verify(a, labs.remote).returncode == 0
    config(labs.b, f'trusted-keys = ["{labs.alice}"]')
    labs.b.ok("pull", "lab", labs.built.key)
    assert labs.b.build("report.drv", cwd=labs.b_repo.path).cached


@pytest.mark.parametrize("nth", sorted(RNG.sample(range(1, 20), 3)))
def test_kill_during_pull_then_resume(labs: Labs, nth: int) -> None:
    a, b = labs.a, labs.b
    a.ok("push", "lab", "--all")
    config(b, f'trusted-keys = ["{labs.alice}"]')
    cp = b("pull", "lab", labs.built.key, env={"QWEX_TEST_CRASH_AT": f"transfer:{nth}"})
    assert killed(cp), cp.stderr
    assert b.ok("verify").returncode == 0
    b.ok("pull", "lab", labs.built.key)
    assert b.ok("verify").returncode == 0
    assert b.build("report.drv", cwd=labs.b_repo.path).cached
    b.ok("gc")
    leftovers = [p.name for p in (b.store / "tmp").iterdir() if p.name.startswith(".qwex-tmp")]
    assert leftovers == []


def test_kill_during_push_to_s3_then_resume(labs: Labs, moto_s3: Any) -> None:
    a = labs.a
    url = moto_s3.new_bucket()
    a.ok("remote", "add", "s3", url, "--endpoint", moto_s3.endpoint, "--user")
    env = dict(moto_s3.env)
    cp = a("push", "s3", labs.built.key, env={**env, "QWEX_TEST_CRASH_AT": "transfer:7"})
    assert killed(cp), cp.stderr
    assert remote_verify(a, url, env).returncode == 0
    rep = a.json("push", "s3", labs.built.key, env=env)
    assert len(rep["realisations"]) == 3 and rep["skipped"] >= 6
    assert remote_verify(a, url, env).returncode == 0


# -- forged remote content: refused, nothing written --------------------------------------


def _forge(labs: Labs, manifest: bytes, *, sign: bool = True) -> str:
    """Put ``manifest`` (raw canonical bytes) in the remote with a realisation of a new
    key naming it and a run record agreeing with it (a copy of an existing run's, as a
    forger would make: R8 holds), signed by alice; return the key."""
    remote = Path(labs.remote)
    mdigest = "blake3:" + __import__("blake3").blake3(b"qwex:manifest:v1\0" + manifest).hexdigest()
    old_run = next((remote / "runs").iterdir()).name
    run_id = old_run[:-4] + os.urandom(2).hex()
    key = hash_bytes(os.urandom(16))

    async def go() -> None:
        store = await open_store(str(remote), create=False)
        await store.storage.put(store.manifest_path(mdigest), manifest)
        run = msgspec.structs.replace(await store.get_run(old_run), run_id=run_id, key=key,
                                      manifest=mdigest, status="succeeded")
        await store.put_run(run)
        real = Realisation(key=key, manifest=mdigest, run_id=run_id, created_ns=1)
        if sign:
            await store.put_signature(make_signature(_secret(labs.a, "alice"), key, mdigest))
        await store.storage.put(store.realisation_path(key), canonical.encode(real))

    asyncio.run(go())
    return key


def _one_blob(labs: Labs, n: int = 0) -> tuple[str, int]:
    p = sorted(p for p in Path(labs.remote, "blobs").rglob("*") if p.is_file())[n]
    return "blake3:" + p.name, p.stat().st_size


@pytest.mark.parametrize("case", ["escaping path", "wrong size", "malformed realisation", "foreign signer"])
def test_forged_remote_objects_are_refused(labs: Labs, case: str) -> None:
    a, b = labs.a, labs.b
    a.ok("push", "lab", "--all")
    config(b, f'trusted-keys = ["{labs.alice}"]')
    digest, size = _one_blob(labs)
    if case == "escaping path":
        m = Manifest([FileEntry(path="../evil", size=size, digest=digest)])
        key = _forge(labs, m.canonical())
        line = assert_pull_refused(b, key)
        assert "manifests/" in line and "malformed" in line
    elif case == "wrong size":  # every blob: some are also in the closure's real manifest
        for n in range(sum(p.is_file() for p in Path(labs.remote, "blobs").rglob("*"))):
            digest, size = _one_blob(labs, n)
            m = Manifest.of([FileEntry(path="f", size=size + 1, digest=digest)])
            key = _forge(labs, m.canonical())
            cp = b("pull", "lab", key)
            assert cp.returncode == 1 and digest.split(":")[1] in cp.stderr.splitlines()[-1], cp.stderr
            assert not (b.store / "realisations").exists() or not list((b.store / "realisations").rglob("*"))
    elif case == "malformed realisation":
        key = hash_bytes(b"x")
        h = key.split(":")[1]
        p = Path(labs.remote, "realisations", h[:2], h)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b'{"format":"qwex.realisation/2","key":1}')
        assert "malformed" in assert_pull_refused(b, key)
    else:  # signed by a key whose name matches a trusted one, but other bytes
        m = Manifest.of([FileEntry(path="f", size=size, digest=digest)])
        key = _forge(labs, m.canonical(), sign=False)
        mallory = SecretKey("alice", os.urandom(32))

        async def sign() -> None:
            store = await open_store(labs.remote, create=False)
            await store.put_signature(make_signature(mallory, key, Manifest.of(m.entries).digest()))

        asyncio.run(sign())
        assert "untrusted" in assert_pull_refused(b, key)
        assert parse_public_key(labs.alice).raw != mallory.public().raw


def test_pull_skips_invalid_signature_objects(labs: Labs) -> None:
    """A junk object beside a good signature does not travel (and is refused as malformed)."""
    a, b = labs.a, labs.b
    a.ok("push", "lab", "--all")
    config(b, f'trusted-keys = ["{labs.alice}"]')
    h = labs.built.key.split(":")[1]
    d = Path(labs.remote, "signatures", h[:2], h)
    (d / ("0" * 32)).write_bytes(msgspec.json.encode({"format": "qwex.signature/1"}))
    assert "malformed signature" in assert_pull_refused(b, labs.built.key)
    os.unlink(d / ("0" * 32))
    b.ok("pull", "lab", labs.built.key)
    shutil.rmtree(labs.b_repo.path)
    assert b.ok("verify").returncode == 0


def test_push_adds_our_signature(labs: Labs, tmp_path: Path) -> None:
    bob = SecretKey("bob", os.urandom(32))

    async def go() -> None:
        src, dst, _ = await _stores(labs, tmp_path / "dst")
        rep = await push(src, dst, [labs.built.key], signer=bob)
        sigs = await signatures_of(dst, labs.built.key)
        assert sorted(s.signer.split(":")[0] for s in sigs) == ["alice", "bob"]
        local = await open_store(str(tmp_path / "pulled"), create=True)
        got = await pull(dst, local, [labs.built.key], trust=Trust([bob.public()]))
        assert sorted(got.realisations) == sorted(rep.realisations)

    asyncio.run(go())


def test_key_realised_differently_at_destination_keeps_theirs(labs: Labs) -> None:
    a = labs.a
    a.ok("push", "lab", "--all")
    remote = Path(labs.remote)
    h = labs.built.key.split(":")[1]
    path = remote / "realisations" / h[:2] / h
    real = msgspec.json.decode(path.read_bytes())
    manifests = [p for p in (remote / "manifests").rglob("*") if p.is_file()]
    other = next(p for p in manifests if "blake3:" + p.name != real["manifest"])
    real["manifest"] = "blake3:" + other.name
    os.chmod(path, 0o644)
    path.write_bytes(canonical.encode(real))
    shutil.rmtree(remote / "signatures" / h[:2] / h)
    cp = a.ok("push", "lab", labs.built.key)
    assert "kept theirs" in cp.stderr and labs.built.key in cp.stderr
    assert not (remote / "signatures" / h[:2] / h).exists()
    assert msgspec.json.decode(path.read_bytes())["manifest"] == real["manifest"]


def test_pull_all_leaves_out_untrusted_realisations(labs: Labs) -> None:
    a, b = labs.a, labs.b
    a.ok("push", "lab", "--all")
    config(b, f'trusted-keys = ["{labs.alice}"]')
    digest, size = _one_blob(labs)
    m = Manifest.of([FileEntry(path="f", size=size, digest=digest)])
    stranger = _forge(labs, m.canonical(), sign=False)
    assert "unsigned" in assert_pull_refused(b, stranger)  # named: refused
    cp = b.ok("pull", "lab", "--all", "--json")
    rep = msgspec.json.decode(cp.stdout)
    assert len(rep["realisations"]) == 3 and stranger not in rep["realisations"]
    assert any(n.startswith(f"{stranger}: left out: unsigned") for n in rep["notes"])


def test_pull_holds_the_local_gc_lock_while_objects_arrive(labs: Labs, tmp_path: Path) -> None:
    """A gc (exclusive gc lock) cannot start while pulled objects have no realisation yet."""
    import fcntl

    from qwexstore.liveroots import GC_LOCK

    alice = _secret(labs.a, "alice")
    blocked: list[bool] = []

    class Probe:
        def begin(self, objects: int, nbytes: int) -> None:
            pass

        def advance(self, nbytes: int) -> None:
            fd = os.open(str(tmp_path / "pulled" / "tmp" / GC_LOCK), os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                blocked.append(False)
            except BlockingIOError:
                blocked.append(True)
            finally:
                os.close(fd)

    async def go() -> None:
        src = await open_store(str(labs.a.store), create=False)
        local = await open_store(str(tmp_path / "pulled"), create=True)
        rep = await pull(src, local, [labs.built.key], trust=Trust([alice.public()]), progress=Probe())
        assert len(blocked) == rep.objects and all(blocked)

    asyncio.run(go())

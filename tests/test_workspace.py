"""The library's :class:`Workspace`, used from Python without the CLI: build, hit, the
rules for a missing store, fencing, signing, the kept outputs of a store failure while
recording, and the index set-aside of a rebuild."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from conftest import GitRepo, Qwex, drv_text, job, make_repo, read_lines
from servers import S3Server

from qwexstore.cache import BuildResult
from qwexstore.config import Config
from qwexstore.errors import BuildFailed, LeaseLost, StoreError, TransientStoreError, UserError
from qwexstore.plan import Plan
from qwexstore.store import Store
from qwexstore.workspace import BuildEvents, Workspace


@pytest.fixture
def lab(tmp_path: Path, qwex: Qwex, monkeypatch: pytest.MonkeyPatch) -> GitRepo:
    """A repository with ``a.drv`` (two outputs, counted runs), QWEX_HOME set for the
    library as the CLI fixture sets it for a subprocess."""
    for k in ("QWEX_HOME", "GIT_CONFIG_NOSYSTEM", "GIT_CEILING_DIRECTORIES"):
        monkeypatch.setenv(k, qwex.env[k])
    monkeypatch.delenv("QWEX_STORE", raising=False)
    repo = make_repo(tmp_path / "repo", qwex.env)
    repo.commit(
        "drv",
        {
            "a.drv": drv_text(
                job(
                    "--count",
                    str(tmp_path / "count"),
                    "--print",
                    "hello",
                    "--out",
                    "x=1",
                    "--out",
                    "sub/y=22",
                ),
                name="a",
            )
        },
    )
    return repo


class Recorder(BuildEvents):
    def __init__(self) -> None:
        self.built: list[str] = []
        self.out = bytearray()

    def building(self, node: Plan) -> None:
        self.built.append(node.name)

    def logs(self, node: Plan) -> Callable[[str, bytes], None]:  # type: ignore[override]
        rec = self

        class Sink:
            def __call__(self, stream: str, chunk: bytes) -> None:
                rec.out += chunk

            def close(self) -> None:
                pass

        return Sink()


def _ws(tmp_path: Path, repo: GitRepo, config: Config | None = None) -> Workspace:
    return Workspace.open(str(tmp_path / "store"), cwd=str(repo.path), create=True, config=config)


def test_build_then_hit_from_python(tmp_path: Path, lab: GitRepo) -> None:
    events = Recorder()
    with _ws(tmp_path, lab) as ws:
        plan = ws.plan(str(lab.path / "a.drv"))
        assert ws.lookup(plan) is None
        r = asyncio.run(ws.build(plan, events=events))
        assert not r.cached and r.files == 2 and events.built == ["a"] and b"hello" in events.out
        hit = ws.lookup(plan)
        assert hit is not None and hit.cached and (hit.key, hit.run_id) == (r.key, r.run_id)
        again = asyncio.run(ws.build(plan))  # a hit: no store opened, nothing run
        assert again.cached
    assert len(read_lines(tmp_path / "count")) == 1
    assert (tmp_path / "store" / "qwex-store.json").is_file()


def test_a_reading_workspace_creates_nothing(tmp_path: Path, lab: GitRepo) -> None:
    with pytest.raises(UserError, match="no qwex store at"):
        Workspace.open(str(tmp_path / "absent"), cwd=str(lab.path))
    assert not (tmp_path / "absent").exists()
    assert not (Path(os.environ["QWEX_HOME"]) / "index").exists()


def test_fencing_a_lost_hold_writes_no_realisation(tmp_path: Path, lab: GitRepo) -> None:
    class LostHold:
        holder = "me"

        async def check(self) -> None:
            raise LeaseLost("k", "pid 1 on elsewhere")

    class Lost:
        @contextlib.asynccontextmanager
        async def hold(
            self, key: str, on_wait: Callable[[str], None] | None = None
        ) -> AsyncIterator[LostHold]:
            yield LostHold()

    class Fenced(Workspace):
        def coordinator(self, store: Store) -> Lost:
            return Lost()

    with Fenced.open(str(tmp_path / "store"), cwd=str(lab.path), create=True) as ws:
        plan = ws.plan(str(lab.path / "a.drv"))
        with pytest.raises(LeaseLost):
            asyncio.run(ws.build(plan))
        assert ws.lookup(plan) is None
        assert not list((tmp_path / "store").glob("realisations/*/*"))


def test_realisations_built_are_signed_with_the_configured_key(tmp_path: Path, lab: GitRepo) -> None:
    from qwexstore.keys import generate_key
    from qwexstore.signing import signatures_of

    pub = generate_key("alice")
    with _ws(tmp_path, lab, config=Config(signing_key="alice")) as ws:
        plan = ws.plan(str(lab.path / "a.drv"))
        r = asyncio.run(ws.build(plan))

        async def sigs() -> list[str]:
            try:
                return [s.signer for s in await signatures_of(await ws.store(), r.key)]
            finally:
                await ws.disconnect()

        assert asyncio.run(sigs()) == [pub.text()]


def test_a_store_failure_while_recording_keeps_the_outputs(tmp_path: Path, lab: GitRepo) -> None:
    """The job succeeded; the store then fails (transiently) while the outputs go in. The
    run dir is not destroyed: outputs (one already moved into a blob: linked back) and logs
    are kept, the error is one line naming where, and no realisation is written."""
    with _ws(tmp_path, lab) as ws:
        plan = ws.plan(str(lab.path / "a.drv"))

        async def go() -> BuildResult:
            store = await ws.store()
            real_put = store.storage.put_file
            calls: list[str] = []

            async def flaky(path: str, src: str, *, consume: bool) -> bool:
                if "ingest-" in src and not os.path.basename(src).startswith("log-"):
                    calls.append(path)
                    if len(calls) == 2:
                        raise TransientStoreError("the store stopped answering")
                return await real_put(path, src, consume=consume)

            store.storage.put_file = flaky  # type: ignore[method-assign]
            return await ws.build(plan)

        with pytest.raises(StoreError) as info:
            asyncio.run(go())
        msg = str(info.value)
        assert "\n" not in msg and "kept in" in msg
        kept = Path(msg.rsplit("kept in ", 1)[1])
        assert kept.parent == tmp_path / "store" / "tmp" / "kept"
        assert (kept / "outputs" / "out" / "x").read_text() == "1"
        assert (kept / "outputs" / "out" / "sub" / "y").read_text() == "22"
        assert b"hello" in (kept / "stdout").read_bytes()
        assert ws.lookup(plan) is None
        assert not list((tmp_path / "store").glob("realisations/*/*"))
        assert not list((tmp_path / "store" / "tmp" / "runs").iterdir())  # the run dir itself is gone
        # The store works again: the next build runs and records normally.
        assert not asyncio.run(ws.build(plan)).cached
    assert len(read_lines(tmp_path / "count")) == 2


def test_rebuild_index_sets_an_unreadable_index_aside(tmp_path: Path, lab: GitRepo) -> None:
    with _ws(tmp_path, lab) as ws:
        r = asyncio.run(ws.build(ws.plan(str(lab.path / "a.drv"))))
        index_path = ws.location.index_path()
    for name in os.listdir(index_path):
        Path(index_path, name).write_bytes(b"garbage" * 100)
    told: list[str] = []
    with Workspace.open(str(tmp_path / "store"), cwd=str(lab.path)) as ws:
        report = asyncio.run(ws.rebuild_index(on_aside=told.append))
        assert report.realisations == 1 and len(told) == 1 and os.path.isdir(told[0])
        assert ws.index.realisation(r.key) is not None


def test_build_into_an_s3_store_takes_a_lease(
    tmp_path: Path, lab: GitRepo, moto_s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-local store: the key is held by a lease in the store (released after), the
    outputs are copied in, and a second workspace finds the result with one check."""
    for k, v in moto_s3.env.items():
        monkeypatch.setenv(k, v)
    url = moto_s3.new_bucket()
    waits: list[str] = []

    class Waits(BuildEvents):
        def waiting(self, node: Plan, owner: str) -> None:
            waits.append(owner)

    with Workspace.open(url, cwd=str(lab.path), create=True) as ws:
        from qwexstore.leases import LeaseCoordinator

        async def coordinator_kind() -> str:
            try:
                return type(ws.coordinator(await ws.store())).__name__
            finally:
                await ws.disconnect()

        assert asyncio.run(coordinator_kind()) == LeaseCoordinator.__name__
        plan = ws.plan(str(lab.path / "a.drv"))
        r = asyncio.run(ws.build(plan, events=Waits()))
        assert not r.cached and waits == []
    with Workspace.open(url, cwd=str(lab.path)) as ws:
        hit = ws.lookup(ws.plan(str(lab.path / "a.drv")))
        assert hit is not None and hit.run_id == r.run_id

        async def leases() -> list[str]:
            try:
                return await (await ws.store()).storage.list("leases")
            finally:
                await ws.disconnect()

        assert asyncio.run(leases()) == []
    assert len(read_lines(tmp_path / "count")) == 1


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES])
def test_whose_fault_an_unreadable_output_is(
    tmp_path: Path, lab: GitRepo, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    """Reading the outputs fails: a full disk is the store's fault (the work dir and logs
    are kept, StoreError); anything else is the job's (the run fails and is recorded)."""
    import qwexstore.record

    def broken(*args: object) -> None:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(qwexstore.record, "hash_entries", broken)
    with _ws(tmp_path, lab) as ws:
        plan = ws.plan(str(lab.path / "a.drv"))
        kept = tmp_path / "store" / "tmp" / "kept"
        if err == errno.ENOSPC:
            with pytest.raises(StoreError, match="kept in"):
                asyncio.run(ws.build(plan))
            (run_dir,) = kept.iterdir()
            assert b"hello" in (run_dir / "stdout").read_bytes()
            assert (run_dir / "work").is_dir()
            assert ws.index.recent_runs(5) == []  # the store failed: nothing recorded
        else:
            with pytest.raises(BuildFailed, match="cannot read its outputs"):
                asyncio.run(ws.build(plan))
            assert not kept.exists()
            ((_, summary),) = ws.index.recent_runs(5)
            assert summary.status == "failed"
        assert ws.lookup(plan) is None

"""The job lifecycle above the drivers (qwexstore.jobs.follow, jobrun, build's attach and
detach, gc of jobs in flight), driven in-process through the library's fake job driver
(qwex_drivers.fake) with real git repositories and real stores: logs by offset across
polls, the marker as the truth, the scheduler's word when there is none, Ctrl-C,
detach then attach from a second client, pipelines detached, gc, and the cache hit."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import GitRepo, Qwex, drv_text, make_repo
from qwex_drivers.fake import FakeJob, FakeJobDriver, FakeRegistry

from qwexstore import workspace_jobs
from qwexstore.build import realize
from qwexstore.driver import RunPlan
from qwexstore.errors import BuildCancelled, BuildFailed, Detached, TransientDriverError
from qwexstore.gc import collect_garbage
from qwexstore.graph import NodeReport
from qwexstore.jobs import JobDriver, JobHandle, list_handles
from qwexstore.plan import Plan
from qwexstore.records import RunRecord
from qwexstore.store import Store
from qwexstore.workspace import BuildEvents, Workspace

T = TypeVar("T")


@pytest.fixture
def lab(tmp_path: Path, qwex: Qwex, monkeypatch: pytest.MonkeyPatch) -> GitRepo:
    """A repository with ``a.drv`` and ``b.drv`` (independent) and ``c.drv`` (takes both);
    their commands never run (the fake driver says what the jobs do)."""
    for k in ("QWEX_HOME", "GIT_CONFIG_NOSYSTEM", "GIT_CEILING_DIRECTORIES"):
        monkeypatch.setenv(k, qwex.env[k])
    monkeypatch.delenv("QWEX_STORE", raising=False)
    repo = make_repo(tmp_path / "repo", qwex.env)
    repo.commit("drv", {
        "a.drv": drv_text(["train", "a"], name="a", outputs=["out/"]),
        "b.drv": drv_text(["train", "b"], name="b", outputs=["out/"]),
        "c.drv": drv_text(["eval"], name="c", outputs=["out/"], inputs={"a": "drv:a.drv", "b": "drv:b.drv"}),
    })  # fmt: skip
    return repo


def _ws(tmp_path: Path, repo: GitRepo) -> Workspace:
    return Workspace.open(str(tmp_path / "store"), cwd=str(repo.path), create=True)


class Events(BuildEvents):
    """Records live log chunks with the poll count at which each arrived, and submissions."""

    def __init__(self, registry: FakeRegistry) -> None:
        self.registry = registry
        self.chunks: list[tuple[str, bytes, int]] = []
        self.handles: list[JobHandle] = []

    def logs(self, node: Plan) -> Callable[[str, bytes], None]:  # type: ignore[override]
        ev = self

        class Sink:
            def __call__(self, stream: str, chunk: bytes) -> None:
                polls = max((j.polls for j in ev.registry.jobs.values()), default=0)
                ev.chunks.append((stream, chunk, polls))

            def close(self) -> None:
                pass

        return Sink()

    def submitted(self, node: Plan, handle: JobHandle) -> None:
        self.handles.append(handle)

    def text(self, stream: str) -> bytes:
        return b"".join(c for s, c, _ in self.chunks if s == stream)


def _with_store(ws: Workspace, fn: Callable[[Store], Awaitable[T]]) -> T:
    async def go() -> T:
        try:
            return await fn(await ws.store())
        finally:
            await ws.disconnect()

    return asyncio.run(go())


def _run_record(ws: Workspace, run_id: str) -> RunRecord:
    return _with_store(ws, lambda s: s.get_run(run_id))


def _exists(ws: Workspace, path: str) -> bool:
    async def one(s: Store) -> bool:
        return (await s.storage.exists([path]))[0]

    return _with_store(ws, one)


def _only(fake: FakeJobDriver) -> str:
    (run_id,) = fake.registry.jobs
    return run_id


def _polled(fake: FakeJobDriver, n: int) -> bool:
    return bool(fake.registry.jobs) and fake.registry.polls(_only(fake)) >= n


async def _until(pred: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Let the build run until ``pred()``; AssertionError after ``timeout`` seconds (a
    bound against hanging, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def _states(fake: FakeJobDriver) -> list[str]:
    return [c.detail for c in fake.registry.ops("status")]


def test_the_fake_is_a_job_driver() -> None:
    assert isinstance(FakeJobDriver(), JobDriver)


def test_logs_stream_in_order_across_polls_by_offset(tmp_path: Path, lab: GitRepo) -> None:
    job = FakeJob(stdout=[b"one\n", b"two\n", b"three\n"], stderr=[b"e1\n", b"e2\n"],
                  states=["pending", "running", "running"], outputs={"out/x": b"1"}, read_limit=3)
    fake = FakeJobDriver(lambda plan: job)
    ev = Events(fake.registry)
    with _ws(tmp_path, lab) as ws:
        r = asyncio.run(ws.build(ws.plan(str(lab.path / "a.drv")), driver=fake, events=ev))
        assert not r.cached and r.files == 1
        assert ev.text("stdout") == b"one\ntwo\nthree\n" and ev.text("stderr") == b"e1\ne2\n"
        polls = [p for s, _, p in ev.chunks if s == "stdout"]
        assert polls == sorted(polls) and polls[0] == 1 and polls[-1] > 1  # live, not at the end
        # every read starts where the bytes passed on so far end (read_limit=3 splits chunks)
        reads = [c.detail for c in fake.registry.ops("read_log")]
        offs = [int(d.split("@")[1]) for d in reads if d.startswith("stdout@")]
        ends = list(itertools.accumulate(len(c) for s, c, _ in ev.chunks if s == "stdout"))
        assert offs == sorted(offs) and sorted(set(offs)) == [0, *ends]
        assert max(len(c) for _, c, _ in ev.chunks) <= 3
        rec = _run_record(ws, r.run_id)
        assert rec.status == "succeeded" and rec.stdout is not None
        assert _with_store(ws, lambda s: s.get_blob(rec.stdout or "")) == b"one\ntwo\nthree\n"
        assert list_handles(ws.scratch) == []
    assert [c.run_ids for c in fake.registry.ops("submit")] == [(r.run_id,)]
    assert all(len(c.run_ids) == 1 for c in fake.registry.ops("status"))


def test_the_marker_decides_the_outcome_not_the_scheduler(tmp_path: Path, lab: GitRepo) -> None:
    fake = FakeJobDriver(lambda plan: FakeJob(exit=3, end_state="succeeded"))
    with _ws(tmp_path, lab) as ws:
        with pytest.raises(BuildFailed) as err:
            asyncio.run(ws.build(ws.plan(str(lab.path / "a.drv")), driver=fake))
        assert err.value.command_exit_code == 3
        rec = _run_record(ws, err.value.run_id)
        assert (rec.status, rec.exit_code) == ("failed", 3)
        assert list_handles(ws.scratch) == []  # removed after recording a failure too


def test_done_without_a_marker_fails_with_the_schedulers_reason_after_a_recheck(
    tmp_path: Path, lab: GitRepo
) -> None:
    fake = FakeJobDriver(lambda plan: FakeJob(states=["running"], marker=False, end_state="failed",
                                              reason="TIMEOUT", outputs={"out/x": b"partial"}))
    with _ws(tmp_path, lab) as ws:
        with pytest.raises(BuildFailed) as err:
            asyncio.run(ws.build(ws.plan(str(lab.path / "a.drv")), driver=fake))
        rec = _run_record(ws, err.value.run_id)
        assert rec.status == "failed" and "TIMEOUT" in rec.message and rec.manifest is None
        assert list_handles(ws.scratch) == []
    states = _states(fake)
    first_end = states.index("failed")
    assert len(states) - first_end >= 3, states  # not given up on the first poll that saw it end
    assert {c.detail for c in fake.registry.ops("marker")} == {"none"}
    assert fake.registry.ops("collect") == []


def test_cancelled_by_the_scheduler_without_a_marker_is_recorded_cancelled(
    tmp_path: Path, lab: GitRepo
) -> None:
    fake = FakeJobDriver(lambda plan: FakeJob(states=["pending", "running"], marker=False,
                                              end_state="cancelled", reason="CANCELLED by 0"))
    with _ws(tmp_path, lab) as ws:
        with pytest.raises(BuildCancelled) as err:
            asyncio.run(ws.build(ws.plan(str(lab.path / "a.drv")), driver=fake))
        assert _run_record(ws, err.value.run_id).status == "cancelled"
        assert ws.lookup(ws.plan(str(lab.path / "a.drv"))) is None
        assert list_handles(ws.scratch) == []
    assert fake.registry.ops("cancel") == []  # the scheduler cancelled it, not qwex


def test_a_marker_while_the_scheduler_still_runs_the_job_waits_for_it_to_stop(
    tmp_path: Path, lab: GitRepo
) -> None:
    fake = FakeJobDriver(lambda plan: FakeJob(states=["running"], linger=3, outputs={"out/x": b"1"}))
    with _ws(tmp_path, lab) as ws:
        r = asyncio.run(ws.build(ws.plan(str(lab.path / "a.drv")), driver=fake))
        assert r.files == 1
    calls = fake.registry.calls
    found = next(i for i, c in enumerate(calls) if c.op == "marker" and c.detail == "found")
    stopped = next(i for i, c in enumerate(calls) if c.op == "status" and c.detail == "succeeded")
    collected = next(i for i, c in enumerate(calls) if c.op == "collect")
    running_after_marker = [c for c in calls[found:stopped] if c.op == "status" and c.detail == "running"]
    assert found < stopped < collected and len(running_after_marker) >= 2


def test_ctrl_c_while_attached_cancels_the_job_once_and_records_it_cancelled(
    tmp_path: Path, lab: GitRepo
) -> None:
    gate = threading.Event()  # never set: the job runs until cancelled
    fake = FakeJobDriver(lambda plan: FakeJob(stdout=[b"working\n"], gate=gate))

    async def go(ws: Workspace) -> BaseException | None:
        task = asyncio.create_task(ws.build(ws.plan(str(lab.path / "a.drv")), driver=fake))
        await _until(lambda: _polled(fake, 2), "the job polled twice")
        task.cancel()
        try:
            await task
        except (BuildCancelled, asyncio.CancelledError) as e:
            return e
        return None

    with _ws(tmp_path, lab) as ws:
        stopped = asyncio.run(go(ws))
        assert stopped is not None
        run_id = _only(fake)
        rec = _run_record(ws, run_id)
        assert rec.status == "cancelled"
        assert list_handles(ws.scratch) == []
        assert not (Path(ws.scratch) / "runs" / run_id).exists()
    assert [c.run_ids for c in fake.registry.ops("cancel")] == [(run_id,)]
    assert not gate.is_set()


def test_detach_then_a_second_client_attaches_and_records_once(
    tmp_path: Path, lab: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    first = FakeJobDriver(lambda plan: FakeJob(stdout=[b"a\n", b"b\n"], outputs={"out/x": b"1"}, gate=gate))
    second = FakeJobDriver(registry=first.registry)  # another client: no handler, it must not submit
    monkeypatch.setattr(workspace_jobs, "job_driver", lambda handle: FakeJobDriver(registry=first.registry))
    with _ws(tmp_path, lab) as ws:
        plan = ws.plan(str(lab.path / "a.drv"))
        with pytest.raises(Detached) as det:
            asyncio.run(ws.build(plan, driver=first, detach=True))
        handle = det.value.handle
        assert det.value.exit_code == 0
        assert (Path(ws.scratch) / "jobs" / handle.run_id).is_file()
        assert first.registry.ops("cancel") == []  # --detach never cancels
        listed = asyncio.run(workspace_jobs.statuses(ws))
        assert [(h.run_id, s.state) for h, s in listed] == [(handle.run_id, "running")]
        gate.set()
        ev = Events(first.registry)
        r = asyncio.run(ws.build(plan, driver=second, events=ev))
        assert (r.run_id, r.cached, r.files) == (handle.run_id, False, 1)
        assert ev.text("stdout") == b"a\nb\n" and [h.run_id for h in ev.handles] == [handle.run_id]
        assert list_handles(ws.scratch) == []
        runs = _with_store(ws, lambda s: s.storage.list("runs/"))
        assert [os.path.basename(p.rstrip("/")) for p in runs] == [handle.run_id]
        again = asyncio.run(ws.build(plan, driver=second))
        assert again.cached and again.run_id == handle.run_id
    assert len(first.registry.ops("submit")) == 1
    assert second.calls and all(c.op != "submit" for c in second.calls)


def test_a_detached_pipeline_submits_every_ready_node(tmp_path: Path, lab: GitRepo) -> None:
    fake = FakeJobDriver(lambda plan: FakeJob(outputs={"out/x": plan.name.encode()}, gate=threading.Event()))
    reports: dict[str, NodeReport] = {}
    with _ws(tmp_path, lab) as ws:
        with pytest.raises(Detached) as det:
            asyncio.run(ws.build(ws.plan(str(lab.path / "c.drv")), driver=fake, detach=True, reports=reports,
                                 jobs=2))
        assert det.value.exit_code == 0
        by_name = {r.name: r for r in reports.values()}
        assert (by_name["a"].status, by_name["b"].status) == ("submitted", "submitted")
        assert by_name["c"].status != "failed" and by_name["c"].message.startswith("not started")
        assert sorted(h.name for h in list_handles(ws.scratch)) == ["a", "b"]
    assert sorted(c.run_ids[0] for c in fake.registry.ops("submit")) == sorted(fake.registry.jobs)
    assert len(fake.registry.jobs) == 2 and fake.registry.ops("cancel") == []


def test_gc_keeps_a_job_in_flight_and_drops_it_once_recorded(tmp_path: Path, lab: GitRepo) -> None:
    gate = threading.Event()
    fake = FakeJobDriver(lambda plan: FakeJob(exit=1, stderr=[b"boom\n"], gate=gate))
    with _ws(tmp_path, lab) as ws:
        plan = ws.plan(str(lab.path / "a.drv"))
        with pytest.raises(Detached) as det:
            asyncio.run(ws.build(plan, driver=fake, detach=True))
        handle = det.value.handle
        drv_path, run_dir = Store.derivation_path(handle.drv), Path(ws.scratch) / "runs" / handle.run_id

        def gc() -> None:
            _with_store(ws, lambda s: collect_garbage(s, ws.index, ws.scratch))

        gc()
        assert _exists(ws, drv_path) and run_dir.is_dir()
        gate.set()
        with pytest.raises(BuildFailed):
            asyncio.run(ws.build(plan, driver=FakeJobDriver(registry=fake.registry)))
        assert list_handles(ws.scratch) == []  # removed once recorded, though it failed
        gc()
        assert not _exists(ws, drv_path) and not run_dir.exists()


def test_realize_runs_the_fake_directly(tmp_path: Path, lab: GitRepo) -> None:
    fake = FakeJobDriver(lambda plan: FakeJob(stdout=[b"hi\n"], outputs={"out/x": b"1"}))
    seen: list[bytes] = []
    with _ws(tmp_path, lab) as ws:
        plan = ws.plan(str(lab.path / "a.drv"))
        r = _with_store(ws, lambda s: realize(s, ws.index, plan, on_log=lambda _s, c: seen.append(c),
                                              driver=fake, scratch=ws.scratch))
        assert not r.cached and b"".join(seen) == b"hi\n" and ws.lookup(plan) is not None
    assert len(fake.registry.ops("submit")) == 1


def test_a_cache_hit_never_reaches_the_driver(
    tmp_path: Path, lab: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeJobDriver(lambda plan: FakeJob(outputs={"out/x": b"1"}))
    with _ws(tmp_path, lab) as ws:
        plan = ws.plan(str(lab.path / "a.drv"))
        built = asyncio.run(ws.build(plan, driver=fake))

        def never(plan: RunPlan) -> FakeJob:
            raise AssertionError("the driver was asked to run a cached key")

        def no_driver(name: str) -> None:
            raise AssertionError("a driver was loaded for a cached key")

        monkeypatch.setattr("qwexstore.build.load_driver", no_driver)
        other = FakeJobDriver(never)
        hit = asyncio.run(ws.build(plan, driver=other))
        assert hit.cached and hit.run_id == built.run_id
        direct = _with_store(ws, lambda s: realize(s, ws.index, plan, on_log=lambda _s, _c: None,
                                                   scratch=ws.scratch))
        assert direct.cached and direct.run_id == built.run_id
    assert other.calls == []




class Dies(Events):
    """A client killed while following: its log sink raises SystemExit at the first chunk
    (nothing after that point of the client runs: no cancel, no record)."""

    def logs(self, node: Plan) -> Callable[[str, bytes], None]:  # type: ignore[override]
        class Sink:
            def __call__(self, stream: str, chunk: bytes) -> None:
                raise SystemExit(137)

            def close(self) -> None:
                pass

        return Sink()


def test_a_client_that_dies_mid_job_leaves_it_to_the_next_build(tmp_path: Path, lab: GitRepo) -> None:
    gate = threading.Event()
    job = FakeJob(stdout=[b"a\n", b"b\n", b"c\n"], outputs={"out/x": b"1"}, gate=gate)
    first = FakeJobDriver(lambda plan: job)
    with _ws(tmp_path, lab) as ws:
        plan = ws.plan(str(lab.path / "a.drv"))
        with pytest.raises(SystemExit):
            asyncio.run(ws.build(plan, driver=first, events=Dies(first.registry)))
        run_id = _only(first)
        assert [h.run_id for h in list_handles(ws.scratch)] == [run_id]
        gate.set()
        second = FakeJobDriver(registry=first.registry)
        r = asyncio.run(ws.build(plan, driver=second))
        assert (r.run_id, r.files) == (run_id, 1)
        rec = _run_record(ws, run_id)
        # the dead client's partial log is replaced, not appended to
        assert _with_store(ws, lambda s: s.get_blob(rec.stdout or "")) == b"a\nb\nc\n"
        assert list_handles(ws.scratch) == []
    assert len(first.registry.ops("submit")) == 1 and first.registry.ops("cancel") == []


def test_ctrl_c_while_attached_to_an_earlier_clients_job_cancels_it_once(
    tmp_path: Path, lab: GitRepo
) -> None:
    first = FakeJobDriver(lambda plan: FakeJob(stdout=[b"x\n"], gate=threading.Event()))
    second = FakeJobDriver(registry=first.registry)

    async def attach_then_interrupt(ws: Workspace, plan: Plan) -> None:
        task = asyncio.create_task(ws.build(plan, driver=second))
        await _until(lambda: sum(c.op == "status" for c in second.calls) >= 2, "the second client polling")
        task.cancel()
        with pytest.raises((BuildCancelled, asyncio.CancelledError)):
            await task

    with _ws(tmp_path, lab) as ws:
        plan = ws.plan(str(lab.path / "a.drv"))
        with pytest.raises(Detached) as det:
            asyncio.run(ws.build(plan, driver=first, detach=True))
        asyncio.run(attach_then_interrupt(ws, plan))
        run_id = det.value.handle.run_id
        assert _run_record(ws, run_id).status == "cancelled"
        assert list_handles(ws.scratch) == [] and ws.lookup(plan) is None
    assert [c.run_ids for c in first.registry.ops("cancel")] == [(run_id,)]
    assert len(first.registry.ops("submit")) == 1


def test_qwex_cancel_of_a_detached_job_records_it_cancelled(
    tmp_path: Path, lab: GitRepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = FakeJobDriver(lambda plan: FakeJob(gate=threading.Event()))
    # `qwex cancel` rebuilds the driver from the handle's layers (none here): give it the fake
    monkeypatch.setattr(workspace_jobs, "job_driver", lambda handle: FakeJobDriver(registry=first.registry))
    monkeypatch.setattr("qwexstore.build.load_driver", lambda name: FakeJobDriver(registry=first.registry))
    with _ws(tmp_path, lab) as ws:
        plan = ws.plan(str(lab.path / "a.drv"))
        with pytest.raises(Detached) as det:
            asyncio.run(ws.build(plan, driver=first, detach=True))
        handle = workspace_jobs.find_job(ws, det.value.handle.run_id[:12])

        async def cancel() -> str:
            try:
                return await workspace_jobs.cancel(ws, handle, BuildEvents())
            finally:
                await ws.disconnect()

        assert asyncio.run(cancel()) == "cancelled"
        assert _run_record(ws, handle.run_id).status == "cancelled"
        assert list_handles(ws.scratch) == []
    assert len(first.registry.ops("cancel")) == 1 and len(first.registry.ops("submit")) == 1


def test_a_detached_pipeline_is_finished_by_the_next_build(tmp_path: Path, lab: GitRepo) -> None:
    gate = threading.Event()
    fake = FakeJobDriver(lambda plan: FakeJob(outputs={"out/x": plan.name.encode()}, gate=gate))
    with _ws(tmp_path, lab) as ws:
        plan = ws.plan(str(lab.path / "c.drv"))
        with pytest.raises(Detached):
            asyncio.run(ws.build(plan, driver=fake, detach=True, jobs=2))
        gate.set()
        r = asyncio.run(ws.build(plan, driver=fake, jobs=2))
        assert not r.cached and list_handles(ws.scratch) == []
    names = sorted(fake.registry.jobs[c.run_ids[0]].plan.name for c in fake.registry.ops("submit"))
    assert names == ["a", "b", "c"]  # a and b attached to, not submitted again


def test_detach_while_the_key_is_in_flight_returns_at_once(tmp_path: Path, lab: GitRepo) -> None:
    fake = FakeJobDriver(lambda plan: FakeJob(gate=3, outputs={"out/x": b"1"}))
    with _ws(tmp_path, lab) as ws:
        plan = ws.plan(str(lab.path / "a.drv"))
        with pytest.raises(Detached) as first:
            asyncio.run(ws.build(plan, driver=fake, detach=True))
        with pytest.raises(Detached) as again:
            asyncio.run(ws.build(plan, driver=fake, detach=True))
        assert again.value.handle.run_id == first.value.handle.run_id
        assert fake.registry.ops("status") == []  # nothing followed
    assert len(fake.registry.ops("submit")) == 1


def test_ctrl_c_waits_for_the_cancelled_job_to_stop_before_recording(tmp_path: Path, lab: GitRepo) -> None:
    fake = FakeJobDriver(lambda plan: FakeJob(gate=threading.Event(), cancel_delay=2))

    async def go(ws: Workspace) -> None:
        task = asyncio.create_task(ws.build(ws.plan(str(lab.path / "a.drv")), driver=fake))
        await _until(lambda: _polled(fake, 1), "the job polled")
        task.cancel()
        with pytest.raises((BuildCancelled, asyncio.CancelledError)):
            await task

    with _ws(tmp_path, lab) as ws:
        asyncio.run(go(ws))
    calls = fake.registry.calls
    cancel = next(i for i, c in enumerate(calls) if c.op == "cancel")
    assert any(c.op == "status" and c.detail == "cancelled" for c in calls[cancel:])


def _lose_the_connection_while_following(ws: Workspace, plan: Plan, fake: FakeJobDriver) -> None:
    """Every poll fails for longer than the retry budget (shortened here to 0.3 s)."""
    async def go() -> None:
        task = asyncio.create_task(ws.build(plan, driver=fake))
        await _until(lambda: _polled(fake, 1), "the job polled")
        fake.registry.fail("status", TransientDriverError("connection lost"), times=1000)
        with pytest.raises(TransientDriverError):
            await task

    os.environ["QWEX_DRIVER_RETRY_S"] = "0.3"
    try:
        asyncio.run(go())
    finally:
        del os.environ["QWEX_DRIVER_RETRY_S"]
        fake.registry.faults.clear()


def test_a_connection_lost_for_a_while_is_ridden_out(tmp_path: Path, lab: GitRepo) -> None:
    """Polls that fail for a few seconds (a dropped connection, a controller restarting)
    do not end the build: it goes on following the same job and records it once."""
    gate = threading.Event()
    fake = FakeJobDriver(lambda plan: FakeJob(outputs={"out/x": b"1"}, gate=gate))

    async def go(ws: Workspace) -> object:
        task = asyncio.create_task(ws.build(ws.plan(str(lab.path / "a.drv")), driver=fake))
        await _until(lambda: _polled(fake, 1), "the job polled")
        fake.registry.fail("status", TransientDriverError("connection lost"), times=3)
        fake.registry.fail("marker", TransientDriverError("connection lost"), times=2)
        await _until(lambda: not fake.registry.faults.get("status"), "the failures were seen")
        gate.set()
        return await task

    with _ws(tmp_path, lab) as ws:
        result = asyncio.run(go(ws))
        run_id = _only(fake)
        assert getattr(result, "run_id", None) == run_id and getattr(result, "files", None) == 1
        assert _run_record(ws, run_id).status == "succeeded"
        assert list_handles(ws.scratch) == []
    assert len(fake.registry.ops("submit")) == 1


def test_a_driver_error_while_following_leaves_the_job_in_flight(tmp_path: Path, lab: GitRepo) -> None:
    """The job is not cancelled and keeps its handle; the next build attaches and records
    it once (how it ended is the next test's subject)."""
    gate = threading.Event()
    fake = FakeJobDriver(lambda plan: FakeJob(gate=gate))
    with _ws(tmp_path, lab) as ws:
        plan = ws.plan(str(lab.path / "a.drv"))
        _lose_the_connection_while_following(ws, plan, fake)
        run_id = _only(fake)
        assert [h.run_id for h in list_handles(ws.scratch)] == [run_id]  # still in flight
        assert fake.registry.ops("cancel") == []
        gate.set()
        with contextlib.suppress(BuildFailed):
            asyncio.run(ws.build(plan, driver=FakeJobDriver(registry=fake.registry)))
        assert list_handles(ws.scratch) == []
        assert _run_record(ws, run_id).run_id == run_id
        assert _with_store(ws, lambda s: s.storage.list("runs/")) == [Store.run_path(run_id)]
    assert len(fake.registry.ops("submit")) == 1


def test_a_driver_error_while_following_keeps_the_jobs_work_dir(tmp_path: Path, lab: GitRepo) -> None:
    gate = threading.Event()
    fake = FakeJobDriver(lambda plan: FakeJob(outputs={"out/x": b"1"}, gate=gate))
    with _ws(tmp_path, lab) as ws:
        plan = ws.plan(str(lab.path / "a.drv"))
        _lose_the_connection_while_following(ws, plan, fake)
        gate.set()
        r = asyncio.run(ws.build(plan, driver=FakeJobDriver(registry=fake.registry)))
        assert r.files == 1


def test_ctrl_c_after_the_job_succeeded_records_its_success(tmp_path: Path, lab: GitRepo) -> None:
    """Interrupted once the job has written its success marker (its scheduler still shows
    it running): the cancel finds it ended, and the run is recorded as it ended, outputs
    and all, not thrown away as cancelled (an adversarial review found this)."""
    fake = FakeJobDriver(lambda plan: FakeJob(outputs={"out/x": b"done"}, linger=5))

    async def go(ws: Workspace) -> object:
        task = asyncio.create_task(ws.build(ws.plan(str(lab.path / "a.drv")), driver=fake))
        await _until(lambda: bool(fake.registry.jobs) and fake.registry.jobs[_only(fake)].marker is not None,
                     "the job wrote its marker")
        task.cancel()
        return await task

    with _ws(tmp_path, lab) as ws:
        result = asyncio.run(go(ws))
        run_id = _only(fake)
        assert getattr(result, "run_id", None) == run_id
        assert _run_record(ws, run_id).status == "succeeded"
        assert list_handles(ws.scratch) == []

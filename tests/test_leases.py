"""Leases (qwexstore/leases.py, spec/locks.md "Leases") and the coordinator interface.

In-process cases run against a real S3 server (moto); the two-process cases against
SeaweedFS, with two scratch directories (two ``flock`` domains, as on two machines)
contending for one key through one bucket.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from servers import S3Server

from qwexstore import canonical
from qwexstore.coordinator import Coordinator, FlockCoordinator
from qwexstore.errors import LeaseLost, UserError
from qwexstore.leases import Lease, LeaseCoordinator, Owner, decode_lease, lease_path, lease_ttl_s
from qwexstore.storage import open_storage

T = TypeVar("T")
KEY = "blake3:" + "ab" * 32


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(params=["local", "moto"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh, empty store location: a directory, or a bucket on moto (the AWS variables
    set for this test only)."""
    monkeypatch.setenv("QWEX_STORE_RETRY_S", "2")
    if request.param == "local":
        (tmp_path / "shared").mkdir()
        return str(tmp_path / "shared")
    server: S3Server = request.getfixturevalue("moto_s3")
    for k, v in server.env.items():
        monkeypatch.setenv(k, v)
    return server.new_bucket()


def scratch(tmp_path: Path, name: str) -> str:
    """A machine's scratch directory: its own flock domain."""
    d = tmp_path / f"machine-{name}"
    d.mkdir(exist_ok=True)
    return str(d)


def foreign(key: str, expires_ns: int, host: str = "elsewhere", pid: int = 4242) -> bytes:
    """A lease written by another machine."""
    return canonical.encode(Lease(key, Owner(host, pid, "bob"), uuid.uuid4().hex, 0, expires_ns))


# -- configuration ----------------------------------------------------------------------


def test_ttl_from_environment() -> None:
    assert lease_ttl_s({}) == 60.0
    assert lease_ttl_s({"QWEX_LEASE_TTL_S": "2.5"}) == 2.5
    for bad in ("0", "-1", "abc", "nan", "1e9"):
        with pytest.raises(UserError, match="QWEX_LEASE_TTL_S"):
            lease_ttl_s({"QWEX_LEASE_TTL_S": bad})


def test_lease_path_and_format() -> None:
    assert lease_path(KEY) == f"leases/ab/{'ab' * 32}"
    data = foreign(KEY, 5)
    lease = decode_lease(data)
    assert lease is not None and lease.expires_ns == 5 and lease.owner.text() == "pid 4242 on elsewhere (bob)"
    assert b'"format":"qwex.lease/1"' in data
    assert decode_lease(b"not json") is None
    assert decode_lease(data.replace(b"qwex.lease/1", b"qwex.lease/9")) is None


# -- the flock coordinator --------------------------------------------------------------


def test_flock_coordinator_serialises_one_scratch(tmp_path: Path) -> None:
    async def go() -> list[str]:
        coord: Coordinator = FlockCoordinator(str(tmp_path))
        events: list[str] = []
        waits: list[str] = []

        async def one(name: str, on_wait: Any) -> None:
            async with coord.hold(KEY, on_wait) as hold:
                events.append(f"{name} in")
                await hold.check()  # never fails for a flock
                await asyncio.sleep(0.2)
                events.append(f"{name} out")

        first = asyncio.create_task(one("a", None))
        while not events:
            await asyncio.sleep(0.01)
        await asyncio.gather(first, one("b", waits.append))
        assert len(waits) == 1 and waits[0].startswith(f"pid {os.getpid()} on ")
        return events

    assert run(go()) == ["a in", "a out", "b in", "b out"]


# -- leases in one process, two flock domains -------------------------------------------


def test_second_machine_waits_names_the_holder_then_gets_the_key(store_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        st = open_storage(store_url)
        a = LeaseCoordinator(st, scratch(tmp_path, "a"), ttl_s=30)
        b = LeaseCoordinator(st, scratch(tmp_path, "b"), ttl_s=30)
        events: list[str] = []
        waits: list[str] = []
        held = asyncio.Event()
        go_on = asyncio.Event()

        async def first() -> None:
            async with a.hold(KEY) as hold:
                events.append("a in")
                held.set()
                await go_on.wait()
                await hold.check()
                events.append("a out")

        async def second() -> None:
            async with b.hold(KEY, waits.append):
                events.append("b in")

        t1 = asyncio.create_task(first())
        await held.wait()
        t2 = asyncio.create_task(second())
        while not waits:  # b reports the holder once it finds the lease live
            await asyncio.sleep(0.02)
        assert events == ["a in"]
        go_on.set()
        await asyncio.gather(t1, t2)
        assert events == ["a in", "a out", "b in"]
        assert len(waits) == 1 and waits[0].startswith(f"pid {os.getpid()} on ")
        assert await st.ref_get(lease_path(KEY)) is None  # released
        await st.close()

    run(go())


def test_expired_lease_is_taken_over(store_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        st = open_storage(store_url)
        assert await st.ref_put(lease_path(KEY), foreign(KEY, time.time_ns() - 1), expect=None)
        waits: list[str] = []
        async with LeaseCoordinator(st, scratch(tmp_path, "b"), ttl_s=30).hold(KEY, waits.append) as hold:
            cur = await st.ref_get(lease_path(KEY))
            assert cur is not None
            lease = decode_lease(cur.data)
            assert lease is not None and lease.owner.pid == os.getpid() and lease.token == hold.lease.token
            await hold.check()
        assert waits == []  # an expired lease is not waited for
        await st.close()

    run(go())


def test_two_takers_of_an_expired_lease_hold_it_one_at_a_time(store_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        st = open_storage(store_url)
        assert await st.ref_put(lease_path(KEY), foreign(KEY, time.time_ns() - 1), expect=None)
        inside: list[str] = []
        log: list[str] = []
        waits: list[str] = []

        async def taker(name: str) -> None:
            async with LeaseCoordinator(st, scratch(tmp_path, name), ttl_s=30).hold(KEY, waits.append):
                inside.append(name)
                log.append(f"{name}:{len(inside)}")
                await asyncio.sleep(0.3)
                inside.remove(name)

        await asyncio.gather(taker("a"), taker("b"))
        assert sorted(x.split(":")[0] for x in log) == ["a", "b"]
        assert all(x.endswith(":1") for x in log), log  # never two inside at once
        assert len(waits) == 1  # the loser waited for the winner
        await st.close()

    run(go())


def test_a_holder_whose_lease_was_stolen_fails_check(store_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        st = open_storage(store_url)
        path = lease_path(KEY)
        async with LeaseCoordinator(st, scratch(tmp_path, "a"), ttl_s=30).hold(KEY) as hold:
            cur = await st.ref_get(path)
            assert cur is not None
            # Another machine takes it over (as after an expiry), by compare-and-swap.
            thief = foreign(KEY, time.time_ns() + 60 * 10**9, host="thief", pid=7)
            assert await st.ref_put(path, thief, expect=cur.etag)
            with pytest.raises(LeaseLost, match="pid 7 on thief"):
                await hold.check()
            with pytest.raises(LeaseLost):  # stays lost
                await hold.check()
        after = await st.ref_get(path)
        assert after is not None and after.data == thief  # the release left the thief's lease alone
        await st.close()

    run(go())


def test_a_renewal_whose_answer_was_lost_keeps_the_lease(store_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        st = open_storage(store_url)
        path = lease_path(KEY)
        async with LeaseCoordinator(st, scratch(tmp_path, "a"), ttl_s=30).hold(KEY) as hold:
            cur = await st.ref_get(path)
            assert cur is not None
            # Our own renewal reached the store, but its answer (the new etag) never came back.
            renewed = msgspec.structs.replace(hold.lease, expires_ns=hold.lease.expires_ns + 1)
            assert await st.ref_put(path, canonical.encode(renewed), expect=cur.etag)
            await hold.check()  # the re-read shows our token: still ours
            await hold.check()
            assert hold.lost_to is None
        assert await st.ref_get(path) is None
        await st.close()

    run(go())


def test_heartbeat_keeps_the_lease_past_its_ttl(store_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        st = open_storage(store_url)
        ttl = 1.0
        order: list[str] = []

        async def other() -> None:
            async with LeaseCoordinator(st, scratch(tmp_path, "b"), ttl_s=ttl).hold(KEY):
                order.append("b in")

        async with LeaseCoordinator(st, scratch(tmp_path, "a"), ttl_s=ttl).hold(KEY) as hold:
            first = hold.lease
            waiter = asyncio.create_task(other())
            await asyncio.sleep(4 * ttl)  # four lease durations: only renewals keep it
            await hold.check()
            cur = await st.ref_get(lease_path(KEY))
            assert cur is not None
            now = decode_lease(cur.data)
            assert now is not None and now.token == first.token
            assert now.expires_ns > first.expires_ns + int(2 * ttl * 1e9)
            order.append("a out")
        await waiter
        assert order == ["a out", "b in"]
        await st.close()

    run(go())


def test_an_undecodable_lease_is_held_by_another_builder_until_it_stays_unchanged_a_ttl(
    store_url: str, tmp_path: Path
) -> None:
    async def go() -> None:
        st = open_storage(store_url)
        assert await st.ref_put(lease_path(KEY), b"\x00garbage", expect=None)
        waits: list[str] = []
        t0 = time.monotonic()
        async with LeaseCoordinator(st, scratch(tmp_path, "b"), ttl_s=1.0).hold(KEY, waits.append) as hold:
            held_after = time.monotonic() - t0
            await hold.check()
        assert waits == ["another builder"]
        assert held_after >= 1.0  # never taken as free: it waited one TTL of no change
        await st.close()

    run(go())


def test_released_on_error_and_on_cancel(store_url: str, tmp_path: Path) -> None:
    async def go() -> None:
        st = open_storage(store_url)
        coord = LeaseCoordinator(st, scratch(tmp_path, "a"), ttl_s=30)
        with pytest.raises(RuntimeError):
            async with coord.hold(KEY):
                raise RuntimeError("job failed")
        assert await st.ref_get(lease_path(KEY)) is None

        inside = asyncio.Event()

        async def holder() -> None:
            async with coord.hold(KEY):
                inside.set()
                await asyncio.Event().wait()

        task = asyncio.create_task(holder())
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await st.ref_get(lease_path(KEY)) is None

        # Cancelled while waiting for a live lease: nothing held, the holder's lease intact.
        live = foreign(KEY, time.time_ns() + 60 * 10**9)
        assert await st.ref_put(lease_path(KEY), live, expect=None)
        waits: list[str] = []
        cm = LeaseCoordinator(st, scratch(tmp_path, "b"), ttl_s=30).hold(KEY, waits.append)
        waiting = asyncio.create_task(cm.__aenter__())
        while not waits:
            await asyncio.sleep(0.02)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        cur = await st.ref_get(lease_path(KEY))
        assert cur is not None and cur.data == live
        await st.close()

    run(go())


# -- two processes, two flock domains, one SeaweedFS bucket ---------------------------------

WORKER = textwrap.dedent("""
    import asyncio, os, sys
    from qwexstore.leases import LeaseCoordinator
    from qwexstore.storage import open_storage

    url, scratch, key, shared, n, hold_s = sys.argv[1:7]

    async def main():
        st = open_storage(url, endpoint=os.environ.get("AWS_ENDPOINT_URL"))
        coord = LeaseCoordinator(st, scratch)
        for _ in range(int(n)):
            async with coord.hold(key, lambda owner: print("waiting for", owner, flush=True)) as hold:
                print("held", flush=True)
                marker = os.path.join(shared, "inside")
                try:
                    os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    print("OVERLAP", flush=True)
                await asyncio.sleep(float(hold_s))
                await hold.check()
                os.unlink(marker)
            print("released", flush=True)
        await st.close()

    asyncio.run(main())
""")


class Worker:
    """A builder on its own "machine": its own scratch directory (flock domain)."""

    def __init__(self, url: str, tmp: Path, name: str, env: dict[str, str], n: int, hold_s: float) -> None:
        shared = tmp / "shared-fs"
        shared.mkdir(exist_ok=True)
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, url, scratch(tmp, name), KEY, str(shared), str(n), str(hold_s)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )

    def wait_for(self, prefix: str, timeout: float = 120.0) -> str:
        """Read output lines until one starts with ``prefix``; fail after ``timeout``."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.5)
            if ready:
                line = self.proc.stdout.readline()
                if not line:
                    break
                self.lines.append(line.strip())
                if line.startswith(prefix):
                    return line.strip()
        raise AssertionError(f"no {prefix!r} line; got {self.lines}; stderr: {self.finish()[1]}")

    def finish(self, timeout: float = 120.0) -> tuple[int, str]:
        out, err = self.proc.communicate(timeout=timeout)
        self.lines += out.splitlines()
        return self.proc.returncode, err


@pytest.fixture
def seaweed_bucket(seaweed_s3: S3Server) -> tuple[str, dict[str, str]]:
    return seaweed_s3.new_bucket(), {**seaweed_s3.env, "QWEX_STORE_RETRY_S": "5"}


def test_two_processes_hold_the_key_one_at_a_time(
    seaweed_bucket: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = seaweed_bucket
    env = {**env, "QWEX_LEASE_TTL_S": "5"}
    a = Worker(url, tmp_path, "a", env, n=3, hold_s=0.3)
    b = Worker(url, tmp_path, "b", env, n=3, hold_s=0.3)
    (ra, ea), (rb, eb) = a.finish(), b.finish()
    assert (ra, rb) == (0, 0), (ea, eb)
    lines = a.lines + b.lines
    assert "OVERLAP" not in lines
    assert lines.count("held") == 6


def test_kill_9_holder_is_taken_over_after_expiry(
    seaweed_bucket: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = seaweed_bucket
    env = {**env, "QWEX_LEASE_TTL_S": "2"}
    a = Worker(url, tmp_path, "a", env, n=1, hold_s=3600)
    a.wait_for("held")
    b = Worker(url, tmp_path, "b", env, n=1, hold_s=0)
    waiting = b.wait_for("waiting for")
    assert f"pid {a.proc.pid} on " in waiting
    a.proc.send_signal(signal.SIGKILL)
    assert a.finish()[0] == -signal.SIGKILL
    (tmp_path / "shared-fs" / "inside").unlink()  # the dead holder's marker
    b.wait_for("held")
    code, err = b.finish()
    assert code == 0, err
    assert "OVERLAP" not in b.lines

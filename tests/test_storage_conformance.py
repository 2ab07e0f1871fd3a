"""The Storage contract (qwexstore/storage.py, spec/storage.md), checked against every backend.

Backends (the same tests run on each):
- ``local``: LocalStorage on a tmp dir;
- ``memory``: ``open_storage("memory://...")`` (FsspecStorage over fsspec's memory fs);
- ``fsspec-file``: FsspecStorage over ``fsspec.filesystem("file")`` (the generic adapter);
- ``moto``, ``seaweed``: ``open_storage("s3://BUCKET/store")`` on a real moto server and a
  real SeaweedFS (tests/servers.py), credentials and endpoint from the environment;
- ``sftp``: ``open_storage("ssh://qwex-test/DIR")`` on a real OpenSSH sshd, the alias
  resolved through ``$HOME/.ssh/config``.

Every ``run`` is its own ``asyncio.run``, so each test also checks that a storage object
survives event loops coming and going. ``-k local`` gives a fast loop without servers.
Local-only guarantees (modes, temp files) are at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import fsspec
import pytest

from qwexstore.errors import ObjectNotFound, StoreError, TransientStoreError, UserError
from qwexstore.storage import FsspecStorage, LocalStorage, ObjectInfo, Storage, Versioned, open_storage

T = TypeVar("T")

BACKENDS = ["local", "memory", "fsspec-file", "moto", "seaweed", "sftp"]
NETWORK = {"moto", "seaweed", "sftp"}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Backend:
    """A store location: ``open()`` gives a new Storage object on the same objects."""

    def __init__(
        self, name: str, opener: Callable[[], Storage], url: str, env: dict[str, str], local_root: str | None
    ) -> None:
        self.name = name
        self.open = opener
        self.url = url  # for a subprocess: open_storage(url) with ``env``
        self.env = env
        self.local_root = local_root  # where objects are plain files, for inspection
        self.storage = opener()

    @property
    def is_local(self) -> bool:
        return self.name == "local"


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    name = request.param
    env: dict[str, str] = {}
    if name in ("local", "fsspec-file"):
        root = tmp_path / "store"
        root.mkdir()
        if name == "local":
            yield Backend(name, lambda: open_storage(str(root)), str(root), env, str(root))
        else:
            fs = fsspec.filesystem("file")
            yield Backend(name, lambda: FsspecStorage(fs, str(root)), "", env, str(root))
        return
    if name == "memory":
        url = f"memory://conformance-{uuid.uuid4().hex}"
        yield Backend(name, lambda: open_storage(url), url, env, None)
        fs = fsspec.filesystem("memory")
        root = fs._strip_protocol(url)
        if fs.exists(root):
            fs.rm(root, recursive=True)
        return
    monkeypatch.setenv("QWEX_STORE_RETRY_S", "5")
    if name in ("moto", "seaweed"):
        server = request.getfixturevalue("moto_s3" if name == "moto" else "seaweed_s3")
        env = dict(server.env)
        url = server.new_bucket()
    else:
        server = request.getfixturevalue("sshd")
        env = dict(server.env)
        url = server.new_dir()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    b = Backend(name, lambda: open_storage(url), url, env, None)
    yield b
    run(b.storage.close())


@pytest.fixture
def st(backend: Backend) -> Storage:
    return backend.storage


def _src(tmp_path: Path, data: bytes, name: str = "src", mode: int = 0o644) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    os.chmod(p, mode)
    return str(p)


P = "blobs/ab/abcdef"


# ---------------------------------------------------------------------------------------
# the protocol
# ---------------------------------------------------------------------------------------


def test_is_a_storage(st: Storage) -> None:
    assert isinstance(st, Storage)


def test_put_then_get(st: Storage) -> None:
    assert run(st.put(P, b"hello")) is True
    assert run(st.get(P)) == b"hello"


@pytest.mark.parametrize("data", [b"", bytes(range(256)) * 3, b"\0\r\n\x1a"])
def test_put_get_exact_bytes(st: Storage, data: bytes) -> None:
    assert run(st.put("x/y/z", data)) is True
    assert run(st.get("x/y/z")) == data


def test_put_is_write_once(st: Storage) -> None:
    assert run(st.put(P, b"first")) is True
    assert run(st.put(P, b"second, different")) is False
    assert run(st.put(P, b"first")) is False
    assert run(st.get(P)) == b"first"


def test_put_file_is_write_once(st: Storage, tmp_path: Path) -> None:
    assert run(st.put(P, b"first")) is True
    for consume in (False, True):
        src = _src(tmp_path, b"other", f"s{consume}")
        assert run(st.put_file(P, src, consume=consume)) is False
        assert run(st.get(P)) == b"first"


def test_put_file_then_put_is_write_once(st: Storage, tmp_path: Path) -> None:
    assert run(st.put_file(P, _src(tmp_path, b"first"), consume=False)) is True
    assert run(st.put(P, b"second")) is False
    assert run(st.get(P)) == b"first"


def test_get_with_a_limit_reads_at_most_one_byte_more(st: Storage) -> None:
    """``get(limit=n)``: at most n + 1 bytes, exactly, even where the backend's stream
    returns what has arrived (an HTTP body in chunks), and the whole object if it fits."""
    data = os.urandom(3 * 2**20 + 7)
    run(st.put(P, data))
    assert run(st.get(P, limit=2**20)) == data[: 2**20 + 1]
    assert run(st.get(P, limit=len(data))) == data
    assert run(st.get(P, limit=len(data) + 100)) == data


def test_get_missing_raises_object_not_found(st: Storage) -> None:
    with pytest.raises(ObjectNotFound) as ei:
        run(st.get("blobs/00/missing"))
    assert ei.value.path == "blobs/00/missing"


def test_get_missing_sibling_raises_object_not_found(st: Storage) -> None:
    run(st.put(P, b"x"))
    with pytest.raises(ObjectNotFound):
        run(st.get(P + "0"))


def test_exists_is_batched_and_ordered(st: Storage) -> None:
    run(st.put("a/1", b"1"))
    run(st.put("b/2", b"2"))
    q = ["b/2", "a/missing", "a/1", "c/3", "a/1", "b/2"]
    assert run(st.exists(q)) == [True, False, True, False, True, True]
    assert run(st.exists([])) == []


def test_exists_all_missing(st: Storage) -> None:
    assert run(st.exists(["a", "b/c", "d/e/f"])) == [False, False, False]


def test_put_file_keep(backend: Backend, tmp_path: Path) -> None:
    st = backend.storage
    src = _src(tmp_path, b"payload")
    assert run(st.put_file(P, src, consume=False)) is True
    assert run(st.get(P)) == b"payload"
    assert Path(src).read_bytes() == b"payload"  # consume=False never touches the source
    if backend.is_local:
        assert os.stat(src).st_ino != os.stat(os.path.join(backend.local_root or "", P)).st_ino


def test_put_file_consume(backend: Backend, tmp_path: Path) -> None:
    st = backend.storage
    src = _src(tmp_path, b"payload")
    ino = os.stat(src).st_ino
    assert run(st.put_file(P, src, consume=True)) is True
    assert run(st.get(P)) == b"payload"
    if backend.is_local:
        # Moved, not copied: the source is gone and its inode is the stored object.
        assert not os.path.lexists(src)
        assert os.stat(os.path.join(backend.local_root or "", P)).st_ino == ino
    else:
        # Either consumed or left intact; never damaged.
        assert not os.path.exists(src) or Path(src).read_bytes() == b"payload"


def test_get_file_copy(backend: Backend, tmp_path: Path) -> None:
    st = backend.storage
    run(st.put(P, b"content"))
    dest = tmp_path / "out"
    run(st.get_file(P, str(dest)))
    assert dest.read_bytes() == b"content"
    if backend.local_root is not None:
        assert os.stat(dest).st_ino != os.stat(os.path.join(backend.local_root, P)).st_ino
    # A copy is the caller's own file: writable, and writing it leaves the store alone.
    assert os.stat(dest).st_mode & stat.S_IWUSR
    dest.write_bytes(b"changed")
    assert run(st.get(P)) == b"content"


def test_get_file_missing(st: Storage, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        run(st.get_file("blobs/00/missing", str(tmp_path / "o")))
    assert not (tmp_path / "o").exists()


def test_list_is_recursive_and_exact(st: Storage) -> None:
    objs = ["a/b/c", "a/d", "ab/e", "x", "a/b/f/g"]
    for o in objs:
        assert run(st.put(o, o.encode()))
    assert sorted(run(st.list("a"))) == ["a/b/c", "a/b/f/g", "a/d"]
    assert sorted(run(st.list("a/b"))) == ["a/b/c", "a/b/f/g"]
    assert sorted(run(st.list("ab"))) == ["ab/e"]
    assert run(st.list("nope")) == []
    assert run(st.list("a/nope")) == []
    # every listed path can be read back
    for p in run(st.list("a")):
        assert run(st.get(p)) == p.encode()


def test_list_root_lists_everything(st: Storage) -> None:
    objs = ["a/b/c", "d", "e/f"]
    for o in objs:
        run(st.put(o, b""))
    assert sorted(run(st.list(""))) == sorted(objs)


def test_list_missing_prefix(st: Storage) -> None:
    assert run(st.list("blobs")) == []


def test_delete_is_idempotent(st: Storage) -> None:
    run(st.put(P, b"x"))
    run(st.put("blobs/ab/other", b"y"))
    run(st.delete(P))
    assert run(st.exists([P, "blobs/ab/other"])) == [False, True]
    with pytest.raises(ObjectNotFound):
        run(st.get(P))
    run(st.delete(P))
    # after a delete the path may be written again
    assert run(st.put(P, b"again")) is True
    assert run(st.get(P)) == b"again"


def test_delete_missing_is_not_an_error(st: Storage) -> None:
    run(st.delete("never/was/here"))
    run(st.delete("x"))


def test_sync_is_callable(st: Storage) -> None:
    assert run(st.sync()) is None


def test_sync_after_writes(st: Storage) -> None:
    run(st.put(P, b"x"))
    assert run(st.sync()) is None
    assert run(st.get(P)) == b"x"


def test_capabilities(backend: Backend) -> None:
    caps = backend.storage.capabilities
    if backend.is_local:
        assert caps.local_root == os.path.abspath(backend.local_root or "")
    else:
        assert caps.local_root is None
    assert caps.concurrency >= 1
    if backend.name in NETWORK:
        assert caps.concurrency >= 8


# ---------------------------------------------------------------------------------------
# v2: stat, exclusive create under concurrency, crash safety, streaming, refs, errors
# ---------------------------------------------------------------------------------------


def test_stat(st: Storage) -> None:
    before = time.time_ns()
    run(st.put(P, b"12345"))
    info = run(st.stat(P))
    assert isinstance(info, ObjectInfo) and info.size == 5
    if info.mtime_ns is not None:  # servers and filesystems round; allow clock granularity
        assert before - 5 * 10**9 <= info.mtime_ns <= time.time_ns() + 5 * 10**9
    with pytest.raises(ObjectNotFound):
        run(st.stat("blobs/00/missing"))


@pytest.mark.parametrize("mode", ["list", "probe", "pages"])
def test_exists_many(st: Storage, mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Network backends answer many paths of one directory by listing it ("list"), fall
    back to one probe per path when the directory holds far more ("probe"), and read
    listings page by page ("pages": S3 pages of 7 names)."""
    if mode == "probe":
        monkeypatch.setattr("qwexstore.storage_batch.LIST_RATIO", 0)
    if mode == "pages":
        monkeypatch.setattr("qwexstore.storage_s3.LIST_PAGE", 7)
    present = [f"blobs/{i % 7:02x}/p{i}" for i in range(0, 120, 3)]

    async def put_all() -> None:
        await asyncio.gather(*(st.put(p, b"x") for p in present))

    run(put_all())
    q = [f"blobs/{i % 7:02x}/p{i}" for i in range(120)]
    assert run(st.exists(q)) == [i % 3 == 0 for i in range(120)]


def _race(n: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(i)`` in ``n`` threads released together; re-raise the first failure."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def go(i: int) -> None:
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as e:  # pragma: no cover - reported below
            results[i] = e

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


def _with(backend: Backend, fn: Callable[[Storage], Coroutine[Any, Any, T]]) -> T:
    """``fn`` on a fresh Storage object (its own connection), closed afterwards."""

    async def go() -> T:
        s = backend.open()
        try:
            return await fn(s)
        finally:
            await s.close()

    return run(go())


@pytest.mark.parametrize("round_", range(3))
def test_concurrent_puts_one_winner(backend: Backend, round_: int) -> None:
    """Writers with separate connections race to create one path: exactly one wins."""
    n = 4
    path = f"blobs/ee/race{round_}"
    results = _race(n, lambda i: _with(backend, lambda s: s.put(path, f"writer {i}".encode())))
    assert results.count(True) == 1 and results.count(False) == n - 1
    assert run(backend.storage.get(path)) == f"writer {results.index(True)}".encode()


def test_concurrent_put_files_one_winner(
    backend: Backend, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend.name == "moto":
        # Checked with plain botocore: three concurrent CompleteMultipartUpload calls with
        # If-None-Match: * all succeed on moto (its check is not atomic). AWS and SeaweedFS
        # answer 412 to all but one.
        request.applymarker(pytest.mark.xfail(reason="moto: multipart If-None-Match is not atomic"))
    if backend.name == "seaweed":
        # Seen in ~1 of 8 runs: SeaweedFS lets two racing conditional completions succeed.
        # Only blobs are uploaded in parts, and two writers of one blob name write the same
        # bytes, so no reader can tell; records and refs are single PUTs (tested above).
        request.applymarker(pytest.mark.xfail(reason="SeaweedFS: racing multipart completions", strict=False))
    n = 3
    size = 9 * 2**20 if backend.name in ("moto", "seaweed") else 300_000  # S3: multipart
    srcs = [_src(tmp_path, bytes([i]) * size, f"src{i}") for i in range(n)]
    results = _race(n, lambda i: _with(backend, lambda s: s.put_file(P, srcs[i], consume=False)))
    assert results.count(True) == 1
    winner = results.index(True)
    dest = tmp_path / "out"
    run(backend.storage.get_file(P, str(dest)))
    assert dest.read_bytes() == bytes([winner]) * size


_STALL = r"""
import asyncio, builtins, sys, time
from qwexstore.storage import open_storage

url, path, src = sys.argv[1:4]
real_open = builtins.open


calls = [0]


class Stall:
    # Hands out the file's bytes normally, then stops forever in the third read (of any
    # handle on it): the upload is then in progress, and the parent kills us.
    def __init__(self, f):
        self.f = f

    def _tick(self):
        calls[0] += 1
        if calls[0] == 3:
            print("mid", flush=True)
            time.sleep(3600)

    def read(self, *a):
        self._tick()
        return self.f.read(*a)

    def readinto(self, b):
        self._tick()
        return self.f.readinto(b)

    def __getattr__(self, k):
        return getattr(self.f, k)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.f.close()


def hooked(file, mode="r", *a, **k):
    f = real_open(file, mode, *a, **k)
    return Stall(f) if file == src and "r" in mode else f


builtins.open = hooked
asyncio.run(open_storage(url).put_file(path, src, consume=False))
print("finished", flush=True)
"""


def test_killed_upload_leaves_no_object(backend: Backend, tmp_path: Path) -> None:
    """kill -9 in the middle of put_file: nothing under the final name; a retry succeeds."""
    if backend.name in ("memory", "fsspec-file"):
        pytest.skip("in-process backend: no second process can see its objects / not routed by open_storage")
    data = os.urandom(20 * 2**20)
    src = _src(tmp_path, data)
    env = {**os.environ, **backend.env}
    if backend.is_local:
        env["QWEX_TEST_CRASH_AT"] = "tmp"  # its own kill -9 between temp file and link
    with subprocess.Popen(
        [sys.executable, "-c", _STALL, backend.url, P, src], env=env, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            if not backend.is_local:
                assert proc.stdout is not None
                assert proc.stdout.readline() == "mid\n"
                os.kill(proc.pid, signal.SIGKILL)
            assert proc.wait(timeout=60) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
    st = backend.storage
    assert run(st.exists([P])) == [False]
    with pytest.raises(ObjectNotFound):
        run(st.stat(P))
    assert P not in run(st.list("blobs"))
    assert run(st.put_file(P, src, consume=False)) is True
    dest = tmp_path / "out"
    run(st.get_file(P, str(dest)))
    assert dest.read_bytes() == data


def _sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(2**20):
            h.update(b)
    return h.hexdigest()


def test_streaming_large_file_in_bounded_memory(backend: Backend, tmp_path: Path) -> None:
    """A 64 MiB put_file and get_file never hold the object in memory."""
    if backend.name == "memory":
        pytest.skip("the memory backend's objects are memory")
    size = 64 * 2**20
    src = tmp_path / "big"
    with open(src, "wb") as f:
        for i in range(size // 2**20):
            f.write(hashlib.sha256(str(i).encode()).digest() * (2**20 // 32))
    st = backend.storage
    dest = tmp_path / "back"

    async def go() -> tuple[int, int]:
        await st.exists(["warm/up"])  # connect first: a client's setup is not streaming
        tracemalloc.start()
        try:
            assert await st.put_file(P, str(src), consume=False) is True
            _, peak_put = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            await st.get_file(P, str(dest))
            _, peak_get = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return peak_put, peak_get

    peak_put, peak_get = run(go())
    assert run(st.stat(P)).size == size
    assert _sha(str(dest)) == _sha(str(src))
    # Bounded by the transfer's buffers (a few MiB), not the object (64 MiB).
    assert peak_put < 8 * 2**20, peak_put
    assert peak_get < 8 * 2**20, peak_get


def test_get_file_failure_leaves_no_dest(st: Storage, tmp_path: Path) -> None:
    dest = tmp_path / "o"
    with pytest.raises(ObjectNotFound):
        run(st.get_file("blobs/00/missing", str(dest)))
    assert not dest.exists()


# -- refs --------------------------------------------------------------------------------
R = "leases/ab/abcdef"


def test_ref_lifecycle(st: Storage) -> None:
    assert run(st.ref_get(R)) is None
    e1 = run(st.ref_put(R, b"one", expect=None))
    assert e1 is not None
    assert run(st.ref_get(R)) == Versioned(data=b"one", etag=e1)
    assert run(st.ref_put(R, b"x", expect=None)) is None  # create-only: it exists
    assert run(st.ref_put(R, b"x", expect=e1 + "0")) is None  # wrong etag
    e2 = run(st.ref_put(R, b"two", expect=e1))
    assert e2 is not None and e2 != e1
    assert run(st.ref_get(R)) == Versioned(data=b"two", etag=e2)
    assert run(st.ref_put(R, b"three", expect=e1)) is None  # stale etag
    assert run(st.ref_delete(R, expect=e1)) is False
    assert run(st.ref_get(R)) == Versioned(data=b"two", etag=e2)
    assert run(st.ref_delete(R, expect=e2)) is True
    assert run(st.ref_get(R)) is None
    assert run(st.ref_delete(R, expect=e2)) is False  # already gone
    assert run(st.ref_put(R, b"again", expect=e2)) is None  # gone: only a create may write
    e3 = run(st.ref_put(R, b"again", expect=None))
    assert e3 is not None
    assert run(st.ref_get(R)) == Versioned(data=b"again", etag=e3)


def test_ref_empty_value_and_missing_delete(st: Storage) -> None:
    e = run(st.ref_put("refs/x", b"", expect=None))
    assert e is not None and run(st.ref_get("refs/x")) == Versioned(data=b"", etag=e)
    assert run(st.ref_delete("refs/never", expect=e)) is False


def test_ref_list(st: Storage) -> None:
    run(st.ref_put("leases/ab/k1", b"1", expect=None))
    e = run(st.ref_put("leases/cd/k2", b"2", expect=None))
    assert e is not None
    assert run(st.ref_put("leases/cd/k2", b"2b", expect=e)) is not None
    run(st.put("blobs/ab/k3", b"3"))
    assert sorted(run(st.list("leases"))) == ["leases/ab/k1", "leases/cd/k2"]
    assert sorted(run(st.list("leases/cd"))) == ["leases/cd/k2"]


@pytest.mark.parametrize("round_", range(3))
def test_ref_racing_creates_one_wins(backend: Backend, round_: int) -> None:
    n = 4
    path = f"leases/ee/race{round_}"
    results = _race(n, lambda i: _with(backend, lambda s: s.ref_put(path, f"w{i}".encode(), expect=None)))
    winners = [i for i, r in enumerate(results) if r is not None]
    assert len(winners) == 1
    assert run(backend.storage.ref_get(path)) == Versioned(f"w{winners[0]}".encode(), results[winners[0]])


@pytest.mark.parametrize("round_", range(3))
def test_ref_racing_swaps_one_wins(backend: Backend, round_: int) -> None:
    """Two (or more) writers holding the same etag: exactly one replaces the value."""
    path = f"leases/ee/swap{round_}"
    e0 = run(backend.storage.ref_put(path, b"base", expect=None))
    assert e0 is not None
    n = 4
    results = _race(n, lambda i: _with(backend, lambda s: s.ref_put(path, f"w{i}".encode(), expect=e0)))
    winners = [i for i, r in enumerate(results) if r is not None]
    assert len(winners) == 1
    cur = run(backend.storage.ref_get(path))
    assert cur == Versioned(f"w{winners[0]}".encode(), results[winners[0]])
    # the losers' etag is stale for delete too
    assert run(backend.storage.ref_delete(path, expect=e0)) is False


def test_ref_racing_delete_and_swap(backend: Backend) -> None:
    path = "leases/ee/delswap"
    e0 = run(backend.storage.ref_put(path, b"base", expect=None))
    assert e0 is not None
    out = _race(
        2,
        lambda i: _with(
            backend, lambda s: s.ref_delete(path, expect=e0) if i == 0 else s.ref_put(path, b"new", expect=e0)
        ),
    )
    deleted, swapped = out[0] is True, out[1] is not None
    assert deleted != swapped
    cur = run(backend.storage.ref_get(path))
    assert (cur is None) if deleted else (cur is not None and cur.data == b"new")


def test_many_ref_generations(st: Storage) -> None:
    """A lease renewed many times (heartbeats) stays one ref with the latest value."""
    etag = run(st.ref_put(R, b"0", expect=None))
    for i in range(1, 12):
        assert etag is not None
        etag = run(st.ref_put(R, str(i).encode(), expect=etag))
    assert etag is not None
    assert run(st.ref_get(R)) == Versioned(b"11", etag)
    assert run(st.list("leases")) == [R]


def test_one_storage_many_event_loops(backend: Backend) -> None:
    """The CLI may call asyncio.run several times with one storage object."""
    st = backend.storage
    for i in range(3):
        assert run(st.put(f"loops/{i}", b"x")) is True
        assert run(st.exists([f"loops/{j}" for j in range(3)])) == [j <= i for j in range(3)]
    run(st.close())
    run(st.close())  # idempotent
    assert run(st.get("loops/0")) == b"x"  # and usable again


def test_concurrent_operations_in_one_loop(st: Storage) -> None:
    async def go() -> list[bool]:
        puts = await asyncio.gather(*(st.put(f"par/{i}", str(i).encode()) for i in range(40)))
        gets = await asyncio.gather(*(st.get(f"par/{i}") for i in range(40)))
        assert gets == [str(i).encode() for i in range(40)]
        return list(puts)

    assert run(go()) == [True] * 40


# -- errors ------------------------------------------------------------------------------


def test_seaweed_stopped_is_transient_then_recovers(seaweed_s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in seaweed_s3.env.items():
        monkeypatch.setenv(k, v)
    st = open_storage(seaweed_s3.new_bucket())
    run(st.put(P, b"before"))
    monkeypatch.setenv("QWEX_STORE_RETRY_S", "1")
    with seaweed_s3.stopped():
        for op in (st.get(P), st.put("blobs/ab/other", b"x"), st.exists([P]), st.list("blobs")):
            with pytest.raises(TransientStoreError) as ei:
                run(op)
            assert "\n" not in str(ei.value) and "QWEX_STORE_RETRY_S" in str(ei.value)
    assert run(st.get(P)) == b"before"
    assert run(st.put("blobs/ab/other", b"x")) is True


def test_seaweed_restart_during_retries_succeeds(seaweed_s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An operation started while the server is down completes once it is back (the budget
    is far longer than a restart)."""
    for k, v in seaweed_s3.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("QWEX_STORE_RETRY_S", "60")
    st = open_storage(seaweed_s3.new_bucket())
    run(st.put(P, b"kept"))
    seaweed_s3.stop()
    try:
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(run(st.get(P))))
        t.start()
    finally:
        seaweed_s3.start()
    t.join()
    assert box == [b"kept"]


def test_s3_unreachable_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    from servers import free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("QWEX_STORE_RETRY_S", "0.5")
    st = open_storage("s3://b/p", endpoint=f"http://127.0.0.1:{free_port()}", region="eu-west-1")
    with pytest.raises(TransientStoreError):
        run(st.exists([P]))


def test_s3_missing_bucket_is_permanent(moto_s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in moto_s3.env.items():
        monkeypatch.setenv(k, v)
    st = open_storage("s3://qwex-no-such-bucket/x")
    ops = [
        lambda: st.put(P, b"x"),
        lambda: st.get(P),
        lambda: st.list("blobs"),
        lambda: st.ref_get(R),
        lambda: st.ref_put(R, b"x", expect=None),
        lambda: st.ref_put(R, b"x", expect='"0"'),
    ]
    for op in ops:
        with pytest.raises(StoreError) as ei:
            run(op())
        assert not isinstance(ei.value, (TransientStoreError, ObjectNotFound))
        assert "\n" not in str(ei.value) and "qwex-no-such-bucket" in str(ei.value)


def test_sftp_lost_connection_reconnects(sshd: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server drops every session between two operations of one event loop: the next
    operation fails on the dead connection, reconnects and succeeds."""
    monkeypatch.setenv("HOME", sshd.home)
    st = open_storage(sshd.new_dir())

    async def go() -> bytes:
        try:
            await st.put(P, b"x")
            assert sshd.drop_connections() >= 1
            return await st.get(P)
        finally:
            await st.close()

    assert run(go()) == b"x"


def test_s3_unknown_profile_is_permanent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config").write_text("[profile other]\nregion = eu-west-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    st = open_storage("s3://b/p", profile="qwex-no-such-profile", endpoint="http://127.0.0.1:1")
    with pytest.raises(StoreError) as ei:
        run(st.exists([P]))
    assert not isinstance(ei.value, TransientStoreError)
    assert "\n" not in str(ei.value) and "qwex-no-such-profile" in str(ei.value)


def test_sftp_unreachable_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    from servers import free_port

    monkeypatch.setenv("QWEX_STORE_RETRY_S", "0.5")
    st = open_storage(f"ssh://nobody@127.0.0.1:{free_port()}/x")
    with pytest.raises(TransientStoreError):
        run(st.exists([P]))


def test_sftp_unknown_host_key_is_refused(sshd: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))  # no known_hosts, no config
    st = open_storage(sshd.url(sshd.root))
    with pytest.raises(StoreError) as ei:
        run(st.exists([P]))
    msg = str(ei.value)
    assert not isinstance(ei.value, TransientStoreError)
    assert "\n" not in msg and "known_hosts" in msg and "ssh " in msg


def test_sftp_explicit_url(sshd: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """ssh://user@host:port/path (no alias): known_hosts and the default identity apply."""
    monkeypatch.setenv("HOME", sshd.home)
    d = sshd.new_dir().removeprefix(f"ssh://{sshd.alias}")
    st = open_storage(sshd.url(d))
    try:
        assert run(st.put(P, b"x")) is True
        assert os.path.exists(os.path.join(d, P))  # the server is this machine: root is the path
    finally:
        run(st.close())


@pytest.mark.parametrize(
    "url", ["s3://", "ssh://host", "ssh://host:notaport/x", "gopher://x/y", "ssh:///path"]
)
def test_open_storage_bad_urls(url: str) -> None:
    with pytest.raises(UserError) as ei:
        open_storage(url)
    assert "\n" not in str(ei.value)


def test_open_storage_kinds(tmp_path: Path) -> None:
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    assert isinstance(open_storage(f"file://{tmp_path}"), LocalStorage)
    assert open_storage(f"file://{tmp_path}").url == str(tmp_path)
    s3 = open_storage("s3://bucket/a/b/", endpoint="http://127.0.0.1:1")
    assert s3.url == "s3://bucket/a/b"
    ssh = open_storage("ssh://me@example.org:2222/srv/store")
    assert ssh.url == "ssh://me@example.org:2222/srv/store"


def test_local_store_imports_no_network_library(tmp_path: Path) -> None:
    code = (
        "import asyncio, sys\n"
        "from qwexstore.storage import open_storage\n"
        f"st = open_storage({str(tmp_path)!r})\n"
        "asyncio.run(st.put('a/b', b'x'))\n"
        "assert asyncio.run(st.get('a/b')) == b'x'\n"
        "print(sorted(m for m in ('fsspec', 'aiobotocore', 'asyncssh', 'botocore') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------
# LocalStorage specifics
# ---------------------------------------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalStorage:
    return LocalStorage(str(tmp_path / "store"))


def _mode(local: LocalStorage, path: str) -> int:
    return stat.S_IMODE(os.stat(os.path.join(local.root, path)).st_mode)


def test_local_put_is_read_only(local: LocalStorage) -> None:
    run(local.put(P, b"x"))
    assert _mode(local, P) == 0o444


@pytest.mark.parametrize("consume", [False, True])
@pytest.mark.parametrize(
    ("src_mode", "want"), [(0o644, 0o444), (0o600, 0o444), (0o755, 0o555), (0o700, 0o555)]
)
def test_local_put_file_modes(
    local: LocalStorage, tmp_path: Path, consume: bool, src_mode: int, want: int
) -> None:
    src = _src(tmp_path, b"data", mode=src_mode)
    assert run(local.put_file(P, src, consume=consume)) is True
    assert _mode(local, P) == want
    if not consume:
        assert stat.S_IMODE(os.stat(src).st_mode) == src_mode  # the source is untouched


def test_local_get_file_is_a_plain_writable_copy(local: LocalStorage, tmp_path: Path) -> None:
    """A raw transfer never shares the store's inode, nor its read-only mode (the caller,
    Store.materialize_blob, sets the mode it wants once the bytes are verified)."""
    run(local.put_file(P, _src(tmp_path, b"d", mode=0o755), consume=False))
    dest = tmp_path / "out"
    run(local.get_file(P, str(dest)))
    st = os.stat(dest)
    assert st.st_nlink == 1 and st.st_mode & stat.S_IWUSR


def test_local_no_temp_files_remain(local: LocalStorage, tmp_path: Path) -> None:
    run(local.put(P, b"x"))
    run(local.put(P, b"y"))  # refused
    run(local.put_file("blobs/cd/1", _src(tmp_path, b"a", "s1"), consume=False))
    run(local.put_file("blobs/cd/2", _src(tmp_path, b"b", "s2"), consume=True))
    run(local.put_file("blobs/cd/2", _src(tmp_path, b"c", "s3"), consume=True))  # refused
    run(local.put_file("blobs/cd/2", _src(tmp_path, b"c", "s4"), consume=False))  # refused
    _no_temp_files(local)


def _no_temp_files(local: LocalStorage) -> None:
    tmp = Path(local.root) / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def test_local_refused_consume_keeps_source(local: LocalStorage, tmp_path: Path) -> None:
    run(local.put(P, b"x"))
    src = _src(tmp_path, b"y")
    assert run(local.put_file(P, src, consume=True)) is False
    # Nothing was stored, so nothing may be lost: the source is still there.
    assert Path(src).read_bytes() == b"y"


@pytest.mark.parametrize("round_", range(5))
def test_local_concurrent_puts_one_winner(local: LocalStorage, round_: int) -> None:
    n = 8
    path = f"blobs/ee/race{round_}"
    results = _race(n, lambda i: run(local.put(path, f"writer {i}".encode())))
    assert results.count(True) == 1
    winner = results.index(True)
    assert run(local.get(path)) == f"writer {winner}".encode()
    _no_temp_files(local)


@pytest.mark.parametrize("consume", [False, True])
def test_local_concurrent_put_files_one_winner(local: LocalStorage, tmp_path: Path, consume: bool) -> None:
    n = 8
    srcs = [_src(tmp_path, f"writer {i}".encode(), f"src{i}") for i in range(n)]
    results = _race(n, lambda i: run(local.put_file(P, srcs[i], consume=consume)))
    assert results.count(True) == 1
    winner = results.index(True)
    assert run(local.get(P)) == f"writer {winner}".encode()
    _no_temp_files(local)

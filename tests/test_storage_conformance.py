"""The Storage contract (qwexstore/storage.py), checked against every implementation.

Backends:
- ``local``: LocalStorage on a tmp dir;
- ``fsspec-memory``: FsspecStorage over fsspec's memory filesystem, a fresh root per test;
- ``fsspec-file``: FsspecStorage over ``fsspec.filesystem("file")`` (the default local
  filesystem: it does not create parent directories on write);
- ``fsspec-file-mkdir``: the same with ``auto_mkdir=True``.

Local-only guarantees (modes, temp files, concurrent puts) are at the end.
"""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import fsspec
import pytest

from qwexstore.errors import ObjectNotFound
from qwexstore.storage import FsspecStorage, LocalStorage, Storage

T = TypeVar("T")

BACKENDS = ["local", "fsspec-memory", "fsspec-file", "fsspec-file-mkdir"]

def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Backend:
    def __init__(self, name: str, storage: Storage, local_root: str | None) -> None:
        self.name = name
        self.storage = storage
        self.local_root = local_root  # where objects are plain files, for inspection

    @property
    def is_local(self) -> bool:
        return self.name == "local"


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    name = request.param
    if name == "local":
        (tmp_path / "store").mkdir()
        yield Backend(name, LocalStorage(str(tmp_path / "store")), str(tmp_path / "store"))
    elif name == "fsspec-memory":
        fs = fsspec.filesystem("memory")
        root = f"/conformance-{uuid.uuid4().hex}"
        yield Backend(name, FsspecStorage(fs, root), None)
        if fs.exists(root):
            fs.rm(root, recursive=True)
    else:
        fs = fsspec.filesystem("file", auto_mkdir=(name == "fsspec-file-mkdir"))
        root = tmp_path / "store"
        root.mkdir()
        yield Backend(name, FsspecStorage(fs, str(root)), str(root))


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


def _race(n: int, work: Callable[[int], bool]) -> list[bool]:
    barrier = threading.Barrier(n)
    results: list[bool | BaseException] = [False] * n

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
    return [bool(r) for r in results]


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

"""tree.py: scanning never follows links, materializing never writes outside its root,
and the stat cache skips unchanged files but never a changed one."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import qwexstore.tree as tree
from qwexstore.digest import hash_bytes
from qwexstore.errors import QwexError, UserError
from qwexstore.index import Index
from qwexstore.manifest import FileEntry, Manifest, SymlinkEntry
from qwexstore.store import Store, open_store
from qwexstore.tree import hash_entries, materialize, scan

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return run(open_store(str(tmp_path / "store")))


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    idx = Index(str(tmp_path / "index"))
    yield idx
    idx.close()


def _tree(root: Path) -> Path:
    """src/a.txt, src/run.sh (executable), src/sub/deep/b.bin, links inside and outside."""
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha")
    (root / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "run.sh", 0o755)
    (root / "sub" / "deep" / "b.bin").write_bytes(bytes(range(256)))
    return root


# ---------------------------------------------------------------------------------------
# scan
# ---------------------------------------------------------------------------------------


def test_scan_lists_files_and_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "secret").mkdir(parents=True)
    (outside / "secret" / "s.txt").write_bytes(b"s")
    src = _tree(tmp_path / "src")
    os.symlink(str(outside), src / "link_dir")  # absolute, to a directory outside
    os.symlink("a.txt", src / "link_file")
    os.symlink("nowhere", src / "dangling")
    found = {s.path: s for s in scan(str(src))}
    assert set(found) == {"a.txt", "run.sh", "sub/deep/b.bin", "link_dir", "link_file", "dangling"}
    for name in ("link_dir", "link_file", "dangling"):
        assert stat.S_ISLNK(found[name].st.st_mode)
    assert found["sub/deep/b.bin"].abspath == str(src / "sub" / "deep" / "b.bin")

    entries = {e.path: e for e in hash_entries(list(found.values()))}
    assert entries["link_dir"] == SymlinkEntry(path="link_dir", target=str(outside))
    assert entries["link_file"] == SymlinkEntry(path="link_file", target="a.txt")
    assert entries["dangling"] == SymlinkEntry(path="dangling", target="nowhere")
    assert entries["a.txt"] == FileEntry(path="a.txt", size=5, digest=hash_bytes(b"alpha"), executable=False)
    assert entries["run.sh"] == FileEntry(
        path="run.sh", size=10, digest=hash_bytes(b"#!/bin/sh\n"), executable=True
    )
    Manifest.of(list(entries.values()))  # a valid manifest


def test_scan_rel_symlink_to_dir_is_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x").write_bytes(b"x")
    os.symlink("real", tmp_path / "alias")
    found = list(scan(str(tmp_path), "alias"))
    assert [s.path for s in found] == ["alias"]
    assert stat.S_ISLNK(found[0].st.st_mode)


def test_scan_rel_file_and_dir(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    assert [s.path for s in scan(str(src), "a.txt")] == ["a.txt"]
    assert sorted(s.path for s in scan(str(src), "sub")) == ["sub/deep/b.bin"]


def test_scan_skip(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    got = sorted(s.path for s in scan(str(src), skip=lambda p: p == "sub" or p.endswith(".sh")))
    assert got == ["a.txt"]


def test_scan_rejects_fifo(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    os.mkfifo(src / "sub" / "pipe")
    with pytest.raises(UserError, match="pipe"):
        list(scan(str(src)))
    with pytest.raises(UserError):
        list(scan(str(src / "sub"), "pipe"))


def test_scan_rejects_socket(tmp_path: Path) -> None:
    # AF_UNIX paths are limited to ~108 bytes: bind relative to a short cwd.
    src = _tree(tmp_path / "src")
    old = os.getcwd()
    os.chdir(src)
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind("sock")
        with pytest.raises(UserError):
            list(scan(str(src)))
    finally:
        s.close()
        os.chdir(old)


def test_scan_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "empty" / "nested").mkdir(parents=True)
    assert list(scan(str(tmp_path / "empty"))) == []


# ---------------------------------------------------------------------------------------
# materialize
# ---------------------------------------------------------------------------------------


def _stored_manifest(store: Store) -> Manifest:
    a = run(store.put_blob(b"alpha"))
    b = run(store.put_blob(b"beta"))
    return Manifest.of(
        [
            FileEntry(path="a.txt", size=5, digest=a),
            FileEntry(path="d/e/b.bin", size=4, digest=b),
            SymlinkEntry(path="d/link", target="e/b.bin"),
            SymlinkEntry(path="abs", target="/etc/passwd"),
        ]
    )


@pytest.mark.parametrize("link", [False, True])
def test_materialize_writes_the_tree(store: Store, tmp_path: Path, link: bool) -> None:
    m = _stored_manifest(store)
    dest = tmp_path / "dest"
    run(materialize(store, m, str(dest), link=link))
    assert (dest / "a.txt").read_bytes() == b"alpha"
    assert (dest / "d" / "e" / "b.bin").read_bytes() == b"beta"
    assert os.path.islink(dest / "d" / "link") and os.readlink(dest / "d" / "link") == "e/b.bin"
    assert os.path.islink(dest / "abs") and os.readlink(dest / "abs") == "/etc/passwd"
    assert (dest / "d" / "link").read_bytes() == b"beta"
    stored = Path(store.local_root or "") / Store.blob_path(m.entries[0].digest)  # type: ignore[union-attr]
    same = os.stat(dest / "a.txt").st_ino == os.stat(stored).st_ino
    assert same == link
    # Round trip: scanning the result gives the manifest back.
    assert Manifest.of(hash_entries(list(scan(str(dest))))) == m


def test_materialize_refuses_existing_paths(store: Store, tmp_path: Path) -> None:
    m = _stored_manifest(store)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "a.txt").write_bytes(b"mine")
    with pytest.raises(UserError, match="exists"):
        run(materialize(store, m, str(dest), link=False))
    assert (dest / "a.txt").read_bytes() == b"mine"


def test_materialize_refuses_existing_dangling_symlink(store: Store, tmp_path: Path) -> None:
    m = _stored_manifest(store)
    dest = tmp_path / "dest"
    dest.mkdir()
    target = tmp_path / "victim"
    os.symlink(str(target), dest / "a.txt")
    with pytest.raises(UserError):
        run(materialize(store, m, str(dest), link=False))
    assert not target.exists()


@pytest.mark.parametrize("link", [False, True])
def test_materialize_refuses_to_write_through_symlinked_dir(store: Store, tmp_path: Path, link: bool) -> None:
    m = _stored_manifest(store)
    dest = tmp_path / "dest"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), dest / "d")  # the manifest wants to create d/e/b.bin
    with pytest.raises(UserError):
        run(materialize(store, m, str(dest), link=link))
    assert list(outside.iterdir()) == []


def test_materialize_refuses_file_where_dir_is_needed(store: Store, tmp_path: Path) -> None:
    m = _stored_manifest(store)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "d").write_bytes(b"i am a file")
    with pytest.raises(UserError):
        run(materialize(store, m, str(dest), link=False))
    assert (dest / "d").read_bytes() == b"i am a file"


def test_materialize_through_own_symlink_entry_is_refused(store: Store, tmp_path: Path) -> None:
    # A manifest cannot put a file below its own symlink (validate refuses), and even an
    # unvalidated one is stopped by the lstat check on parents.
    b = run(store.put_blob(b"x"))
    outside = tmp_path / "outside"
    outside.mkdir()
    m = Manifest([SymlinkEntry(path="l", target=str(outside)), FileEntry(path="l/x", size=1, digest=b)])
    with pytest.raises(ValueError):
        m.validate()
    with pytest.raises(UserError):
        run(materialize(store, m, str(tmp_path / "dest"), link=False))
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("evil", ["../escaped", "d/../../escaped", "ESCAPED_ABS"])
def test_materialize_never_writes_outside_dest(store: Store, tmp_path: Path, evil: str) -> None:
    # A manifest in a (shared, remote) store is named by its hash, which says nothing about
    # its paths: reading it refuses it, and materialize refuses it even if handed directly.
    b = run(store.put_blob(b"pwned"))
    path = str(tmp_path / "escaped") if evil == "ESCAPED_ABS" else evil
    m = Manifest([FileEntry(path=path, size=5, digest=b)])
    digest = run(store.put_manifest(m))
    with pytest.raises(QwexError):
        run(store.get_manifest(digest))
    dest = tmp_path / "x" / "dest"
    dest.mkdir(parents=True)
    try:
        with pytest.raises((QwexError, ValueError)):
            run(materialize(store, m, str(dest), link=False))
    finally:
        escaped = [p for p in (tmp_path / "escaped", tmp_path / "x" / "escaped") if p.exists()]
        assert escaped == []


@pytest.mark.parametrize("link", [False, True])
def test_materialize_honours_executable_bit(store: Store, tmp_path: Path, link: bool) -> None:
    # Two entries with the same bytes, one executable: one blob, two modes.
    d = run(store.put_blob(b"#!/bin/sh\necho hi\n"))  # stored 0o444 by put()
    m = Manifest.of(
        [
            FileEntry(path="tool", size=18, digest=d, executable=True),
            FileEntry(path="copy.txt", size=18, digest=d, executable=False),
        ]
    )
    dest = tmp_path / "dest"
    run(materialize(store, m, str(dest), link=link))
    assert os.stat(dest / "tool").st_mode & stat.S_IXUSR
    assert not os.stat(dest / "copy.txt").st_mode & stat.S_IXUSR
    assert Manifest.of(hash_entries(list(scan(str(dest))))) == m


def test_materialize_missing_blob(store: Store, tmp_path: Path) -> None:
    from qwexstore.errors import ObjectNotFound

    m = Manifest.of([FileEntry(path="a", size=1, digest=hash_bytes(b"never stored"))])
    with pytest.raises(ObjectNotFound):
        run(materialize(store, m, str(tmp_path / "dest"), link=False))


# ---------------------------------------------------------------------------------------
# hash_entries and the stat cache
# ---------------------------------------------------------------------------------------


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = tree.hash_file

    def counting(path: Any, size: int | None = None) -> str:
        calls.append(str(path))
        return real(path, size)

    monkeypatch.setattr(tree, "hash_file", counting)
    return calls


def _entries(root: Path, index: Index | None) -> dict[str, Any]:
    return {e.path: e for e in hash_entries(list(scan(str(root))), index)}


def _settled(root: Path) -> Path:
    """Date every file under ``root`` an hour back: old enough for the stat cache."""
    old = time.time_ns() - 3600 * 10**9
    for p in root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            os.utime(p, ns=(old, old))
    return root


def test_stat_cache_skips_files_modified_moments_ago(
    tmp_path: Path, index: Index, counted: list[str]
) -> None:
    """Racily clean: a file modified less than RACY_NS before hashing is not cached (a change
    within the timestamp granularity could keep its fingerprint); once settled, it is."""
    src = _tree(tmp_path / "src")
    _entries(src, index)
    assert index.stat(str(src / "a.txt")) is None
    counted.clear()
    _entries(src, index)
    assert len(counted) == 3  # hashed again
    _settled(src)
    _entries(src, index)
    assert index.stat(str(src / "a.txt")) is not None
    counted.clear()
    _entries(src, index)
    assert counted == []


def test_stat_cache_skips_unchanged_files(tmp_path: Path, index: Index, counted: list[str]) -> None:
    src = _settled(_tree(tmp_path / "src"))
    first = _entries(src, index)
    assert len(counted) == 3
    counted.clear()
    second = _entries(src, index)
    assert counted == []
    assert second == first
    assert index.stat(str(src / "a.txt")) is not None


def test_no_index_always_hashes(tmp_path: Path, counted: list[str]) -> None:
    src = _tree(tmp_path / "src")
    _entries(src, None)
    _entries(src, None)
    assert len(counted) == 6


def test_stat_cache_rehashes_same_size_change_with_restored_mtime(
    tmp_path: Path, index: Index, counted: list[str]
) -> None:
    src = _settled(_tree(tmp_path / "src"))
    f = src / "a.txt"
    before = _entries(src, index)
    st0 = os.stat(f)
    time.sleep(0.05)  # let the (coarse) ctime clock tick
    with open(f, "r+b") as fh:  # same inode, same size
        fh.write(b"ALPHA")
    os.utime(f, ns=(st0.st_atime_ns, st0.st_mtime_ns))  # restore mtime: only ctime tells
    st1 = os.stat(f)
    assert (st1.st_ino, st1.st_size, st1.st_mtime_ns) == (st0.st_ino, st0.st_size, st0.st_mtime_ns)
    assert st1.st_ctime_ns != st0.st_ctime_ns
    counted.clear()
    after = _entries(src, index)
    assert counted == [str(f)]
    assert after["a.txt"].digest == hash_bytes(b"ALPHA") != before["a.txt"].digest
    # and the cache now holds the new digest
    counted.clear()
    assert _entries(src, index) == after
    assert counted == []


def test_stat_cache_rehashes_replaced_file(tmp_path: Path, index: Index, counted: list[str]) -> None:
    src = _settled(_tree(tmp_path / "src"))
    f = src / "a.txt"
    _entries(src, index)
    st0 = os.stat(f)
    tmp = src / "new"
    tmp.write_bytes(b"omega")
    os.utime(tmp, ns=(st0.st_atime_ns, st0.st_mtime_ns))
    os.replace(tmp, f)  # new inode, same size and mtime
    counted.clear()
    after = _entries(src, index)
    assert counted == [str(f)]
    assert after["a.txt"].digest == hash_bytes(b"omega")


def test_stat_cache_executable_bit_is_not_cached(tmp_path: Path, index: Index) -> None:
    src = _tree(tmp_path / "src")
    assert not _entries(src, index)["a.txt"].executable
    os.chmod(src / "a.txt", 0o755)
    assert _entries(src, index)["a.txt"].executable


def test_hash_entries_progress(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    seen: list[tuple[int, int]] = []
    hash_entries(list(scan(str(src))), None, progress=lambda d, t: seen.append((d, t)))
    total = 5 + 10 + 256
    assert seen[-1] == (total, total)
    assert all(t == total for _, t in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_hash_entries_long_paths(tmp_path: Path, index: Index) -> None:
    deep = tmp_path / "src"
    d = deep
    for _ in range(3):
        d = d / ("d" * 200)
    d.mkdir(parents=True)
    (d / "f").write_bytes(b"deep")
    assert len(str(d / "f").encode()) > 511
    entries = _entries(deep, index)
    assert [e.digest for e in entries.values()] == [hash_bytes(b"deep")]

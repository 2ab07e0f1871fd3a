"""Reading and writing trees of files: scan a directory into manifest entries, and
materialize a manifest from the store. Never follows a symlink; never writes outside the
destination root (manifest paths are validated, parents are checked with lstat).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator

from .digest import hash_file
from .errors import UserError
from .faults import crashpoint
from .index import Index, StatEntry
from .manifest import Entry, FileEntry, Manifest, SymlinkEntry, check_relpath
from .store import Store

__all__ = ["RACY_NS", "Scanned", "hash_entries", "materialize", "scan"]

#: A file modified less than this before it is hashed is not put in the stat cache: a
#: change within the filesystem's timestamp granularity could keep its fingerprint (git's
#: "racily clean" rule, spec/index.md). Such a file is simply hashed again next time.
RACY_NS = 2_000_000_000

#: ``progress(done_bytes, total_bytes)``, called as files are hashed.
Progress = Callable[[int, int], None]


class Scanned:
    """A file or symlink found by :func:`scan`: relative path, absolute path, lstat."""

    __slots__ = ("abspath", "path", "st")

    def __init__(self, path: str, abspath: str, st: os.stat_result) -> None:
        self.path = path
        self.abspath = abspath
        self.st = st


def scan(root: str, rel: str = "", skip: Callable[[str], bool] | None = None) -> Iterator[Scanned]:
    """Every file and symlink below ``root/rel`` (or ``rel`` itself), depth first.

    Other file types (sockets, fifos, devices) raise UserError naming the path.
    """
    start = os.path.join(root, rel) if rel else root
    parts = rel.split("/")[:-1] if rel else []
    for i in range(1, len(parts) + 1):
        parent = os.path.join(root, *parts[:i])
        if os.path.islink(parent):
            raise UserError(f"{rel}: its parent {'/'.join(parts[:i])} is a symlink; qwex never follows one")
    st = os.lstat(start)
    if not stat.S_ISDIR(st.st_mode):
        yield _check(rel, start, st)
        return
    stack = [rel]
    while stack:
        d = stack.pop()
        with os.scandir(os.path.join(root, d) if d else root) as it:
            for de in it:
                p = f"{d}/{de.name}" if d else de.name
                if skip is not None and skip(p):
                    continue
                st = de.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(p)
                else:
                    yield _check(p, de.path, st)


def _check(rel: str, abspath: str, st: os.stat_result) -> Scanned:
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        raise UserError(f"{abspath}: not a regular file, directory or symlink")
    try:
        check_relpath(rel)
    except ValueError as e:
        raise UserError(f"{abspath}: {e}") from None
    return Scanned(rel, abspath, st)


def hash_entries(
    found: list[Scanned],
    index: Index | None = None,
    progress: Progress | None = None,
) -> list[Entry]:
    """Manifest entries for scanned files. With ``index``, unchanged files are not re-read
    (stat cache: device, inode, size, mtime and ctime must all match)."""
    entries: list[Entry] = []
    settled = time.time_ns() - RACY_NS  # files modified before this may be cached
    fresh: list[tuple[str, StatEntry]] = []
    total = sum(s.st.st_size for s in found) if progress is not None else 0
    done = 0
    for s in found:
        if stat.S_ISLNK(s.st.st_mode):
            entries.append(SymlinkEntry(path=s.path, target=os.readlink(s.abspath)))
            continue
        cached = index.stat(s.abspath) if index is not None else None
        if cached is not None and cached.matches(s.st):
            digest = cached.digest
        else:
            digest = hash_file(s.abspath, s.st.st_size)
            if index is not None and s.st.st_mtime_ns < settled:
                fresh.append((s.abspath, StatEntry.of(s.st, digest)))
        crashpoint("hash")
        if progress is not None:
            done += s.st.st_size
            progress(done, total)
        entries.append(
            FileEntry(
                path=s.path, size=s.st.st_size, digest=digest, executable=bool(s.st.st_mode & stat.S_IXUSR)
            )
        )
    if index is not None and fresh:
        with index.writer() as w:
            for path, entry in fresh:
                w.stat(path, entry)
    return entries


def _safe_parent(root: str, rel: str) -> str:
    """Create the parent directories of ``root/rel`` without following any symlink."""
    parts = rel.split("/")
    cur = root
    for part in parts[:-1]:
        cur = os.path.join(cur, part)
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise UserError(f"cannot write {rel}: {cur} is not a directory")
    return os.path.join(root, rel)


async def materialize(store: Store, manifest: Manifest, dest: str, *, link: bool) -> None:
    """Write a manifest's tree under ``dest`` (files hard-linked from the store if ``link``).

    Existing paths are an error (nothing is overwritten). Blobs are not re-verified here;
    ``qwex verify`` does that.
    """
    try:
        manifest.validate()
    except ValueError as err:
        raise UserError(f"refusing to materialize an invalid manifest: {err}") from None
    os.makedirs(dest, exist_ok=True)
    for e in manifest.entries:
        target = _safe_parent(dest, e.path)
        if os.path.lexists(target):
            raise UserError(f"{target} already exists")
        if isinstance(e, SymlinkEntry):
            os.symlink(e.target, target)
            continue
        crashpoint("materialize")
        await store.storage.get_file(store.blob_path(e.digest), target, link=link)
        st = os.stat(target)
        if bool(st.st_mode & stat.S_IXUSR) != e.executable:
            # Blobs are shared by content; the mode belongs to the entry. A link cannot carry
            # another mode, so such a file is copied.
            if st.st_nlink > 1:
                os.unlink(target)
                await store.storage.get_file(store.blob_path(e.digest), target, link=False)
            os.chmod(target, (0o555 if link else 0o755) if e.executable else (0o444 if link else 0o644))

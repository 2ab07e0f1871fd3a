"""Reading and writing trees of files: scan a directory into manifest entries, and
materialize a manifest from the store. Never writes outside the destination root (manifest
paths are validated, parents are checked with lstat) nor through a symlink. Scanning
records symlinks as symlinks, except in ``follow`` mode (``file:`` inputs), where links
are followed and their targets' content is scanned in their place.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .digest import hash_file
from .errors import UserError
from .faults import crashpoint
from .gittree import check_git_path
from .index import Index, StatEntry
from .manifest import Entry, FileEntry, Manifest, SymlinkEntry, check_relpath

if TYPE_CHECKING:  # the store (asyncio, threads) stays off the cache-hit path, which scans inputs
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


def scan(
    root: str, rel: str = "", skip: Callable[[str], bool] | None = None, *, follow: bool = False
) -> Iterator[Scanned]:
    """Every file and symlink below ``root/rel`` (or ``rel`` itself), depth first.

    Other file types (sockets, fifos, devices) raise UserError naming the path.

    With ``follow`` (``file:`` inputs: the job reads what links point to), symlinks are
    followed and never yielded: a link to a file is yielded as a file at the link's path
    with its target's stat (so the stat cache, keyed by that path, sees a retargeted link
    as another file); a link to a directory contributes that directory's files under the
    link's path. A dangling link, a cycle of links, or a link to anything but a regular
    file or directory raises UserError naming the link.
    """
    start = os.path.join(root, rel) if rel else root
    parts = rel.split("/")[:-1] if rel else []
    for i in range(1, len(parts) + 1):
        parent = os.path.join(root, *parts[:i])
        if not follow and os.path.islink(parent):
            raise UserError(f"{rel}: its parent {'/'.join(parts[:i])} is a symlink; qwex never follows one")
    st = _follow(start) if follow else os.lstat(start)
    if not stat.S_ISDIR(st.st_mode):
        yield _check(rel, start, st)
        return
    # (relative dir, its path, the (dev, ino) of every directory from the root down to it)
    stack: list[tuple[str, str, frozenset[tuple[int, int]]]] = [
        (rel, start, frozenset([(st.st_dev, st.st_ino)]))
    ]
    while stack:
        d, dpath, above = stack.pop()
        with os.scandir(dpath) as it:
            for de in it:
                p = f"{d}/{de.name}" if d else de.name
                if skip is not None and skip(p):
                    continue
                st = de.stat(follow_symlinks=False)
                if follow and stat.S_ISLNK(st.st_mode):
                    st = _follow(de.path)
                if stat.S_ISDIR(st.st_mode):
                    here = (st.st_dev, st.st_ino)
                    if here in above:
                        raise UserError(f"{de.path}: symlink cycle (it leads back to a directory above it)")
                    stack.append((p, de.path, above | {here}) if follow else (p, de.path, above))
                else:
                    yield _check(p, de.path, st)


def _follow(path: str) -> os.stat_result:
    """The stat of what ``path`` leads to, following links; UserError for a dangling link,
    a loop, or a target that is neither a regular file nor a directory."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{path}: dangling symlink (to {_target(path)!r}); "
                        "symlinks in an input are followed, and this one leads nowhere") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(f"{path}: symlink loop (to {_target(path)!r})") from None
        raise
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        raise UserError(f"{path}: leads to {_target(path)!r}, which is not a regular file or directory")
    return st


def _target(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return os.path.realpath(path)


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
                entry = StatEntry.of(s.st, digest)
                # Cache only what was hashed: a file replaced, or a link retargeted, between
                # the scan and the hash would otherwise pair the old stat with new bytes.
                if entry.matches(os.stat(s.abspath)):
                    fresh.append((s.abspath, entry))
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


async def materialize(
    store: Store, manifest: Manifest, dest: str, *, link: bool = False, read_only: bool = False
) -> None:
    """Write a manifest's tree under ``dest``: every file a verified copy of its blob
    (:meth:`Store.materialize_blobs`), mode 0644/0755, or 0444/0555 with ``read_only``;
    with ``link``, hard links to the (verified, read-only) blobs instead, which share the
    store's inode: only ``qwex checkout --link`` asks for that.

    Existing paths are an error (nothing is overwritten). A blob that does not hash to its
    name is CorruptObject, and no file with its wrong bytes is left under the entry's path.
    """
    try:
        manifest.validate()
    except ValueError as err:
        raise UserError(f"refusing to materialize an invalid manifest: {err}") from None
    os.makedirs(dest, exist_ok=True)
    from .store import BlobTarget

    targets: list[BlobTarget] = []
    for e in manifest.entries:
        why = check_git_path(e.path, 0o120000 if isinstance(e, SymlinkEntry) else None)
        if why is not None:  # never write git metadata (a crafted or foreign store; spec/runs.md O2)
            raise UserError(f"refusing to materialize {why}")
        target = _safe_parent(dest, e.path)
        if os.path.lexists(target):
            raise UserError(f"{target} already exists")
        if isinstance(e, SymlinkEntry):
            os.symlink(e.target, target)
            continue
        targets.append(BlobTarget(e.digest, target, e.executable))
    await store.materialize_blobs(targets, read_only=read_only, link=link)

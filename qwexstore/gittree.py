"""Writing git trees to disk: the one code path that stages a source and restores a snapshot.

A selected source tree reaches a job's work dir (``Repo.stage``) and a checkout
(``snapshot.restore``) through :func:`write_tree`, from *raw* git blobs: no
``.gitattributes`` (``eol``, ``text``, ``ident``, ``filter``), no ``core.autocrlf``, no
smudge. Each blob is re-hashed as git hashes it and compared with the tree entry's object
id before it is written, so the files on disk are provably the tree in the key
(spec/derivation.md, "Source").

Names are checked as ``git fsck`` checks them (:func:`check_git_name`): a tree that would
write ``.git`` (in any case, or an NTFS/HFS alias of it) anywhere is refused before
anything is written.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from collections.abc import Callable, Iterable, Sequence
from typing import Final, NamedTuple

from .errors import QwexError

__all__ = ["GitEntry", "blob_oid", "check_git_name", "check_git_path", "write_tree"]

#: Code points HFS+ ignores when comparing names (git's utf8.c ``next_hfs_char``).
_HFS_IGNORABLE: Final = frozenset(
    [0x200C, 0x200D, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x206A, 0x2070), 0xFEFF]
)
#: Names git refuses as symlinks (fsck ``gitmodulesSymlink`` and friends): git reads them.
_NO_SYMLINK: Final = frozenset([".gitmodules", ".gitattributes", ".gitignore", ".mailmap"])

_SYMLINK: Final = 0o120000
#: A path can only be refused if it matches this (a fast pre-filter for the planning path):
#: "git" (".git", "git~1", ".gitmodules"...), "mailmap", an HFS-ignorable code point, a
#: backslash, or an empty, "." or ".." component.
_SUSPECT: Final = (
    r"(?i)git|mailmap|[\\\x00\u200c-\u200f\u202a-\u202e\u206a-\u206f\ufeff]|(?:^|/)\.{0,2}(?:/|$)"
)


@functools.cache
def _suspect() -> re.Pattern[str]:
    """:data:`_SUSPECT`, compiled on first use (about 1 ms: planning a hit rarely needs it)."""
    return re.compile(_SUSPECT)


class GitEntry(NamedTuple):
    """One tree entry to write: repo-relative path, git mode (e.g. 0o100644), hex object id."""

    path: str
    mode: int
    oid: str


def blob_oid(data: bytes, hex_len: int = 40) -> str:
    """git's object id of a blob holding ``data`` (SHA-1, or SHA-256 for 64-digit ids)."""
    import hashlib  # staging and restore only: planning (the cache-hit path) never hashes a blob

    h = hashlib.sha256() if hex_len == 64 else hashlib.sha1(usedforsecurity=False)
    h.update(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def _hfs_fold(name: str) -> str:
    return "".join(c for c in name if ord(c) not in _HFS_IGNORABLE).lower()


def _ntfs_alias(piece: str, base: str) -> bool:
    """``piece`` names ``base`` on NTFS: trailing spaces/dots, an ``:stream`` suffix, or, for
    ``.git``, the 8.3 short name ``git~1`` (git's ``is_ntfs_dotgit``)."""
    head = piece.split(":", 1)[0].lower()
    for alias in (base, *(("git~1",) if base == ".git" else ())):
        if head.startswith(alias) and not head[len(alias) :].strip(" ."):
            return True
    return False


def check_git_name(name: str, mode: int | None = None) -> str | None:
    """Why ``name`` (one path component) may not be written, or None if it may.

    Refused, as ``git fsck`` and git's ``verify_path`` refuse them: empty, ``.``, ``..``,
    names containing ``/`` or NUL; ``.git`` in any case; HFS+ aliases of ``.git`` (the
    ignorable code points such as U+200C anywhere in it); NTFS aliases (``.git `` and
    ``.git.`` with trailing spaces or dots, ``.git::$INDEX_ALLOCATION``, ``git~1``), also
    after a backslash; and, for a symlink (``mode`` 0o120000), ``.gitmodules``,
    ``.gitattributes``, ``.gitignore`` and ``.mailmap`` and their aliases.
    """
    if name in ("", ".", ".."):
        return "empty, '.' or '..' name"
    if "/" in name or "\0" in name:
        return "name contains '/' or NUL"
    for piece in name.split("\\"):
        folded = _hfs_fold(piece)
        if folded == ".git" or _ntfs_alias(piece, ".git") or _ntfs_alias(folded, ".git"):
            return "a .git name (git refuses it in any case and as an NTFS/HFS alias)"
        if mode == _SYMLINK and any(folded == n or _ntfs_alias(folded, n) for n in _NO_SYMLINK):
            return f"a symlink named like {name.lower()!r}, which git reads"
    return None


def check_git_path(path: str, mode: int | None = None) -> str | None:
    """Why ``path`` (``/``-separated) may not be written, or None; see :func:`check_git_name`."""
    if not _suspect().search(path):
        return None
    parts = path.split("/")
    for i, part in enumerate(parts):
        why = check_git_name(part, mode if i == len(parts) - 1 else None)
        if why is not None:
            return f"{path!r}: {why}"
    return None


def _check(entries: Sequence[GitEntry], error: Callable[[str], QwexError]) -> None:
    """Refuse unsafe names, duplicates and a path below a file or symlink: before any write."""
    leaves: set[str] = set()
    dirs: set[str] = set()
    for e in entries:
        why = check_git_path(e.path, e.mode)
        if why is not None:
            raise error(f"unsafe tree entry {why}")
        if not (stat.S_ISREG(e.mode) or e.mode == _SYMLINK):
            raise error(f"tree entry {e.path!r} has mode {e.mode:o}, not a file or symlink")
        if e.path in leaves or e.path in dirs:
            raise error(f"tree entry {e.path!r} appears twice or is also a directory")
        parts = e.path.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d in leaves:
                raise error(f"tree entry {e.path!r} lies below the file {d!r}")
            dirs.add(d)
        leaves.add(e.path)


def write_tree(
    entries: Iterable[GitEntry],
    read_blob: Callable[[str], bytes],
    dest: str,
    error: Callable[[str], QwexError],
) -> list[str]:
    """Write ``entries`` under directory ``dest`` and return their paths, in entry order.

    Contract: every name is checked and the whole list validated before the first write
    (so a refused tree writes nothing; a bad blob found later may leave earlier files, so
    callers write into a scratch directory); ``read_blob(oid)`` is called exactly once per entry,
    in entry order, and must return the blob's raw bytes; each blob is re-hashed and a
    mismatch with its ``oid`` raises ``error(...)`` (the caller picks the error class).
    Files are created exclusively, never through a symlink; mode ``100755`` sets the
    executable bits, ``120000`` makes a symlink whose target is the blob. ``dest`` is
    created if absent; paths already present below it are an error (OSError).
    """
    todo = list(entries)
    _check(todo, error)
    os.makedirs(dest, exist_ok=True)
    made: set[str] = set()
    for e in todo:
        data = read_blob(e.oid)
        actual = blob_oid(data, len(e.oid))
        if actual != e.oid:
            raise error(f"git object {e.oid} for {e.path!r} hashes to {actual}")
        parts = e.path.split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in made:
                full = os.path.join(dest, d)
                try:
                    os.mkdir(full)
                except FileExistsError:
                    if not stat.S_ISDIR(os.lstat(full).st_mode):
                        raise error(f"{full} is in the way of {e.path!r}") from None
                made.add(d)
        full = os.path.join(dest, e.path)
        if e.mode == _SYMLINK:
            if not data or b"\0" in data:
                raise error(f"symlink {e.path!r} has an empty target or one containing NUL")
            os.symlink(data, full)
            continue
        fd = os.open(
            full,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
            0o777 if e.mode & 0o100 else 0o666,
        )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    return [e.path for e in todo]


"""Manifests: the exact description of a tree of files (spec/manifest.md).

A manifest lists entries sorted by path; each is a regular file (size, digest, executable
bit) or a symlink (its target, recorded as written, never followed). Directories are
implied by paths. Paths are relative POSIX paths in normal form: no empty, ``.`` or ``..``
components, no leading ``/``, no NUL; no entry lies below a file or symlink entry, so
materializing a manifest can never write outside its root or through a link.

Digest: ``blake3(b"qwex:manifest:v1\\0" + canonical)``.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from . import canonical
from .digest import Digest, hash_tagged

__all__ = [
    "Entry",
    "FileEntry",
    "Manifest",
    "SymlinkEntry",
    "check_relpath",
]

_PATH = Annotated[str, msgspec.Meta(min_length=1)]


class FileEntry(msgspec.Struct, tag_field="type", tag="file", forbid_unknown_fields=True):
    """A regular file. ``executable`` is the owner-execute bit; no other mode bits are kept."""

    path: _PATH
    size: Annotated[int, msgspec.Meta(ge=0)]
    digest: Digest
    executable: bool = False


class SymlinkEntry(msgspec.Struct, tag_field="type", tag="symlink", forbid_unknown_fields=True):
    """A symbolic link, with its target exactly as read by readlink."""

    path: _PATH
    target: Annotated[str, msgspec.Meta(min_length=1)]


Entry = FileEntry | SymlinkEntry


def check_relpath(path: str) -> str:
    """Return ``path`` if it is a normal relative path; raise ValueError saying why not."""
    if not path:
        raise ValueError("empty path")
    if "\0" in path:
        raise ValueError(f"path contains NUL: {path!r}")
    if path.startswith("/"):
        raise ValueError(f"absolute path: {path!r}")
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise ValueError(f"path is not in normal form (empty, '.' or '..' part): {path!r}")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"path is not valid UTF-8: {path!r}") from None
    return path


class Manifest(msgspec.Struct, forbid_unknown_fields=True):
    """A validated, sorted list of entries. Build with :meth:`of` to sort and check."""

    entries: list[Entry]

    @classmethod
    def of(cls, entries: list[Entry]) -> Manifest:
        """Sort entries by path and validate the whole tree; raise ValueError if invalid."""
        m = cls(sorted(entries, key=lambda e: e.path))
        m.validate()
        return m

    def validate(self) -> None:
        """Raise ValueError unless paths are normal, sorted, unique and never nested in a leaf."""
        prev: str | None = None
        leaves: set[str] = set()
        for e in self.entries:
            check_relpath(e.path)
            if prev is not None and not prev < e.path:
                raise ValueError(f"entries not sorted or duplicated at {e.path!r}")
            prev = e.path
            parts = e.path.split("/")
            for i in range(1, len(parts)):
                if "/".join(parts[:i]) in leaves:
                    raise ValueError(f"{e.path!r} lies below a file or symlink entry")
            leaves.add(e.path)

    def canonical(self) -> bytes:
        """The stored and hashed bytes."""
        return canonical.encode(self)

    def digest(self) -> str:
        """``blake3(b"qwex:manifest:v1\\0" + canonical)``."""
        return hash_tagged("manifest", self.canonical())

    def files(self) -> list[FileEntry]:
        """The regular-file entries."""
        return [e for e in self.entries if isinstance(e, FileEntry)]

    def total_size(self) -> int:
        """Sum of file sizes in bytes."""
        return sum(e.size for e in self.files())

    def rebase(self, prefix: str) -> Manifest:
        """The same tree with every path placed under ``prefix`` ('' or '.' for none)."""
        if prefix in ("", "."):
            return self
        check_relpath(prefix)
        return Manifest([msgspec.structs.replace(e, path=f"{prefix}/{e.path}") for e in self.entries])

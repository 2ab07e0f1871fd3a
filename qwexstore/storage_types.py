"""Value types of the storage protocol (re-exported by storage.py, which backends import
from here to avoid a cycle)."""

from __future__ import annotations

import msgspec

__all__ = ["REF_PREFIXES", "Capabilities", "ObjectInfo", "Versioned", "is_ref_path"]

#: The mutable namespace: paths under these prefixes are refs (``ref_*`` methods only).
REF_PREFIXES = ("leases/", "refs/")


def is_ref_path(path: str) -> bool:
    """True for a path in the mutable ref namespace."""
    return path.startswith(REF_PREFIXES)


class ObjectInfo(msgspec.Struct, frozen=True):
    """What ``stat`` reports. ``mtime_ns`` is when the object was stored (None if the
    backend cannot tell); gc's grace window uses it."""

    size: int
    mtime_ns: int | None


class Versioned(msgspec.Struct, frozen=True):
    """A ref's content and version. ``etag`` is opaque; a successful write that changes
    the content always changes it (equal bytes MAY give an equal etag, as on S3)."""

    data: bytes
    etag: str


class Capabilities(msgspec.Struct, frozen=True):
    """What a backend can do beyond the protocol.

    ``local_root``: the objects are plain files under this directory, so callers may copy
    them with the kernel's help (or hard-link them out when a user asks:
    ``checkout --link``), and ``put_file(consume=True)`` links instead of copying.
    ``concurrency``: how many transfers a caller SHOULD run in parallel.
    """

    local_root: str | None = None
    concurrency: int = 1

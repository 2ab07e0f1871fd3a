"""The storage protocol: the few operations a store needs (spec/storage.md).

A :class:`Storage` maps slash-separated relative paths to byte strings, in two namespaces:

- **objects** (everything outside ``leases/`` and ``refs/``): immutable and write-once.
  ``put``/``put_file`` MUST be atomic (a reader sees the whole object under its final name
  or nothing, even if the writer is killed) and a real exclusive create (of two concurrent
  writers exactly one gets True; an existing object is never replaced).
- **refs** (paths under ``leases/`` and ``refs/``): small mutable values read and written
  only with ``ref_get``/``ref_put``/``ref_delete``, which compare-and-swap on an opaque
  ``etag``.

Backends retry transient failures (connection refused or reset, timeouts, HTTP 5xx,
throttling) with exponential backoff for ``QWEX_STORE_RETRY_S`` seconds (default 30), then
raise :class:`~qwexstore.errors.TransientStoreError`; permanent failures raise
:class:`~qwexstore.errors.StoreError` with a one-line message. Deduplication, hashing,
verification and indexing live above this interface; a backend never interprets bytes.

Implementations (each passes tests/test_storage_conformance.py): ``LocalStorage``
(storage_local.py), ``FsspecStorage`` (storage_fsspec.py: memory:// and other fsspec
filesystems, exclusive within one process), ``S3Storage`` (storage_s3.py) and
``SftpStorage`` (storage_sftp.py). Network backends bind their connections to the running
event loop; call ``close()`` before that loop ends (each ``asyncio.run``).

This module imports no backend library: opening a local store never imports fsspec, nor
asyncio (``FsspecStorage`` is imported from storage_fsspec.py on first use of the name).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .errors import StoreError, UserError
from .storage_local import LocalStorage
from .storage_types import REF_PREFIXES, Capabilities, ObjectInfo, Versioned, is_ref_path

if TYPE_CHECKING:
    from .storage_fsspec import FsspecStorage

__all__ = [
    "REF_PREFIXES",
    "Capabilities",
    "FsspecStorage",
    "LocalStorage",
    "ObjectInfo",
    "Storage",
    "Versioned",
    "is_ref_path",
    "open_storage",
]


@runtime_checkable
class Storage(Protocol):
    """Write-once objects plus a compare-and-swap ref namespace; see the module docstring."""

    capabilities: Capabilities
    url: str  # where it is, for messages

    async def exists(self, paths: Sequence[str]) -> list[bool]:
        """One answer per path, in order; network backends check up to
        ``capabilities.concurrency`` paths at a time."""
        ...

    async def stat(self, path: str) -> ObjectInfo:
        """Size and modification time; raise ObjectNotFound."""
        ...

    async def put(self, path: str, data: bytes) -> bool:
        """Create ``path`` with ``data`` atomically; False (and no change) if it exists."""
        ...

    async def put_file(self, path: str, src: str, *, consume: bool) -> bool:
        """As ``put``, streaming a local file (never read whole into memory). With
        ``consume`` the backend may move or link ``src``; the caller must not use ``src``
        afterwards unless the result is False (then ``src`` is intact)."""
        ...

    async def get(self, path: str, *, limit: int | None = None) -> bytes:
        """The object's bytes (small objects only: records); raise ObjectNotFound. With
        ``limit``, at most ``limit + 1`` bytes are read, so a caller that knows the size an
        object must have sees an oversized one without holding all of it (a hostile remote
        can serve an endless object)."""
        ...

    async def get_file(self, path: str, dest: str) -> None:
        """Stream the object, unverified, into the new local file ``dest`` (never a link).
        On any error ``dest`` does not exist afterwards. Raise ObjectNotFound."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Every path under directory ``prefix`` (recursive), unordered. Under ``leases/``
        and ``refs/`` it names refs (which ``ref_get`` may find deleted)."""
        ...

    async def delete(self, path: str) -> None:
        """Remove an object; a missing object is not an error."""
        ...

    async def sync(self) -> None:
        """Durability barrier: every object stored before the call survives a crash."""
        ...

    async def ref_get(self, path: str) -> Versioned | None:
        """The ref's bytes and etag, or None if it does not exist."""
        ...

    async def ref_put(self, path: str, data: bytes, *, expect: str | None) -> str | None:
        """Write a ref if its current etag is ``expect`` (``None``: only if it does not
        exist). Returns the new etag, or None when the precondition failed."""
        ...

    async def ref_delete(self, path: str, *, expect: str) -> bool:
        """Delete a ref if its current etag is ``expect``; False if it was not."""
        ...

    async def close(self) -> None:
        """Release connections bound to the running event loop. Idempotent; the object
        stays usable (a later call in another loop reconnects)."""
        ...


def open_storage(
    url: str, *, endpoint: str | None = None, profile: str | None = None, region: str | None = None
) -> Storage:
    """The storage at ``url``: a local path or ``file://`` (LocalStorage), ``memory://``
    (FsspecStorage), ``s3://bucket[/prefix]`` (S3Storage; ``endpoint``/``profile``/``region``
    override the standard AWS chain), ``ssh://[user@]host[:port]/path`` (SftpStorage;
    ~/.ssh/config aliases, known_hosts and the agent apply). Nothing connects until the
    first operation. Raise UserError for a malformed or unsupported URL."""
    if "://" not in url:
        return LocalStorage(os.path.expanduser(url))
    from urllib.parse import unquote, urlsplit  # ipaddress, ~3 ms: only URLs need it

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        return LocalStorage(os.path.expanduser(unquote(parts.netloc + parts.path)))
    if scheme == "s3":
        if not parts.netloc:
            raise UserError(f"{url}: an s3 URL needs a bucket: s3://BUCKET[/PREFIX]")
        from .storage_s3 import S3Storage  # deferred: aiobotocore costs ~200 ms to import

        return S3Storage(
            parts.netloc, parts.path.strip("/"), endpoint=endpoint, profile=profile, region=region
        )
    if scheme in ("ssh", "sftp"):
        if not parts.hostname or not parts.path.startswith("/"):
            raise UserError(f"{url}: an ssh URL is ssh://[USER@]HOST[:PORT]/ABSOLUTE/PATH")
        from .storage_sftp import SftpStorage

        try:
            port = parts.port
        except ValueError:
            raise UserError(f"{url}: bad port") from None
        return SftpStorage(parts.hostname, unquote(parts.path), user=parts.username, port=port)
    if scheme == "memory":
        try:
            import fsspec  # deferred: costs ~100 ms to import, and only memory:// needs it here
        except ImportError as e:  # pragma: no cover - fsspec is a dependency
            raise StoreError(f"cannot open {url}: {e}") from e
        from .storage_fsspec import FsspecStorage

        fs, root = fsspec.core.url_to_fs(url)
        return FsspecStorage(fs, root, url=url)
    raise UserError(
        f"{url}: unsupported store URL scheme {scheme!r} (use a path, s3://, ssh:// or memory://)"
    )


def __getattr__(name: str) -> Any:
    """``FsspecStorage`` on first use (it imports asyncio, which a local store never needs)."""
    if name == "FsspecStorage":
        from .storage_fsspec import FsspecStorage

        return FsspecStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

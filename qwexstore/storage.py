"""The storage protocol: the few file operations a store needs (spec/store.md, "Storage").

A :class:`Storage` maps slash-separated relative paths to immutable byte strings. Every
implementation MUST make ``put``/``put_file`` atomic (readers see the whole object or
nothing under its final name) and write-once (an existing object is never replaced; the
call reports False). Deduplication, hashing, verification and indexing live above it.

Implementations: :class:`LocalStorage` (a directory; hard links and renames for
ingest) and :class:`FsspecStorage` (any fsspec filesystem: memory, S3, SSH). Both pass
tests/test_storage_conformance.py. Methods are async so network backends fit; local
calls are cheap enough to run inline.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

import msgspec

from .errors import ObjectNotFound, StoreError
from .faults import crashpoint

T = TypeVar("T")

__all__ = ["Capabilities", "FsspecStorage", "LocalStorage", "Storage", "open_storage"]


class Capabilities(msgspec.Struct, frozen=True):
    """What a backend can do beyond the protocol.

    ``local_root``: the objects are plain files under this directory, so callers may copy
    them with the kernel's help (or hard-link them out, when a user explicitly asks:
    ``checkout --link``), and ``put_file(consume=True)`` renames instead of copying.
    """

    local_root: str | None = None


@runtime_checkable
class Storage(Protocol):
    """Immutable objects under relative paths. See the module docstring for the contract."""

    capabilities: Capabilities

    async def exists(self, paths: Sequence[str]) -> list[bool]:
        """Batched existence check, one answer per path, in order."""
        ...

    async def put(self, path: str, data: bytes) -> bool:
        """Store ``data`` at ``path`` atomically; False (and no change) if it exists."""
        ...

    async def put_file(self, path: str, src: str, *, consume: bool) -> bool:
        """Store a local file's bytes at ``path``. With ``consume`` the backend may move or
        link ``src`` instead of copying it; the caller must not modify ``src`` afterwards."""
        ...

    async def get(self, path: str) -> bytes:
        """The object's bytes; raise ObjectNotFound."""
        ...

    async def get_file(self, path: str, dest: str) -> None:
        """Copy the object's bytes, unverified, to the new local file ``dest`` (a raw
        transfer: ``Store.materialize_blob`` verifies and publishes); raise ObjectNotFound."""
        ...

    async def list(self, prefix: str) -> list[str]:
        """Every object path under directory ``prefix`` (recursive), in no particular order."""
        ...

    async def delete(self, path: str) -> None:
        """Remove the object; missing objects are not an error."""
        ...

    async def sync(self) -> None:
        """Durability barrier: every object stored before the call survives a crash after it."""
        ...


def _syncfs(path: str) -> None:
    """Flush the filesystem holding ``path``: one call instead of an fsync per file."""
    import ctypes

    fd = os.open(path, os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syncfs(fd) != 0:
            os.sync()
    except (OSError, AttributeError):
        os.sync()
    finally:
        os.close(fd)


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    import asyncio

    return await asyncio.to_thread(fn, *args)


class LocalStorage:
    """A directory on a local filesystem. Temporary files live in ``<root>/tmp``."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.capabilities = Capabilities(local_root=self.root)
        self._tmp = os.path.join(self.root, "tmp")

    def _abs(self, path: str) -> str:
        return os.path.join(self.root, path)

    def _tmpname(self) -> str:
        os.makedirs(self._tmp, exist_ok=True)
        return os.path.join(self._tmp, f"put-{uuid.uuid4().hex}")

    def _publish(self, tmp: str, final: str) -> bool:
        """Hard-link ``tmp`` to ``final`` (no clobber), then drop ``tmp``."""
        crashpoint("tmp")
        try:
            self._link(tmp, final)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    async def exists(self, paths: Sequence[str]) -> list[bool]:
        return [os.path.lexists(self._abs(p)) for p in paths]

    async def put(self, path: str, data: bytes) -> bool:
        final = self._abs(path)
        if os.path.lexists(final):
            return False
        tmp = self._tmpname()
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o444)
        return self._publish(tmp, final)

    async def put_file(self, path: str, src: str, *, consume: bool) -> bool:
        final = self._abs(path)
        mode = 0o555 if os.stat(src).st_mode & 0o100 else 0o444
        if consume:
            # The source is complete and ours to take: publish it by hard link (no clobber),
            # no temp copy. This is what makes ingesting 10,000 outputs cheap.
            os.chmod(src, mode)
            try:
                self._link(src, final)
            except FileExistsError:
                return False
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
            else:
                os.unlink(src)
                crashpoint("blob")
                return True
        if os.path.lexists(final):
            return False
        tmp = self._tmpname()
        shutil.copyfile(src, tmp)
        os.chmod(tmp, mode)
        return self._publish(tmp, final)

    @staticmethod
    def _link(src: str, final: str) -> None:
        try:
            os.link(src, final)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.link(src, final)

    async def get(self, path: str) -> bytes:
        try:
            with open(self._abs(path), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ObjectNotFound(path) from None

    async def get_file(self, path: str, dest: str) -> None:
        try:
            shutil.copyfile(self._abs(path), dest)  # never a link: no inode leaves the store
        except FileNotFoundError:
            if not os.path.exists(self._abs(path)):
                raise ObjectNotFound(path) from None
            raise

    async def list(self, prefix: str) -> list[str]:
        base = self._abs(prefix)
        out: list[str] = []
        for dirpath, _dirs, files in os.walk(base):
            rel = os.path.relpath(dirpath, self.root)
            out.extend(f"{rel}/{f}" if rel != "." else f for f in files)
        return out

    async def delete(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._abs(path))

    async def sync(self) -> None:
        _syncfs(self.root)


class FsspecStorage:
    """Any fsspec filesystem under a root path. Sync fsspec calls run in a worker thread.

    Write-once is check-then-write: safe for a single writer per path, which content
    addressing gives for blobs; the lease protocol (a later format) covers realisations.
    """

    def __init__(self, fs: Any, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.capabilities = Capabilities()

    def _abs(self, path: str) -> str:
        return f"{self.root}/{path}"

    async def exists(self, paths: Sequence[str]) -> list[bool]:
        return await _in_thread(lambda: [self.fs.exists(self._abs(p)) for p in paths])

    async def put(self, path: str, data: bytes) -> bool:
        def work() -> bool:
            full = self._abs(path)
            if self.fs.exists(full):
                return False
            self.fs.makedirs(self.fs._parent(full), exist_ok=True)
            self.fs.pipe_file(full, data)
            return True

        return await _in_thread(work)

    async def put_file(self, path: str, src: str, *, consume: bool) -> bool:
        def work() -> bool:
            full = self._abs(path)
            if self.fs.exists(full):
                return False
            self.fs.makedirs(self.fs._parent(full), exist_ok=True)
            self.fs.put_file(src, full)
            return True

        return await _in_thread(work)

    async def get(self, path: str) -> bytes:
        try:
            return await _in_thread(self.fs.cat_file, self._abs(path))
        except FileNotFoundError:
            raise ObjectNotFound(path) from None

    async def get_file(self, path: str, dest: str) -> None:
        try:
            await _in_thread(self.fs.get_file, self._abs(path), dest)
        except FileNotFoundError:
            raise ObjectNotFound(path) from None

    async def list(self, prefix: str) -> list[str]:
        def work() -> list[str]:
            base = self._abs(prefix)
            if not self.fs.exists(base):
                return []
            n = len(self.root.lstrip("/")) + 1
            return [p.lstrip("/")[n:] for p in self.fs.find(base)]

        return await _in_thread(work)

    async def delete(self, path: str) -> None:
        def work() -> None:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self._abs(path))

        await _in_thread(work)

    async def sync(self) -> None:
        return None


def open_storage(location: str) -> Storage:
    """A storage for a local path or an fsspec URL (``memory://x``, ``s3://bucket/prefix``)."""
    if "://" not in location or location.startswith("file://"):
        path = location.removeprefix("file://")
        return LocalStorage(os.path.expanduser(path))
    try:
        import fsspec  # deferred: costs ~100 ms to import, and only remote stores need it
    except ImportError as e:  # pragma: no cover - fsspec is a dependency
        raise StoreError(f"cannot open {location}: {e}") from e
    fs, root = fsspec.core.url_to_fs(location)
    return FsspecStorage(fs, root)

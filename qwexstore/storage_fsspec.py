"""FsspecStorage: any fsspec filesystem, for memory:// and unit tests (spec/storage.md).

Sync fsspec calls run in a worker thread. Write-once and compare-and-swap are made exact
by one process-wide lock around check-and-write: a real guarantee for ``memory://``
(which lives inside the process) and for any filesystem only this process writes to, but
NOT across processes or machines. ``open_storage`` therefore routes only ``memory://``
here; S3 and SSH have their own backends with server-side exclusivity.

Objects are written to ``tmp/put-<uuid>`` under the root and moved to their final name,
so a killed writer leaves no partial object under a final name. Ref etags are the
SHA-256 of the content. This module imports fsspec only through the filesystem object it
is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .errors import ObjectNotFound
from .faults import crashpoint
from .storage_types import Capabilities, ObjectInfo, Versioned

__all__ = ["FsspecStorage"]

T = TypeVar("T")

_LOCK = threading.Lock()  # serializes check-and-write for every FsspecStorage in the process


def _etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _mtime_ns(info: dict[str, Any]) -> int | None:
    for k in ("mtime", "LastModified", "created"):
        v = info.get(k)
        if isinstance(v, datetime.datetime):
            return int(v.timestamp() * 1e9)
        if isinstance(v, (int, float)):
            return int(v * 1e9)
    return None


class FsspecStorage:
    """An fsspec filesystem ``fs`` under ``root``; see the module docstring."""

    def __init__(self, fs: Any, root: str, *, url: str | None = None) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url or self.root
        self.capabilities = Capabilities(concurrency=4)

    def _abs(self, path: str) -> str:
        return f"{self.root}/{path}"

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(fn)

    def _exists(self, path: str) -> bool:
        return bool(self.fs.exists(self._abs(path)))

    def _create(self, path: str, write_tmp: Callable[[str], None]) -> bool:
        """Write a temp object with ``write_tmp``, then move it to ``path`` unless it exists."""
        if self._exists(path):  # cheap early answer; decided again under the lock
            return False
        tmp = self._abs(f"tmp/put-{uuid.uuid4().hex}")
        self.fs.makedirs(self.fs._parent(tmp), exist_ok=True)
        write_tmp(tmp)
        crashpoint("tmp")
        try:
            with _LOCK:
                if self._exists(path):
                    return False
                full = self._abs(path)
                self.fs.makedirs(self.fs._parent(full), exist_ok=True)
                self.fs.mv(tmp, full)
                return True
        finally:
            with contextlib.suppress(FileNotFoundError):
                if self.fs.exists(tmp):
                    self.fs.rm_file(tmp)

    # -- objects ---------------------------------------------------------------------------
    async def exists(self, paths: Sequence[str]) -> list[bool]:
        return await self._run(lambda: [self._exists(p) for p in paths])

    async def stat(self, path: str) -> ObjectInfo:
        try:
            info = await self._run(lambda: self.fs.info(self._abs(path)))
        except FileNotFoundError:
            raise ObjectNotFound(path) from None
        if info.get("type") == "directory":
            raise ObjectNotFound(path)
        return ObjectInfo(size=int(info["size"]), mtime_ns=_mtime_ns(info))

    async def put(self, path: str, data: bytes) -> bool:
        return await self._run(lambda: self._create(path, lambda tmp: self.fs.pipe_file(tmp, data)))

    async def put_file(self, path: str, src: str, *, consume: bool) -> bool:
        return await self._run(lambda: self._create(path, lambda tmp: self.fs.put_file(src, tmp)))

    async def get(self, path: str, *, limit: int | None = None) -> bytes:
        end = None if limit is None else limit + 1
        try:
            data = await self._run(lambda: self.fs.cat_file(self._abs(path), end=end))
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectNotFound(path) from None
        return bytes(data)

    async def get_file(self, path: str, dest: str) -> None:
        try:
            await self._run(lambda: self.fs.get_file(self._abs(path), dest))
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(dest)
            if isinstance(e, FileNotFoundError):
                raise ObjectNotFound(path) from None
            raise

    async def list(self, prefix: str) -> list[str]:
        def work() -> list[str]:
            base = self._abs(prefix)
            if not self.fs.exists(base):
                return []
            n = len(self.root.lstrip("/")) + 1
            return [p.lstrip("/")[n:] for p in self.fs.find(base)]

        return await self._run(work)

    async def delete(self, path: str) -> None:
        def work() -> None:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self._abs(path))

        await self._run(work)

    async def sync(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # -- refs --------------------------------------------------------------------------------
    def _read_ref(self, path: str) -> Versioned | None:
        try:
            data = bytes(self.fs.cat_file(self._abs(path)))
        except FileNotFoundError:
            return None
        return Versioned(data=data, etag=_etag(data))

    async def ref_get(self, path: str) -> Versioned | None:
        return await self._run(lambda: self._read_ref(path))

    async def ref_put(self, path: str, data: bytes, *, expect: str | None) -> str | None:
        def work() -> str | None:
            with _LOCK:
                cur = self._read_ref(path)
                if (cur.etag if cur else None) != expect:
                    return None
                full = self._abs(path)
                self.fs.makedirs(self.fs._parent(full), exist_ok=True)
                self.fs.pipe_file(full, data)
                return _etag(data)

        return await self._run(work)

    async def ref_delete(self, path: str, *, expect: str) -> bool:
        def work() -> bool:
            with _LOCK:
                cur = self._read_ref(path)
                if cur is None or cur.etag != expect:
                    return False
                self.fs.rm_file(self._abs(path))
                return True

        return await self._run(work)

"""LocalStorage: a store on a local directory (spec/storage.md, "Local directory").

Objects: written to ``tmp/put-<uuid>``, fsync'd, made read-only, then ``link(2)``ed to
the final name: ``link`` fails with EEXIST rather than replace, so write-once needs no
lock, and a killed writer leaves at most a file in ``tmp/``. ``consume`` links the source
itself (no copy). ``sync`` is one ``syncfs(2)``.

Refs: replaced by rename (atomic for readers) while holding an exclusive ``flock`` on
``tmp/locks/refs.lock`` (the compare and the swap happen under it; gc keeps ``locks/``).
The etag is the SHA-256 of the content.

The object methods do their (fast, local) file I/O inline in the event loop and never
suspend (so :func:`qwexstore.syncrun.run_now` can drive them without a loop); the ref
writes, which may wait for the lock, run in a thread. Nothing here imports fsspec, and
asyncio, hashlib and shutil are imported only by the methods that use them (``qwex show``
reads a local store without them).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import uuid
from collections.abc import Iterator, Sequence

from .errors import ObjectNotFound, StoreError
from .faults import crashpoint
from .storage_types import Capabilities, ObjectInfo, Versioned

__all__ = ["LocalStorage"]


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


def _etag(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


class LocalStorage:
    """A directory on a local filesystem. Temporary files live in ``<root>/tmp``."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.url = self.root
        self.capabilities = Capabilities(local_root=self.root, concurrency=4)
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

    @staticmethod
    def _link(src: str, final: str) -> None:
        try:
            os.link(src, final)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(final), exist_ok=True)
            os.link(src, final)

    # -- objects ---------------------------------------------------------------------------
    async def exists(self, paths: Sequence[str]) -> list[bool]:
        return [os.path.lexists(self._abs(p)) for p in paths]

    async def stat(self, path: str) -> ObjectInfo:
        try:
            st = os.stat(self._abs(path))
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(path) from None
        return ObjectInfo(size=st.st_size, mtime_ns=st.st_mtime_ns)

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
        import shutil

        shutil.copyfile(src, tmp)  # streams (copy_file_range/sendfile), never whole in memory
        os.chmod(tmp, mode)
        return self._publish(tmp, final)

    async def get(self, path: str, *, limit: int | None = None) -> bytes:
        try:
            fd = self._open_regular(path)
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(path) from None
        with open(fd, "rb") as f:
            return f.read() if limit is None else f.read(limit + 1)

    def _open_regular(self, path: str) -> int:
        """Open an object for reading, refusing anything but a regular file (StoreError): a
        directory remote may hold a FIFO (a read would block forever), a device or a
        symlink to one (an endless read) under an object's name. Never blocks."""
        try:
            fd = os.open(self._abs(path), os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
            raise StoreError(f"{self.url}/{path} is a symbolic link, not an object") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise StoreError(f"{self.url}/{path} is not a regular file")
        return fd

    async def get_file(self, path: str, dest: str) -> None:
        import shutil

        try:
            os.close(self._open_regular(path))  # not a FIFO or a device (a symlink: ELOOP)
            shutil.copyfile(self._abs(path), dest)  # never a link: no inode leaves the store
        except BaseException as e:
            if os.path.exists(dest) and not isinstance(e, FileExistsError):
                with contextlib.suppress(OSError):
                    os.unlink(dest)
            if isinstance(e, (FileNotFoundError, NotADirectoryError)) and not os.path.exists(self._abs(path)):
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
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(self._abs(path))

    async def sync(self) -> None:
        _syncfs(self.root)

    async def close(self) -> None:
        return None

    # -- refs --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        locks = os.path.join(self._tmp, "locks")
        os.makedirs(locks, exist_ok=True)
        fd = os.open(os.path.join(locks, "refs.lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read_ref(self, path: str) -> Versioned | None:
        try:
            with open(self._abs(path), "rb") as f:
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Versioned(data=data, etag=_etag(data))

    async def ref_get(self, path: str) -> Versioned | None:
        return self._read_ref(path)

    def _ref_put(self, path: str, data: bytes, expect: str | None) -> str | None:
        with self._locked():
            cur = self._read_ref(path)
            if (cur.etag if cur else None) != expect:
                return None
            final = self._abs(path)
            tmp = self._tmpname()
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.replace(tmp, final)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(final), exist_ok=True)
                os.replace(tmp, final)
            return _etag(data)

    async def ref_put(self, path: str, data: bytes, *, expect: str | None) -> str | None:
        import asyncio

        return await asyncio.to_thread(self._ref_put, path, data, expect)

    def _ref_delete(self, path: str, expect: str) -> bool:
        with self._locked():
            cur = self._read_ref(path)
            if cur is None or cur.etag != expect:
                return False
            os.unlink(self._abs(path))
            return True

    async def ref_delete(self, path: str, *, expect: str) -> bool:
        import asyncio

        return await asyncio.to_thread(self._ref_delete, path, expect)

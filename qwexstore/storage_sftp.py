"""SftpStorage: a store on ``ssh://[user@]host[:port]/path`` (spec/storage.md, "SFTP").

Speaks SFTP through asyncssh (the library sshfs wraps), which reads ``~/.ssh/config``
(aliases, ports, users, identity files), ``~/.ssh/known_hosts`` and the ssh agent. An
unknown host key is refused (never accepted on first use) with a one-line error naming
the fix.

- Write-once: the bytes go to ``tmp/put-<uuid>`` (streamed in 1 MiB chunks, fsync'd with
  ``fsync@openssh.com`` when the server has it), then ``hardlink@openssh.com`` gives them
  their final name; ``link(2)`` never replaces, so of two writers exactly one succeeds, and
  a killed writer leaves at most a temp file. The temp name is always removed.
- Refs (no compare-and-swap in SFTP): a ref ``P`` is a directory ``P.v/`` of write-once
  generations ``%016d``; the highest is current; its first byte is ``+`` (value follows) or
  ``-`` (deleted). A write creates generation current+1 by the same exclusive link, so of
  two writers expecting the same etag (the generation) exactly one wins; a writer that
  finds a higher generation after its link lost to a newer write and withdraws. Each write
  then removes generations below current-1.
- Errors: refused or lost connections and timeouts are retried on a fresh connection
  (storage_retry.py), then TransientStoreError; authentication, host keys and SFTP
  permission errors are StoreError at once.
- Event loops: one connection per running loop, closed by ``close()`` or when
  ``asyncio.run`` finalizes async generators.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import posixpath
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncssh

from .errors import ObjectNotFound, StoreError
from .loopcache import PerLoop
from .ssh_connect import ssh_connect
from .storage_batch import batched_exists, read_upto
from .storage_retry import describe, retrying
from .storage_types import Capabilities, ObjectInfo, Versioned, is_ref_path

__all__ = ["SftpStorage"]

T = TypeVar("T")

_CHUNK = 2**20
_REF_DIR = ".v"
_TRANSIENT_ERRNO = frozenset(
    {errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT,
     errno.EHOSTUNREACH, errno.ENETUNREACH}
)  # fmt: skip


def is_transient(e: BaseException) -> bool:
    """A lost or refused connection or a timeout; not authentication or host keys."""
    if isinstance(e, (asyncssh.PermissionDenied, asyncssh.HostKeyNotVerifiable)):
        return False
    if isinstance(e, (asyncssh.ConnectionLost, asyncssh.DisconnectError, asyncssh.ChannelOpenError)):
        return True
    if isinstance(e, (asyncio.TimeoutError, BrokenPipeError, ConnectionError)):
        return True
    return isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNO


async def _lexists(s: Any, path: str) -> bool:
    try:
        await s.lstat(path)
        return True
    except asyncssh.SFTPNoSuchFile:
        return False


class _Conn:
    def __init__(self, conn: Any, sftp: Any, *, owned: bool = True) -> None:
        self.conn, self.sftp, self.owned = conn, sftp, owned

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sftp.exit()
            if self.owned:  # a borrowed connection is closed by its owner
                self.conn.close()
                await self.conn.wait_closed()


class SftpStorage:
    """Objects under an absolute ``root`` on an SSH host; see the module docstring."""

    def __init__(
        self,
        host: str,
        root: str,
        *,
        user: str | None = None,
        port: int | None = None,
        concurrency: int = 16,
        connection: Callable[[], Awaitable[asyncssh.SSHClientConnection]] | None = None,
    ) -> None:
        """``connection``: borrow the SSH connection it returns (e.g. an ssh transport's)
        instead of opening one; ``close()`` then ends only this store's SFTP session."""
        self.host, self.user, self.port = host, user, port
        self._borrow = connection
        self.root = root.rstrip("/") or "/"
        who = f"{user}@" if user else ""
        self.url = f"ssh://{who}{host}{f':{port}' if port else ''}{self.root}"
        self.capabilities = Capabilities(concurrency=concurrency)
        self._conns: PerLoop[_Conn] = PerLoop(lambda c: c.close())

    # -- connection per event loop (qwexstore.loopcache) --------------------------------------
    async def _conn(self) -> _Conn:
        return await self._conns.get(self._connect)

    async def _connect(self) -> _Conn:
        if self._borrow is not None:
            borrowed = await self._borrow()
            return _Conn(borrowed, await borrowed.start_sftp_client(), owned=False)
        try:
            conn = await ssh_connect(self.host, user=self.user, port=self.port)
        except asyncssh.HostKeyNotVerifiable as e:
            raise StoreError(
                f"{self.url}: the host key of {self.host} is not in known_hosts; "
                f"connect once with `ssh {self.host}` (or add it with ssh-keyscan) and retry"
            ) from e
        except asyncssh.PermissionDenied as e:
            raise StoreError(
                f"{self.url}: ssh authentication failed (check the user, the key or the ssh agent)"
            ) from e
        except (OSError, asyncssh.Error, ValueError) as e:
            if is_transient(e):
                raise
            raise StoreError(f"{self.url}: cannot connect: {describe(e)}") from e
        return _Conn(conn, await conn.start_sftp_client())

    async def close(self) -> None:
        await self._conns.close()

    async def _drop(self, failed: _Conn) -> None:
        """Close this loop's connection after a transient failure on it (unless another
        operation already replaced it): the retry reconnects."""
        if self._conns.current() is failed:
            await self.close()

    async def _call(self, what: str, path: str, op: Callable[[Any, int], Awaitable[T]]) -> T:
        async def attempt(n: int) -> T:
            c = await self._conn()
            try:
                return await op(c.sftp, n)
            except Exception as e:
                if is_transient(e):
                    await self._drop(c)
                raise

        try:
            return await retrying(attempt, is_transient=is_transient, what=f"{what} {self.url}/{path}")
        except asyncssh.SFTPError as e:
            raise StoreError(f"{what} {self.url}/{path}: {describe(e)}") from e

    def _abs(self, path: str) -> str:
        return posixpath.join(self.root, path) if path else self.root

    # -- objects -----------------------------------------------------------------------------
    async def _stat(self, path: str) -> Any | None:
        async def op(s: Any, _: int) -> Any | None:
            try:
                return await s.stat(self._abs(path))
            except asyncssh.SFTPNoSuchFile:
                return None

        return await self._call("stat", path, op)

    async def exists(self, paths: Sequence[str]) -> list[bool]:
        return await batched_exists(
            paths, list_dir=self._list_dir, probe=self._exists_one, concurrency=self.capabilities.concurrency
        )

    async def _list_dir(self, d: str, limit: int) -> set[str] | None:
        async def op(s: Any, _: int) -> set[str] | None:
            names: set[str] = set()
            try:
                async for n in s.scandir(self._abs(d)):
                    names.add(n.filename)
                    if len(names) > limit + 2:  # "." and ".."
                        return None
            except asyncssh.SFTPNoSuchFile:
                pass
            return names

        return await self._call("exists", d, op)

    async def _exists_one(self, path: str) -> bool:
        return await self._stat(path) is not None

    async def stat(self, path: str) -> ObjectInfo:
        attrs = await self._stat(path)
        if attrs is None or attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
            raise ObjectNotFound(path)
        mtime = attrs.mtime_ns if attrs.mtime_ns is not None else (attrs.mtime or 0) * 10**9
        return ObjectInfo(size=int(attrs.size or 0), mtime_ns=int(mtime) if attrs.mtime is not None else None)

    async def _create(self, path: str, write: Callable[[Any], Awaitable[None]], what: str) -> bool:
        """Write a temp file with ``write(file)``, fsync it, link it to ``path`` (no clobber)."""
        return await self._call(what, path, lambda s, _: self._write_link(s, self._abs(path), write))

    async def _write_link(self, s: Any, final: str, write: Callable[[Any], Awaitable[None]]) -> bool:
        """One attempt of ``_create`` on the SFTP client ``s``; the temp name never remains."""
        tmp = self._abs(f"tmp/put-{uuid.uuid4().hex}")
        try:
            try:
                f = await s.open(tmp, "wb")
            except asyncssh.SFTPNoSuchFile:
                await s.makedirs(posixpath.dirname(tmp), exist_ok=True)
                f = await s.open(tmp, "wb")
            try:
                await write(f)
                with contextlib.suppress(asyncssh.SFTPOpUnsupported):
                    await f.fsync()
            finally:
                await f.close()
            return await self._link(s, tmp, final)
        finally:
            with contextlib.suppress(asyncssh.Error, OSError):
                await s.remove(tmp)

    @staticmethod
    async def _link(s: Any, tmp: str, final: str) -> bool:
        """Hard-link ``tmp`` to ``final``, creating parents; False if ``final`` exists."""
        try:
            await s.link(tmp, final)
            return True
        except asyncssh.SFTPNoSuchFile:
            await s.makedirs(posixpath.dirname(final), exist_ok=True)
        except (asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists):
            # OpenSSH reports link's EEXIST as a generic failure: decide by looking.
            if await _lexists(s, final):
                return False
            raise
        try:
            await s.link(tmp, final)
            return True
        except (asyncssh.SFTPFailure, asyncssh.SFTPFileAlreadyExists):
            if await _lexists(s, final):
                return False
            raise

    async def put(self, path: str, data: bytes) -> bool:
        async def write(f: Any) -> None:
            await f.write(data)

        return await self._create(path, write, "put")

    async def put_file(self, path: str, src: str, *, consume: bool) -> bool:
        if (await self.exists([path]))[0]:
            return False

        async def write(f: Any) -> None:
            with open(src, "rb") as local:
                while chunk := local.read(_CHUNK):
                    await f.write(chunk)

        return await self._create(path, write, "put_file")

    async def get(self, path: str, *, limit: int | None = None) -> bytes:
        async def op(s: Any, _: int) -> bytes:
            try:
                async with s.open(self._abs(path), "rb") as f:
                    if limit is None:
                        return bytes(await f.read())
                    return await read_upto(f.read, limit + 1)
            except asyncssh.SFTPNoSuchFile:
                raise ObjectNotFound(path) from None

        return await self._call("get", path, op)

    async def get_file(self, path: str, dest: str) -> None:
        async def op(s: Any, _: int) -> None:
            try:
                f = await s.open(self._abs(path), "rb")
            except asyncssh.SFTPNoSuchFile:
                raise ObjectNotFound(path) from None
            try:
                with open(dest, "wb") as out:  # truncates what a failed attempt left
                    while chunk := await f.read(_CHUNK):
                        out.write(chunk)
            finally:
                await f.close()

        try:
            await self._call("get_file", path, op)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(dest)
            raise

    async def list(self, prefix: str) -> list[str]:
        async def op(s: Any, _: int) -> list[str]:
            out: list[str] = []

            async def walk(rel: str) -> None:
                try:
                    names = await s.readdir(self._abs(rel))
                except asyncssh.SFTPNoSuchFile:
                    return
                subdirs = []
                for n in names:
                    if n.filename in (".", ".."):
                        continue
                    child = f"{rel}/{n.filename}" if rel else n.filename
                    if n.attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
                        if child.endswith(_REF_DIR) and is_ref_path(child):
                            out.append(child[: -len(_REF_DIR)])
                        else:
                            subdirs.append(child)
                    else:
                        out.append(child)
                await asyncio.gather(*(walk(d) for d in subdirs))

            await walk(prefix.strip("/"))
            return out

        return await self._call("list", prefix, op)

    async def delete(self, path: str) -> None:
        async def op(s: Any, _: int) -> None:
            with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                await s.remove(self._abs(path))

        await self._call("delete", path, op)

    async def sync(self) -> None:
        return None  # every object was fsync'd before it got its final name

    # -- refs ----------------------------------------------------------------------------------
    async def ref_get(self, path: str) -> Versioned | None:
        from .storage_sftp_refs import ref_get

        return await ref_get(self, path)

    async def ref_put(self, path: str, data: bytes, *, expect: str | None) -> str | None:
        from .storage_sftp_refs import ref_write

        return await ref_write(self, path, b"+" + data, expect=expect, create=expect is None)

    async def ref_delete(self, path: str, *, expect: str) -> bool:
        from .storage_sftp_refs import ref_write

        return await ref_write(self, path, b"-", expect=expect, create=False) is not None

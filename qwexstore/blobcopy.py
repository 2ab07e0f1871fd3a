"""Materializing blobs as files, verified (spec/store.md, "Readers", R1 and R6).

Every read that turns a blob into a file (staging inputs, checkout, later push and pull)
goes through :meth:`Store.materialize_blob`, which uses the functions here for a local
store. The contract:

- The bytes are written under a temporary name in the destination's directory, checked
  against the digest, then published under the destination name with ``link(2)``, which
  never replaces an existing file. A file with wrong bytes never appears under the
  destination name; a mismatch is :class:`CorruptObject`, naming the object and
  ``qwex verify --repair``, and the temporary file is removed.
- No inode is shared with the store: the destination is a copy, unless the caller asks
  for a hard link (``link``), and then the store's file is verified first.
- Small files (below ``LARGE``) are read into memory, hashed, and written from that same
  buffer (the bytes written are the bytes hashed). Large files are copied in the kernel
  (``copy_file_range``, in 64 MiB chunks) while a second thread hashes the
  *destination's* already-copied bytes (mmap), so copy and hash overlap. Measured against
  copying first and hashing the copy with all cores, and against hashing while copying
  through a Python buffer (benchmarks/README.md, "Materializing blobs").

Everything here is synchronous and local; callers run it in worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
import threading
from typing import Final

import blake3

from .digest import PREFIX, hash_bytes, hash_file
from .errors import CorruptObject, ObjectNotFound, UserError

__all__ = ["LARGE", "copy_verified", "file_mode", "link_verified", "publish", "temp_name", "verify_file"]

#: From this size on, copy in the kernel and hash the copy with all cores (digest.py's
#: mmap threshold); below it, one read, one in-memory hash, one write.
LARGE: Final = 4 * 1024 * 1024

#: Large files are copied in chunks of this size, each hashed while the next is copied.
_COPY_CHUNK: Final = 64 << 20
_NO_LINK: Final = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP)


def file_mode(executable: bool, read_only: bool) -> int:
    """0644/0755 for a file the user may edit, 0444/0555 for a read-only one (the umask
    applies, as for ``cp``)."""
    if read_only:
        return 0o555 if executable else 0o444
    return 0o755 if executable else 0o644


def temp_name(directory: str) -> str:
    """A fresh name in ``directory`` of fixed length (a long destination name plus a
    suffix could exceed NAME_MAX)."""
    import secrets  # random and hashlib: not imported by `qwex show`, which opens the store

    return os.path.join(directory, f".qwex-tmp-{secrets.token_hex(8)}")


def publish(tmp: str, dest: str) -> None:
    """Give the complete file ``tmp`` the name ``dest``, never replacing anything, and drop
    ``tmp``. An existing ``dest`` (even a dangling symlink) is a UserError naming it."""
    try:
        try:
            os.link(tmp, dest, follow_symlinks=False)
        except FileExistsError:
            raise UserError(f"{dest} already exists") from None
        except OSError as e:
            # A filesystem without hard links: check, then rename (the check is racy, but
            # the destination directory is ours: a checkout's temporary tree, a work dir).
            if e.errno not in _NO_LINK:
                raise
            if os.path.lexists(dest):
                raise UserError(f"{dest} already exists") from None
            os.rename(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def verify_file(path: str, digest: str, where: str, size: int | None = None) -> None:
    """Raise CorruptObject(where, ...) unless the file at ``path`` hashes to ``digest``."""
    actual = hash_file(path, size)
    if actual != digest:
        raise CorruptObject(where, digest, actual)


def _open_blob(src: str, where: str) -> int:
    try:
        return os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ObjectNotFound(where) from None


def _read_all(fd: int, size: int) -> bytes:
    data = os.read(fd, size + 1)
    if len(data) == size:
        return data
    parts = [data]  # a short read, or a file that is not the size fstat said: read to EOF
    while chunk := os.read(fd, 1 << 20):
        parts.append(chunk)
    return b"".join(parts)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_range(src_fd: int, dst_fd: int, off: int, count: int) -> int:
    """Copy up to ``count`` bytes at ``off`` in the kernel (a userspace copy where it
    cannot); return how many were copied (0 at the source's end)."""
    try:
        return os.copy_file_range(src_fd, dst_fd, count, off, off)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
            raise
    chunk = os.pread(src_fd, min(count, 8 << 20), off)
    view = memoryview(chunk)
    while view:
        n = os.pwrite(dst_fd, view, off)
        view, off = view[n:], off + n
    return len(chunk)


def _copy_and_hash(src_fd: int, dst_fd: int, size: int) -> str:
    """Copy ``size`` bytes in the kernel while a second thread hashes the destination's
    already-copied prefix (mmap): the copy and the hash overlap on two cores, and what is
    hashed is the destination's bytes. Returns the destination's digest (all ``size``
    bytes: a source that ends early leaves zeros, which then do not match)."""
    os.ftruncate(dst_fd, size)  # mmap needs the length; the copy fills it in
    hasher = blake3.blake3()
    cond = threading.Condition()
    progress = [0, 0]  # bytes copied; 1 once the copy has ended (either way)
    failure: list[BaseException] = []

    def hash_behind() -> None:
        try:
            with mmap.mmap(dst_fd, size, access=mmap.ACCESS_READ) as mm:
                view, hashed = memoryview(mm), 0
                try:
                    while True:
                        with cond:
                            while progress[0] == hashed and not progress[1]:
                                cond.wait()
                            copied, ended = progress
                        if copied > hashed:
                            hasher.update(view[hashed:copied])
                            hashed = copied
                        elif ended:
                            return
                finally:
                    view.release()
        except BaseException as e:  # re-raised by the copying thread
            failure.append(e)

    worker = threading.Thread(target=hash_behind, name="qwex-hash", daemon=True)
    worker.start()
    off = 0
    try:
        while off < size:
            n = _copy_range(src_fd, dst_fd, off, min(_COPY_CHUNK, size - off))
            if n == 0:
                break
            off += n
            with cond:
                progress[0] = off
                cond.notify()
    finally:
        with cond:
            progress[0], progress[1] = size, 1  # hash the rest too (zeros if the copy stopped)
            cond.notify()
        worker.join()
    if failure:
        raise failure[0]
    return PREFIX + hasher.hexdigest()


def copy_verified(src: str, dest: str, digest: str, *, mode: int, where: str) -> None:
    """Copy the blob file ``src`` to ``dest`` (which must not exist) with ``mode``, verified
    against ``digest``. ``where`` names the object in errors (its store path).

    Raises ObjectNotFound, CorruptObject (nothing is left at ``dest`` or beside it), or
    UserError if ``dest`` exists.
    """
    fd = _open_blob(src, where)
    tmp = temp_name(os.path.dirname(dest))
    try:
        size = os.fstat(fd).st_size
        if size < LARGE:
            data = _read_all(fd, size)
            actual = hash_bytes(data)
            if actual != digest:
                raise CorruptObject(where, digest, actual)
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
            try:
                _write_all(out, data)
            finally:
                os.close(out)
        else:
            out = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
            try:
                actual = _copy_and_hash(fd, out, size)  # the destination's bytes, not the source's
            finally:
                os.close(out)
            if actual != digest:
                raise CorruptObject(where, digest, actual)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    publish(tmp, dest)


def link_verified(src: str, dest: str, digest: str, *, executable: bool, where: str) -> None:
    """Hard-link the blob file ``src`` to ``dest`` after verifying it. The link shares the
    store's inode: writing through it corrupts the store (``checkout --link`` says so).

    Falls back to a read-only copy when the blob's executable bit differs from the entry's
    (a link cannot carry another mode) or the filesystem cannot link.
    """
    try:
        st = os.stat(src)
    except FileNotFoundError:
        raise ObjectNotFound(where) from None
    if bool(st.st_mode & stat.S_IXUSR) == executable:
        verify_file(src, digest, where, st.st_size)
        try:
            os.link(src, dest, follow_symlinks=False)
            return
        except FileExistsError:
            raise UserError(f"{dest} already exists") from None
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
    copy_verified(src, dest, digest, mode=file_mode(executable, read_only=True), where=where)

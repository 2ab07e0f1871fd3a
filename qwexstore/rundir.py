"""A run's private directory (spec/runs.md, "Run directory"), handled so that qwex never
follows a symlink the job planted in it.

The job can write anywhere in its run directory: it may replace ``stdout`` by a link to a
user's file, or its work dir by a link to a user's project. So qwex opens the run dir and
the work dir as directory file descriptors (``O_DIRECTORY | O_NOFOLLOW``) when it creates
them, before the job starts, and afterwards touches them only through those descriptors:

- logs are written to descriptors opened at creation;
- outputs are found by walking the work-dir descriptor (``scandir(fd)``, ``lstat`` with
  ``dir_fd``, subdirectories opened ``O_NOFOLLOW``), and each one is *renamed* (which never
  follows a link) into an ingest directory that qwex creates after the job has ended;
- logs are renamed there too, and kept only if the renamed entry is the very inode qwex
  wrote (otherwise they are copied from qwex's own descriptor);
- the run dir is removed through its descriptor.

Only paths inside the ingest directory are then passed to path-based code (hashing, the
store's ``put_file``). Ordering: :meth:`RunDir.collect` and :meth:`RunDir.take_logs` MUST
run only after every process of the job has ended (the driver's contract), so nothing can
change a name between qwex's check and its use.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable
from glob import has_magic

from .errors import UserError
from .gittree import check_git_path
from .globs import Selector
from .manifest import check_relpath
from .tree import Scanned

_SYMLINK = 0o120000

__all__ = ["STREAMS", "RunDir"]

#: ``take(relpath, name, parent_fd, lstat)``: called for each file or symlink walked.
Take = Callable[[str, str, int, os.stat_result], None]

STREAMS = ("stdout", "stderr")
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class RunDir:
    """``<scratch>/runs/<run_id>/`` with ``work/`` (cwd), ``home/`` ($HOME), ``tmp/``
    ($TMPDIR) and the two logs. Creating it opens every descriptor; :meth:`remove` closes
    them. Not thread-safe; one owner."""

    def __init__(self, scratch: str, run_id: str) -> None:
        self._names(scratch, run_id)
        os.makedirs(os.path.join(scratch, "runs"), exist_ok=True)
        os.mkdir(self.path)
        self._open(create=True)

    def _names(self, scratch: str, run_id: str) -> None:
        self.scratch, self.run_id = scratch, run_id
        self.path = os.path.join(scratch, "runs", run_id)
        self.work, self.home, self.tmp = (os.path.join(self.path, n) for n in ("work", "home", "tmp"))
        self._ingest: str | None = None
        self._ingest_fd = -1

    def _open(self, *, create: bool) -> None:
        """Open the run dir, then (making them first with ``create``) the work dir and the
        logs: new and exclusive, or (reopening) emptied."""
        self.fd = os.open(self.path, _DIR)
        self.work_fd = -1
        self.logs: dict[str, int] = {}
        try:
            if create:
                for name in ("work", "home", "tmp"):
                    os.mkdir(name, dir_fd=self.fd)
            self.work_fd = os.open("work", _DIR, dir_fd=self.fd)
            for s in STREAMS:
                flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                flags |= os.O_EXCL if create else os.O_TRUNC
                self.logs[s] = os.open(s, flags, 0o644, dir_fd=self.fd)
        except BaseException:
            self.remove()
            raise

    @classmethod
    def adopt(cls, workdir: str, scratch: str, name: str) -> RunDir:
        """A work dir made elsewhere (the execution side of a remote run: spec/drivers.md),
        opened once here without following a symlink (``workdir`` itself must not be one),
        for :meth:`collect` only; its ingest dir is ``<scratch>/ingest-<name>``. It has no
        run dir and no logs: :meth:`remove` closes the descriptor and removes the ingest
        dir, and leaves the work dir's own name alone."""
        self = cls.__new__(cls)
        self.scratch, self.run_id = scratch, name
        self.path, self.work = os.path.dirname(workdir), workdir
        self.home = self.tmp = ""
        self._ingest, self._ingest_fd = None, -1
        self.fd, self.logs = -1, {}
        self.work_fd = os.open(workdir, _DIR)
        return self

    @classmethod
    def reopen(cls, scratch: str, run_id: str) -> RunDir:
        """The run dir of a job that outlived its client (spec/drivers.md, "Attach"),
        opened again without following a link, its logs emptied: the attaching client
        streams the job's own log files again from the start. FileNotFoundError if gone."""
        self = cls.__new__(cls)
        self._names(scratch, run_id)
        self._open(create=False)
        return self

    def write_log(self, stream: str, chunk: bytes) -> None:
        """Append to a log through qwex's own descriptor (OSError, e.g. ENOSPC, to the caller)."""
        view = memoryview(chunk)
        while view:
            view = view[os.write(self.logs[stream], view):]

    # -- after the job has ended ---------------------------------------------------------
    def _ingest_dir(self) -> tuple[str, int]:
        """A fresh directory next to ``runs/``, made now: no job ever knew its name."""
        if self._ingest is None:
            path = os.path.join(self.scratch, f"ingest-{self.run_id}")
            os.mkdir(path, 0o700)
            self._ingest, self._ingest_fd = path, os.open(path, _DIR)
        return self._ingest, self._ingest_fd

    def take_logs(self) -> dict[str, str]:
        """Move the logs into the ingest dir; return their paths there (regular files that
        hold exactly what qwex wrote)."""
        path, dfd = self._ingest_dir()
        out = {}
        for s in STREAMS:
            fd = self.logs[s]
            mine = os.fstat(fd)
            name = f"log-{s}"
            try:
                os.rename(s, name, src_dir_fd=self.fd, dst_dir_fd=dfd)
                moved = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                ok = (moved.st_dev, moved.st_ino) == (mine.st_dev, mine.st_ino)
            except OSError:
                ok = False
            if not ok:  # the job replaced or removed it: copy from our descriptor
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dfd)
                _copy_fd(fd, name, dfd, 0o644)
            out[s] = os.path.join(path, name)
        return out

    def collect(self, patterns: list[str]) -> list[Scanned]:
        """Find the declared outputs in the work dir and move them into the ingest dir.

        A plain path must exist (else ValueError "was not produced"); a directory is taken
        with everything below it; a glob matches work-dir paths. Every pattern must match at
        least one file or symlink (else ValueError naming it: an empty pre-created output
        directory matched nothing). The returned :class:`Scanned` carry the work-dir
        relative path, the path in the ingest dir, and the lstat taken before the move.
        """
        ingest, dfd = self._ingest_dir()
        found: dict[str, Scanned] = {}

        def take(rel: str, name: str, parent: int, st: os.stat_result) -> None:
            if rel in found:
                return
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                raise UserError(f"output {rel}: not a regular file, directory or symlink")
            try:
                check_relpath(rel)
            except ValueError as e:
                raise UserError(f"output {rel!r}: {e}") from None
            why = check_git_path(rel, _SYMLINK if stat.S_ISLNK(st.st_mode) else None)
            if why is not None:  # a checkout would turn it into live git metadata (spec/runs.md O2)
                raise UserError(f"output {why}; outputs never hold git metadata: archive it or leave it out")
            staged = str(len(found))
            try:
                os.rename(name, staged, src_dir_fd=parent, dst_dir_fd=dfd)
            except OSError as e:
                if e.errno != errno.EXDEV:  # a mount inside the work dir: copy instead
                    raise
                _copy_entry(parent, name, st, staged, dfd)
            found[rel] = Scanned(rel, os.path.join(ingest, staged), st)

        for pat in patterns:
            if has_magic(pat):
                continue
            rel = pat.rstrip("/")
            if rel in found or any(p.startswith(rel + "/") for p in found):
                continue  # taken by an earlier pattern (``out/`` then ``out/a``)
            before = len(found)
            parent, name = self._open_parent(pat, rel)
            try:
                try:
                    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                except FileNotFoundError:
                    raise ValueError(f"declared output {pat!r} was not produced") from None
                if stat.S_ISDIR(st.st_mode):
                    sub = os.open(name, _DIR, dir_fd=parent)
                    try:
                        _walk(sub, rel, take)
                    finally:
                        os.close(sub)
                else:
                    take(rel, name, parent, st)
            finally:
                if parent != self.work_fd:
                    os.close(parent)
            if len(found) == before:
                raise ValueError(f"declared output {pat!r} is empty: it matched no file")
        globbed = [p for p in patterns if has_magic(p)]
        if globbed:
            selectors = {p: Selector([p], []) for p in globbed}
            matched: set[str] = set()

            def take_glob(rel: str, name: str, parent: int, st: os.stat_result) -> None:
                hits = [p for p, sel in selectors.items() if sel(rel)]
                if hits:
                    matched.update(hits)
                    take(rel, name, parent, st)

            _walk(self.work_fd, "", take_glob)
            for p, sel in selectors.items():  # (files a plain pattern took are no longer there)
                if p not in matched and not any(sel(r) for r in found):
                    raise ValueError(f"declared output {p!r} matched no file")
        return list(found.values())

    def _open_parent(self, pat: str, rel: str) -> tuple[int, str]:
        """The directory fd holding ``rel``'s last component, opened without following a link."""
        parts = rel.split("/")
        fd = self.work_fd
        try:
            for i, part in enumerate(parts[:-1]):
                try:
                    nxt = os.open(part, _DIR, dir_fd=fd)
                except FileNotFoundError:
                    raise ValueError(f"declared output {pat!r} was not produced") from None
                except OSError as e:
                    if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    raise UserError(f"output {pat!r}: {'/'.join(parts[: i + 1])} is a symlink or not a "
                                    "directory; qwex never follows one") from None
                if fd != self.work_fd:
                    os.close(fd)
                fd = nxt
        except BaseException:
            if fd != self.work_fd:
                os.close(fd)
            raise
        return fd, parts[-1]

    def close(self) -> None:
        """Close every descriptor and leave the run dir as it is (a detached job runs in
        it; :meth:`reopen` opens it again)."""
        for fd in [*self.logs.values(), self.work_fd, self.fd]:
            if fd >= 0:
                os.close(fd)
        self.logs, self.work_fd, self.fd = {}, -1, -1

    def remove(self) -> None:
        """Delete the run dir and the ingest dir, through descriptors; close everything.
        Best effort (what a job made undeletable is left for ``qwex gc``)."""
        for fd in [*self.logs.values(), self.work_fd]:
            if fd >= 0:
                os.close(fd)
        self.logs, self.work_fd = {}, -1
        if self._ingest is not None:
            os.close(self._ingest_fd)
            shutil.rmtree(self._ingest, ignore_errors=True)  # made by qwex after the job ended
            self._ingest = None
        if self.fd < 0:
            return
        try:
            for name in os.listdir(self.fd):
                with contextlib.suppress(OSError):
                    if stat.S_ISDIR(os.stat(name, dir_fd=self.fd, follow_symlinks=False).st_mode):
                        shutil.rmtree(name, dir_fd=self.fd, ignore_errors=True)
                    else:
                        os.unlink(name, dir_fd=self.fd)
            mine = os.fstat(self.fd)
            runs = os.open(os.path.dirname(self.path), _DIR)
            try:  # remove the name only if it still is this directory
                there = os.stat(self.run_id, dir_fd=runs, follow_symlinks=False)
                if (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
                    os.rmdir(self.run_id, dir_fd=runs)
            finally:
                os.close(runs)
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = -1


def _walk(dfd: int, rel: str, take: Take) -> None:
    """Call ``take`` for every non-directory below ``dfd``, never following a symlink."""
    with os.scandir(dfd) as it:
        entries = list(it)
    for de in entries:
        p = f"{rel}/{de.name}" if rel else de.name
        st = de.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(de.name, _DIR, dir_fd=dfd)
            try:
                _walk(sub, p, take)
            finally:
                os.close(sub)
        else:
            take(p, de.name, dfd, st)


def _copy_fd(src: int, name: str, dfd: int, mode: int) -> None:
    """Copy everything readable from ``src`` (from offset 0) to a new file ``name`` in ``dfd``."""
    out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
    try:
        offset = 0
        while chunk := os.pread(src, 1 << 20, offset):
            offset += len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]
    finally:
        os.close(out)


def _copy_entry(parent: int, name: str, st: os.stat_result, staged: str, dfd: int) -> None:
    """Copy a file or symlink across filesystems, without following a link."""
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(name, dir_fd=parent), staged, dir_fd=dfd)
        return
    src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        _copy_fd(src, staged, dfd, stat.S_IMODE(st.st_mode) | 0o600)
    finally:
        os.close(src)

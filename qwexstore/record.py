"""Recording a finished run (spec/store.md, "Write order", steps 5-9): ingest the
outputs, write logs, the run record, the signature and the realisation, then the index.

:class:`Run` is carried between the phases of a build (qwexstore/build.py prepares and
executes it; :func:`record` records it). Errors are split by whose they are: the job's
(an output missing, unreadable or not allowed) fail the run, which is recorded; the
store's (a StoreError, or an OSError writing it) keep the finished run's outputs and logs
under :func:`kept_dir` and fail the build with one line naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import posixpath
import shutil
import socket
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .cache import LISTING, BuildResult
from .coordinator import Hold
from .digest import hash_file
from .driver import Driver, RunOutcome
from .errors import BuildCancelled, BuildFailed, LeaseLost, StoreError, UserError
from .index import Index, IndexedRealisation, RunSummary
from .liveroots import GcLock
from .manifest import Entry, FileEntry, Manifest, SymlinkEntry
from .plan import Plan
from .records import Realisation, RunRecord, RunStatus
from .rundir import RunDir
from .store import Store
from .tree import Progress, Scanned, hash_entries

if TYPE_CHECKING:
    from .keys import SecretKey

__all__ = [
    "Run", "indexed_of", "kept_dir", "oserror", "publish_outputs", "record", "result_of", "scan_outputs",
]


def kept_dir(scratch: str, run_id: str) -> str:
    """Where a finished run's outputs and logs are kept when the store failed while
    recording it: ``<scratch>/kept/<run-id>/`` (``outputs/`` at their work-dir paths,
    ``stdout``, ``stderr``). ``qwex gc`` leaves ``kept/`` alone."""
    return os.path.join(scratch, "kept", run_id)


def _discard_work(rd: RunDir) -> None:
    """Delete what is left in the work dir once the outputs have been moved out, through
    its descriptor (never following a link). The staged inputs are copies: deleting them
    before the ingest's ``syncfs`` spares writing them back to disk (measured per GiB
    staged: ~0.4 s of sync and ~0.3 s of unlink; benchmarks/README.md). Best effort: the
    run dir is removed afterwards anyway."""
    fd = rd.work_fd
    for name in os.listdir(fd):
        with contextlib.suppress(OSError):
            if stat.S_ISDIR(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                shutil.rmtree(name, dir_fd=fd, ignore_errors=True)
            else:
                os.unlink(name, dir_fd=fd)


class _Outputs:
    """A finished run's outputs, scanned and hashed (:func:`scan_outputs`), carried to
    :func:`publish_outputs` and, if the store fails, to :func:`_keep`."""

    def __init__(self, scanned: list[Scanned], entries: list[Entry]) -> None:
        self.scanned = scanned
        self.entries = entries
        self.manifest = Manifest.of(entries)


async def scan_outputs(rd: RunDir, patterns: list[str], progress: Progress | None, *,
                       copy: bool = False) -> _Outputs:
    """Move the outputs out of the work dir (through its descriptor: spec/runs.md, "Run
    directory") and hash them. Errors here are the job's (an output missing, unreadable or
    not allowed), except a full disk. Scanning and hashing run in a worker thread, so other
    derivations of a parallel build keep streaming their logs meanwhile.

    ``copy``: replace every output file by a copy before hashing, for a job whose
    processes qwex cannot prove have all ended (a scheduler's job, or a job script on an
    execution host): a process left behind may still hold the original open, and the
    store must never share an inode it can write (spec/drivers.md, "Ingest")."""
    scanned = await asyncio.to_thread(rd.collect, patterns)
    if copy:
        await asyncio.to_thread(_fresh_copies, scanned)
    await asyncio.to_thread(_discard_work, rd)
    entries: list[Entry] = await asyncio.to_thread(hash_entries, scanned, None, progress)
    return _Outputs(scanned, entries)


def _fresh_copies(scanned: list[Scanned]) -> None:
    """Replace each regular file (in the ingest dir, which no job knows) by a copy: a new
    inode no process of the job has open."""
    for s in scanned:
        if not stat.S_ISREG(s.st.st_mode):
            continue
        tmp = f"{s.abspath}.qwex-copy"
        shutil.copyfile(s.abspath, tmp, follow_symlinks=False)
        os.chmod(tmp, stat.S_IMODE(s.st.st_mode) & 0o777)
        os.replace(tmp, s.abspath)
        s.st = os.lstat(s.abspath)


async def publish_outputs(store: Store, out: _Outputs) -> None:
    """Publish the outputs as blobs, durable before the manifest is written. Errors here
    are the store's. Files are moved (hard-linked) into a local store; a remote store gets
    copies, so the files stay until the run dir is removed after a success."""
    await store.storage.sync()  # the job's bytes are durable before they get final names
    local = store.local_root is not None
    for s, e in zip(out.scanned, out.entries, strict=True):
        if isinstance(e, FileEntry):
            # A file with other hard links (the job linked someone's file) may change
            # later through them: copy it instead of moving.
            consume = local and s.st.st_nlink == 1
            await store.storage.put_file(store.blob_path(e.digest), s.abspath, consume=consume)
    await store.storage.sync()
    await store.put_manifest(out.manifest)


def _keep(run: Run, out: _Outputs | None, err: BaseException) -> StoreError:
    """The store failed while recording a finished run: move its outputs (at their
    work-dir paths) and logs to :func:`kept_dir`, and return the one-line StoreError that
    says where. Outputs already moved into a local store's blobs are linked back from there
    (the same inode: read-only, and writing through it would corrupt the store)."""
    rd = run.rundir
    dest = kept_dir(rd.scratch, run.run_id)
    why = oserror(err) if isinstance(err, OSError) else str(err)
    try:
        os.makedirs(dest)
        for stream, path in rd.take_logs().items():
            os.rename(path, os.path.join(dest, stream))
        if out is None:  # failed while scanning: keep the work dir as the job left it
            os.rename("work", os.path.join(dest, "work"), src_dir_fd=rd.fd)  # never follows a link
        root = run.store.local_root
        for s, e in zip(out.scanned, out.entries, strict=True) if out is not None else ():
            target = os.path.join(dest, "outputs", s.path)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.lexists(s.abspath):
                os.rename(s.abspath, target)
            elif root is not None and isinstance(e, FileEntry):
                os.link(os.path.join(root, run.store.blob_path(e.digest)), target)
    except OSError as e2:
        return StoreError(f"{run.plan.name}: cannot record run {run.run_id}: {why}; keeping its "
                          f"outputs failed too ({oserror(e2)}); what was kept is in {dest}")
    return StoreError(f"{run.plan.name}: the store failed while recording run {run.run_id}: {why}; "
                      f"its outputs and logs are kept in {dest}")


def result_of(key: str, cached: bool, run_id: str, digest: str, m: Manifest) -> BuildResult:
    files = m.files()
    listing = [(e.path, e.size) for e in files[:LISTING]]
    return BuildResult(key, cached, run_id, digest, len(files), m.total_size(), listing)


def indexed_of(r: BuildResult, created_ns: int) -> IndexedRealisation:
    return IndexedRealisation(r.manifest, r.run_id, created_ns, r.files, r.size, r.listing)


@dataclass
class Run:
    """One execution, carried from phase to phase: prepared (run id, derivation record
    written, run dir made), then staged and executed, then recorded. ``impure`` and
    ``started`` are set when the job starts. ``hold`` is the key's coordinator hold,
    checked before the realisation is written; ``signer`` signs it."""

    store: Store
    index: Index
    plan: Plan
    driver: Driver
    run_id: str
    drv_hash: str
    rd: RunDir | None
    progress: Progress | None
    environ: dict[str, str]
    on_log: Callable[[str, bytes], None]
    hold: Hold
    signer: SecretKey | None = None
    impure: dict[str, str] = field(default_factory=dict)
    started: int = 0
    copy_outputs: bool = False  # ingest copies, not the job's own inodes (scan_outputs)

    @property
    def rundir(self) -> RunDir:
        if self.rd is None:
            raise RuntimeError("the run has no run dir yet")
        return self.rd


async def record(run: Run, record_lock: GcLock, outcome: RunOutcome | None) -> BuildResult:
    """Record an ended job under the shared gc lock (``record_lock``, released by _run):
    outputs, logs, the run record, then (success only) the realisation and the index.
    The run dir is removed whatever happens (a succeeded run's outputs are kept first if
    the store failed, see :func:`_keep`); a write that fails is one StoreError, and the
    store holds no realisation for the run."""
    try:
        return await _record_run(run, record_lock, outcome)
    except OSError as e:
        raise StoreError(f"{run.plan.name}: cannot record run {run.run_id}: {oserror(e)}") from None
    finally:
        run.rundir.remove()


def _warn_links_out(run: Run, manifest: Manifest) -> None:
    """Say, live and in the run's stderr log, which output symlinks lead outside the
    outputs (absolute, up out of the work dir, or to a work-dir path that is not an
    output): the store keeps the link, not what it points to, so a checkout or a
    downstream stage gets a link that may dangle (spec/runs.md O3). qwex never follows a
    link the job made, so it cannot store the target instead."""
    inside = {e.path for e in manifest.entries}
    inside |= {p.rsplit("/", i)[0] for p in list(inside) for i in range(1, p.count("/") + 1)}
    for e in manifest.entries:
        if not isinstance(e, SymlinkEntry):
            continue
        to = posixpath.normpath(posixpath.join(posixpath.dirname(e.path), e.target))
        if e.target.startswith("/") or to not in inside:
            line = (f"qwex: warning: output {e.path} is a symlink to {e.target!r}, outside the "
                    "outputs: only the link is stored; write the file itself into the outputs\n")
            data = line.encode("utf-8", "backslashreplace")
            with contextlib.suppress(OSError):
                run.rundir.write_log("stderr", data)
            run.on_log("stderr", data)


def oserror(e: OSError) -> str:
    return f"{e.strerror or e}" + (f" ({e.filename})" if e.filename else "")


async def _record_run(run: Run, record_lock: GcLock, outcome: RunOutcome | None) -> BuildResult:
    await record_lock.acquire()
    # Decide the run's status; on success scan and hash the outputs. The job's errors
    # (an output missing, unreadable or not allowed) fail the run.
    status: RunStatus = "cancelled" if outcome is None else outcome.status
    message = "" if outcome is None else outcome.message
    out: _Outputs | None = None
    if outcome is not None and outcome.status == "succeeded":
        try:
            out = await scan_outputs(run.rundir, run.plan.derivation.outputs, run.progress,
                                     copy=run.copy_outputs)
            _warn_links_out(run, out.manifest)
        except (ValueError, UserError) as e:
            status, message = "failed", str(e)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):  # the disk's fault, not the job's
                raise _keep(run, None, e) from None
            status, message = "failed", f"cannot read its outputs: {oserror(e)}"
    message = message.encode("utf-8", "backslashreplace").decode()  # names may not be UTF-8
    # From here on every error is the store's: a finished run's outputs are kept.
    try:
        return await _write_records(run, out, status, message, outcome)
    except LeaseLost:
        raise  # another builder owns the key now; it records its own result
    except (StoreError, OSError) as e:
        if out is None:
            raise
        raise _keep(run, out, e) from None


async def _write_records(
    run: Run, out: _Outputs | None, status: RunStatus, message: str, outcome: RunOutcome | None
) -> BuildResult:
    """Publish the outputs, then logs, the run record, (success only) the signature and
    the realisation, then the index entries."""
    store, index, plan, rd = run.store, run.index, run.plan, run.rundir
    run_id, drv_hash = run.run_id, run.drv_hash
    key = plan.key
    manifest = None if out is None else out.manifest
    if out is not None:
        await publish_outputs(store, out)

    # Logs, then the run record, then (success only) the realisation, then the index.
    logs = {}
    for stream, path in rd.take_logs().items():
        logs[stream] = hash_file(path)
        await store.storage.put_file(store.blob_path(logs[stream]), path, consume=True)
    await store.storage.sync()
    record = RunRecord(
        run_id=run_id,
        key=key,
        drv=drv_hash,
        name=plan.name,
        status=status,
        exit_code=None if outcome is None else outcome.exit_code,
        started_ns=run.started if outcome is None else outcome.started_ns,
        finished_ns=time.time_ns() if outcome is None else outcome.finished_ns,
        host=socket.gethostname(),
        user=run.environ.get("USER", str(os.getuid())),
        driver=run.driver.name,
        stdout=logs["stdout"],
        stderr=logs["stderr"],
        manifest=None if manifest is None else manifest.digest(),
        impure=run.impure,
        message=message,
    )
    await store.put_run(record)
    result: BuildResult | None = None
    created = time.time_ns()
    if manifest is not None:
        await store.storage.sync()
        real = Realisation(key=key, manifest=manifest.digest(), run_id=run_id, created_ns=created)
        if run.signer is not None:
            from .signing import sign_realisation

            await sign_realisation(store, real, run.signer)
        await run.hold.check()  # fencing: no realisation once another builder owns the key
        await store.put_realisation(real)
        await store.storage.sync()
        result = result_of(key, False, run_id, manifest.digest(), manifest)
    with index.writer() as w:
        w.run(run_id, RunSummary(
            key, plan.name, status, record.exit_code, record.started_ns, record.finished_ns
        ))
        w.derivation(drv_hash, plan.name)
        if result is not None:
            w.realisation(key, indexed_of(result, created))
    if outcome is None:
        raise BuildCancelled(run_id)
    if result is None:
        shown = message or f"command exited with status {outcome.exit_code}"
        raise BuildFailed(
            f"{plan.name}: {shown} (run {run_id}; see `qwex log {run_id}`)", outcome.exit_code, run_id
        )
    return result

"""Build: look a planned derivation up, and realize it on a miss (spec/store.md, "Build").

The sequence on a miss, under the key's lock, is the store's write order:

1. source snapshot (bundle blob, then snapshot record), input blobs and manifests;
2. the derivation record; the work dir (selected source, staged inputs, output dirs);
3. the driver runs the command, streaming logs;
4. outputs are ingested (moved, not copied, into blobs) and made durable; then the output
   manifest, log blobs and the run record; then durable; then the realisation; then the
   index entries in one transaction.

A failed or cancelled run writes its logs and run record but never a realisation, so
failures are never cached. A kill at any point leaves only orphans in ``tmp/`` (work dirs,
temp files), which ``qwex gc`` removes; nothing partial is ever visible under a final name.

Against gc (spec/gc.md, "Running builds"): step 1 through the derivation record, and step
4, each run under the shared gc lock; before the first phase releases it, the build holds
a live-roots file naming its derivation record (whose closure is its snapshot and inputs)
and, by its run id, its work dir. The command itself runs with no gc lock held.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import os
import posixpath
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import msgspec

from .cache import LISTING, BuildResult, lookup
from .config import qwex_home
from .derivation import BlobInput, TreeInput
from .digest import hash_file
from .driver import Driver, RunOutcome, RunPlan, driver_for, load_driver
from .errors import BuildCancelled, BuildFailed, DriverError, StoreError, UserError
from .index import Index, IndexedRealisation, RunSummary
from .liveroots import GcLock, LiveRoot, LiveRootFile
from .locks import KeyLock
from .manifest import Entry, FileEntry, Manifest, SymlinkEntry
from .plan import Plan
from .records import Realisation, RunRecord, RunStatus
from .rundir import RunDir
from .snapshot import take_snapshot
from .store import Store
from .tree import Progress, hash_entries, materialize

__all__ = ["base_env", "new_run_id", "realize", "scratch_dir"]


def new_run_id() -> str:
    """A run id that sorts by start time: ``YYYYmmddTHHMMSSffffffZ-<4 hex>`` (UTC)."""
    now = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 1_000_000_000))
    return f"{stamp}{(now // 1000) % 1_000_000:06d}Z-{secrets.token_hex(2)}"


def scratch_dir(store: Store) -> str:
    """Where temp files and work dirs go: inside a local store (so ingest is a rename),
    otherwise under ``$QWEX_HOME/tmp``."""
    root = store.local_root
    return os.path.join(root, "tmp") if root else os.path.join(qwex_home(), "tmp")


def base_env(
    plan: Plan, run_id: str, key: str, rundir: str, environ: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """The job's complete environment, and its impure part (spec/runs.md, "Environment").

    Base: PATH (inherited; impure unless an image pins the environment), HOME and TMPDIR
    in the run dir ``rundir`` (beside the work dir, never in it), LANG=C.UTF-8; then the
    hashed ``vars``; then the ``pass`` names present in ``environ``; then QWEX_RUN_ID,
    QWEX_RUN_DIR (the work dir) and QWEX_KEY.
    """
    path = environ.get("PATH", os.defpath)
    workdir = os.path.join(rundir, "work")
    env = {
        "PATH": path,
        "HOME": os.path.join(rundir, "home"),
        "TMPDIR": os.path.join(rundir, "tmp"),
        "LANG": "C.UTF-8",
    }
    env.update(plan.derivation.env.vars)
    env.update({n: environ[n] for n in plan.drvfile.env.pass_ if n in environ})
    env.update({"QWEX_RUN_ID": run_id, "QWEX_RUN_DIR": workdir, "QWEX_KEY": key})
    impure = {} if plan.derivation.env.image else {"PATH": path}
    return env, impure


async def _store_inputs(store: Store, plan: Plan, scratch: str) -> None:
    """Copy ``file:`` inputs into the store (never linked: the user may edit them).

    A file not yet in the store is copied into ``scratch`` and the *copy* is hashed: only
    bytes that hash to the planned digest are published, so an edit made since planning
    (even during the copy) is refused instead of being stored under that digest.
    """
    files: list[tuple[str, str]] = []
    for fi in plan.file_inputs:
        if isinstance(fi.input, BlobInput):
            files.append((fi.input.digest, fi.path))
        elif fi.manifest is not None:
            files.extend((e.digest, os.path.join(fi.path, e.path)) for e in fi.manifest.files())
    present = await store.storage.exists([store.blob_path(d) for d, _ in files])
    for (digest, path), there in zip(files, present, strict=True):
        if there:
            continue
        copy = os.path.join(scratch, f"input-{secrets.token_hex(8)}")
        try:
            shutil.copyfile(path, copy)
            shutil.copymode(path, copy)  # the executable bit goes with the blob
            if hash_file(copy) != digest:
                raise UserError(f"input {path} changed while qwex was building; build again")
            await store.storage.put_file(store.blob_path(digest), copy, consume=True)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(copy)
    if plan.file_inputs:
        await store.storage.sync()
        for fi in plan.file_inputs:
            if fi.manifest is not None:
                await store.put_manifest(fi.manifest)


async def _check_tree_inputs(store: Store, index: Index, plan: Plan) -> None:
    """Refuse a tree input whose manifest is gone: an upstream resolved from the index
    before the gc lock was taken may have been dropped by ``qwex gc`` since (spec/gc.md),
    possibly by another machine. The upstream's stale index entry is dropped, so the next
    build finds it unrealised and builds it."""
    trees = {dest: inp.manifest for dest, inp in plan.derivation.inputs.items() if isinstance(inp, TreeInput)}
    there = await store.storage.exists([store.manifest_path(m) for m in trees.values()])
    for (dest, digest), ok in zip(trees.items(), there, strict=True):
        if not ok:
            up = plan.upstreams.get(dest)
            if up is not None and up.derivation.is_resolved():
                hit = index.realisation(up.key)
                if hit is not None and hit.manifest == digest:
                    with index.writer() as w:
                        w.delete_realisation(up.key)
            raise StoreError(f"{plan.drv_path}: input {dest!r}: manifest {digest} is no longer in the store "
                             "(removed by qwex gc?); build again")


async def _stage(store: Store, plan: Plan, workdir: str) -> None:
    """Fill the work dir: selected source, inputs, output dirs.

    Inputs are verified copies of their blobs, never links (spec/runs.md, "Inputs"): the
    job may damage its own copy, never the store. They are made read-only (0444/0555) as
    a hint that a job should not write them.
    """
    assert plan.repo is not None and plan.commit is not None and plan.tree is not None
    plan.repo.stage(plan.tree, workdir)
    for dest, inp in sorted(plan.derivation.inputs.items()):
        # Every input is a tree under ``dest`` ("." overlays it at its own paths).
        if isinstance(inp, BlobInput):
            m = Manifest([FileEntry(path=dest, size=0, digest=inp.digest, executable=inp.executable)])
        elif isinstance(inp, TreeInput):
            m = (await store.get_manifest(inp.manifest)).rebase(dest)
        else:
            raise AssertionError(f"unresolved input {dest!r} reached the build")
        try:
            await materialize(store, m, workdir, read_only=True)
        except UserError as err:
            raise UserError(f"{plan.drv_path}: input {dest!r} clashes with another file: {err}") from None
    for pat in plan.derivation.outputs:
        if pat.endswith("/") and not glob.has_magic(pat):
            try:
                os.makedirs(os.path.join(workdir, pat), exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise UserError(f"{plan.drv_path}: output {pat!r} is a directory, but a source file "
                                "or an input of that name is in the way") from None


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


async def _ingest(store: Store, rd: RunDir, patterns: list[str], progress: Progress | None) -> Manifest:
    """Move the outputs out of the work dir (through its descriptor: spec/runs.md, "Run
    directory"), hash them and publish them as blobs; durable before the manifest is
    written. Scanning and hashing run in a worker thread, so other derivations of a
    parallel build keep streaming their logs meanwhile."""
    scanned = await asyncio.to_thread(rd.collect, patterns)
    await asyncio.to_thread(_discard_work, rd)
    entries: list[Entry] = await asyncio.to_thread(hash_entries, scanned, None, progress)
    manifest = Manifest.of(entries)
    await store.storage.sync()  # the job's bytes are durable before they get final names
    for s, e in zip(scanned, entries, strict=True):
        if isinstance(e, FileEntry):
            # A file with other hard links (the job linked someone's file) may change
            # later through them: copy it instead of moving.
            consume = s.st.st_nlink == 1
            await store.storage.put_file(store.blob_path(e.digest), s.abspath, consume=consume)
    await store.storage.sync()
    await store.put_manifest(manifest)
    return manifest


async def realize(
    store: Store,
    index: Index,
    plan: Plan,
    *,
    on_log: Callable[[str, bytes], None],
    on_wait: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    driver: Driver | None = None,
    environ: dict[str, str] | None = None,
) -> BuildResult:
    """Build ``plan`` unless its key is realized; one execution per key at a time.

    Raises BuildFailed (command failed; run recorded), BuildCancelled (interrupted; job
    stopped, run recorded), UserError, DriverError.
    """
    key = plan.key
    from .location import realised_in

    hit = lookup(index, key, realised_in(store))
    if hit is not None:
        return hit
    tmp = scratch_dir(store)
    async with KeyLock(tmp, key, on_wait):
        async with GcLock(tmp, exclusive=False):  # gc must not remove what is being indexed
            real = await store.get_realisation(key)
            if real is not None:  # built meanwhile, or the index lags the store
                manifest = await store.get_manifest(real.manifest)
                result = _result(key, True, real.run_id, real.manifest, manifest)
                with index.writer() as w:
                    w.realisation(key, _indexed(result, real.created_ns))
                return result
        drv = driver or load_driver(driver_for(plan.layers))
        return await _run(store, index, plan, drv, tmp, on_log, progress, environ or dict(os.environ))


def _result(key: str, cached: bool, run_id: str, digest: str, m: Manifest) -> BuildResult:
    files = m.files()
    listing = [(e.path, e.size) for e in files[:LISTING]]
    return BuildResult(key, cached, run_id, digest, len(files), m.total_size(), listing)


def _indexed(r: BuildResult, created_ns: int) -> IndexedRealisation:
    return IndexedRealisation(r.manifest, r.run_id, created_ns, r.files, r.size, r.listing)


@contextlib.contextmanager
def _full_disk_is_a_store_error(name: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StoreError(f"{name}: cannot build: {_oserror(e)}") from None


async def _run(
    store: Store,
    index: Index,
    plan: Plan,
    driver: Driver,
    tmp: str,
    on_log: Callable[[str, bytes], None],
    progress: Progress | None,
    environ: dict[str, str],
) -> BuildResult:
    """Prepare, execute and record one run. The caller holds the key's lock.

    A full disk (ENOSPC, EDQUOT) anywhere is one StoreError line; every write before it was
    atomic, so the store holds nothing partial under a final name."""
    with _full_disk_is_a_store_error(plan.name):
        assert plan.repo is not None and plan.commit is not None
        run_id = new_run_id()
        # Prepare phase under the shared gc lock: gc cannot sweep what is written here before
        # the live-roots file names it (and an object found present stays present).
        async with GcLock(tmp, exclusive=False):
            snapshot = await take_snapshot(store, index, plan.repo, plan.commit, tmp)
            await _store_inputs(store, plan, tmp)
            await _check_tree_inputs(store, index, plan)
            await store.storage.sync()  # snapshot and inputs are durable before the records naming them
            drv_hash = await store.put_derivation(plan.record(snapshot))
            live = LiveRootFile.create(tmp, LiveRoot.now(run_id, drv_hash))
        record_lock = GcLock(tmp, exclusive=False)
        try:
            rd = RunDir(tmp, run_id)
            run = _Run(store, index, plan, driver, run_id, drv_hash, rd, progress, environ, on_log)
            return await _execute_and_record(run, record_lock)
        finally:
            record_lock.release()
            live.release()  # after the work dir is gone: gc removes a work dir with no live root


@dataclass
class _Run:
    """One execution, carried from phase to phase: prepared (derivation record written,
    run dir made), then staged and executed, then recorded. ``impure`` and ``started`` are
    set when the job starts."""

    store: Store
    index: Index
    plan: Plan
    driver: Driver
    run_id: str
    drv_hash: str
    rd: RunDir
    progress: Progress | None
    environ: dict[str, str]
    on_log: Callable[[str, bytes], None]
    impure: dict[str, str] = field(default_factory=dict)
    started: int = 0


async def _execute_and_record(run: _Run, record_lock: GcLock) -> BuildResult:
    """Stage the work dir, run the job with no gc lock held, then take ``record_lock`` and
    record the outcome."""
    plan, rd = run.plan, run.rd
    try:
        await _stage(run.store, plan, rd.work)
    except BaseException:
        rd.remove()
        raise
    env, run.impure = base_env(plan, run.run_id, plan.key, rd.path, run.environ)
    rp = RunPlan(
        run_id=run.run_id,
        key=plan.key,
        name=plan.name,
        workdir=rd.work,
        argv=plan.derivation.command,
        env=env,
        layers=plan.layers,
        image=plan.derivation.env.image,
    )
    run.started = time.time_ns()
    try:
        outcome = await _execute(run.driver, rp, rd, run.on_log)
    except DriverError:
        rd.remove()  # the backend failed, not the command: no run
        raise
    # The job has ended: record it even if interrupted now (Ctrl-C while outputs are being
    # hashed must not throw a finished run away), then let the interruption proceed.
    recording = asyncio.ensure_future(_record(run, record_lock, outcome))
    try:
        return await asyncio.shield(recording)
    except asyncio.CancelledError:
        return await recording


async def _record(run: _Run, record_lock: GcLock, outcome: RunOutcome | None) -> BuildResult:
    """Record an ended job under the shared gc lock (``record_lock``, released by _run):
    outputs, logs, the run record, then (success only) the realisation and the index.
    The run dir is removed whatever happens; a write that fails (a full disk) is one
    StoreError, and the store holds no realisation for the run."""
    try:
        return await _record_run(run, record_lock, outcome)
    except OSError as e:
        raise StoreError(f"{run.plan.name}: cannot record run {run.run_id}: {_oserror(e)}") from None
    finally:
        run.rd.remove()


def _warn_links_out(run: _Run, manifest: Manifest) -> None:
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
                run.rd.write_log("stderr", data)
            run.on_log("stderr", data)


def _oserror(e: OSError) -> str:
    return f"{e.strerror or e}" + (f" ({e.filename})" if e.filename else "")


async def _record_run(run: _Run, record_lock: GcLock, outcome: RunOutcome | None) -> BuildResult:
    store, index, plan, rd = run.store, run.index, run.plan, run.rd
    run_id, drv_hash = run.run_id, run.drv_hash
    key = plan.key
    await record_lock.acquire()
    # Decide the run's status; on success ingest the outputs (blobs, then the manifest).
    status: RunStatus = "cancelled" if outcome is None else outcome.status
    message = "" if outcome is None else outcome.message
    manifest: Manifest | None = None
    if outcome is not None and outcome.status == "succeeded":
        try:
            manifest = await _ingest(store, rd, plan.derivation.outputs, run.progress)
            _warn_links_out(run, manifest)
        except (ValueError, UserError) as e:
            status, message = "failed", str(e)
        except OSError as e:  # e.g. an unreadable output, or a full disk
            status, message = "failed", f"cannot store its outputs: {_oserror(e)}"
    message = message.encode("utf-8", "backslashreplace").decode()  # names may not be UTF-8

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
        await store.put_realisation(
            Realisation(key=key, manifest=manifest.digest(), run_id=run_id, created_ns=created)
        )
        await store.storage.sync()
        result = _result(key, False, run_id, manifest.digest(), manifest)
    with index.writer() as w:
        w.run(run_id, RunSummary(
            key, plan.name, status, record.exit_code, record.started_ns, record.finished_ns
        ))
        w.derivation(drv_hash, plan.name)
        if result is not None:
            w.realisation(key, _indexed(result, created))
    if outcome is None:
        raise BuildCancelled(run_id)
    if result is None:
        shown = message or f"command exited with status {outcome.exit_code}"
        raise BuildFailed(
            f"{plan.name}: {shown} (run {run_id}; see `qwex log {run_id}`)", outcome.exit_code, run_id
        )
    return result


async def _execute(
    driver: Driver, rp: RunPlan, rd: RunDir, on_log: Callable[[str, bytes], None]
) -> RunOutcome | None:
    """Run the driver, teeing output to the run dir's logs; None if cancelled.

    A log that cannot be written (a full disk) fails the run, which goes on to its end:
    its output still reaches ``on_log``, and the message names the log and the error."""
    broken: list[str] = []

    def sink(stream: str, chunk: bytes) -> None:
        if not broken:
            try:
                rd.write_log(stream, chunk)
            except OSError as e:
                broken.append(f"cannot write its {stream} log: {_oserror(e)}")
        on_log(stream, chunk)

    try:
        outcome = await driver.run(rp, sink)
    except asyncio.CancelledError:
        return None
    if broken and outcome.status == "succeeded":
        return msgspec.structs.replace(outcome, status="failed", message=broken[0])
    if broken:
        return msgspec.structs.replace(outcome, message=f"{outcome.message}; {broken[0]}")
    return outcome

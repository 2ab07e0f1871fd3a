"""Build: look a planned derivation up, and realize it on a miss (spec/store.md, "Build").

The sequence on a miss, under the key's lock, is the store's write order:

1. source snapshot (bundle blob, then snapshot record), input blobs and manifests;
2. the derivation record; the work dir (selected source, staged inputs, output dirs);
3. the driver runs the command, streaming logs;
4. outputs are ingested (moved, not copied, into blobs) and made durable; then the output
   manifest, log blobs and the run record; then durable; then the realisation; then the
   index entries in one transaction.

A failed or cancelled run writes its logs and run record but never a realisation, so
failures are never cached. A *store* failure while recording a finished run (the store
unreachable, full or refusing) is not the job's: its outputs and logs are kept under
``<scratch>/kept/<run-id>/`` and the StoreError names that directory. A kill at any point
leaves only orphans in ``tmp/`` (work dirs, temp files), which ``qwex gc`` removes; nothing
partial is ever visible under a final name.

Against gc (spec/gc.md, "Running builds"): step 1 through the derivation record, and step
4, each run under the shared gc lock; before the first phase releases it, the build holds
a live-roots file naming its derivation record (whose closure is its snapshot and inputs)
and, by its run id, its work dir. The command itself runs with no gc lock held.

One execution per key: the whole miss runs under a :class:`~qwexstore.coordinator.Hold`
of the key (a ``flock``, or a lease in a shared store), checked (fencing) right before
the realisation is written. With a signing key, the realisation's signature is written
just before it (spec/store.md, "Write order"). Recording (step 4 on) is
:mod:`qwexstore.record`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import glob
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from .cache import BuildResult, lookup
from .config import qwex_home
from .coordinator import Coordinator, FlockCoordinator
from .derivation import BlobInput, Derivation, TreeInput
from .digest import hash_file
from .driver import Driver, RunOutcome, RunPlan, driver_for, load_driver
from .errors import Detached, DriverError, StoreError, UserError
from .index import Index
from .jobrun import JobHooks, attach, execute_job, record_ended, tee, with_broken
from .jobs import JobDriver, delete_handle, handle_for_key, load_handle
from .layers import SshLayer
from .liveroots import GcLock, LiveRoot, LiveRootFile
from .manifest import FileEntry, Manifest
from .plan import Plan
from .record import Run, indexed_of, kept_dir, oserror, result_of
from .rundir import RunDir
from .snapshot import take_snapshot
from .store import Store
from .tree import Progress, materialize

if TYPE_CHECKING:
    from .keys import SecretKey

__all__ = ["base_env", "kept_dir", "new_run_id", "realize", "scratch_dir", "stage_inputs"]


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
    """Fill the work dir: selected source, then :func:`stage_inputs`."""
    if plan.repo is None or plan.commit is None or plan.tree is None:
        raise UserError(f"{plan.drv_path}: no source repository to build from")
    plan.repo.stage(plan.tree, workdir)
    await stage_inputs(store, plan.derivation, workdir, plan.drv_path)


async def stage_inputs(store: Store, derivation: Derivation, workdir: str, where: str) -> None:
    """Stage a resolved derivation's inputs and output dirs into ``workdir`` (its source
    already there); ``where`` prefixes error messages. Shared by the local build and the
    execution side of a remote run (:func:`qwexstore.agent.stage`).

    Inputs are verified copies of their blobs, never links (spec/runs.md, "Inputs"): the
    job may damage its own copy, never the store. They are made read-only (0444/0555) as
    a hint that a job should not write them.
    """
    for dest, inp in sorted(derivation.inputs.items()):
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
            raise UserError(f"{where}: input {dest!r} clashes with another file: {err}") from None
    for pat in derivation.outputs:
        if pat.endswith("/") and not glob.has_magic(pat):
            try:
                os.makedirs(os.path.join(workdir, pat), exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise UserError(f"{where}: output {pat!r} is a directory, but a source file "
                                "or an input of that name is in the way") from None


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
    coordinator: Coordinator | None = None,
    signer: SecretKey | None = None,
    scratch: str | None = None,
    detach: bool = False,
    hooks: JobHooks | None = None,
) -> BuildResult:
    """Build ``plan`` unless its key is realized; one execution per key at a time.

    ``coordinator`` grants the key (default: a ``flock`` in ``scratch``, which defaults to
    :func:`scratch_dir`); ``signer`` signs the realisation written. Raises BuildFailed
    (command failed; run recorded), BuildCancelled (interrupted; job stopped, run
    recorded), UserError, DriverError, StoreError (LeaseLost: another builder took the
    key over; a store failure while recording names where the outputs were kept).
    """
    key = plan.key
    from .location import realised_in

    hit = lookup(index, key, realised_in(store))
    if hit is not None and hit.remote is None:
        return hit
    tmp = scratch or scratch_dir(store)
    coord = coordinator or FlockCoordinator(tmp)
    async with coord.hold(key, on_wait) as hold:
        async with GcLock(tmp, exclusive=False):  # gc must not remove what is being indexed
            real = await store.get_realisation(key)
            if real is not None:  # built meanwhile, or the index lags the store
                delete_handle(tmp, real.run_id)  # a client killed after recording left it
                manifest = await store.get_manifest(real.manifest)
                result = result_of(key, True, real.run_id, real.manifest, manifest)
                with index.writer() as w:
                    w.realisation(key, indexed_of(result, real.created_ns))
                return result
        drv = driver or load_driver(driver_for(plan.layers))
        env = environ or dict(os.environ)
        run = Run(store, index, plan, drv, "", "", None, progress, env, on_log, hold, signer)
        try:
            if isinstance(drv, JobDriver):
                inflight = handle_for_key(tmp, key)
                if inflight is not None:  # a job a dead (or detached) client left running
                    if detach:
                        raise Detached(inflight)  # already submitted: nothing to wait for
                    return await attach(run, tmp, inflight, hooks)
            return await _run(run, tmp, detach=detach, hooks=hooks)
        finally:
            if driver is None and isinstance(drv, JobDriver):
                await drv.close()  # a driver given by the caller is the caller's to close


@contextlib.contextmanager
def _full_disk_is_a_store_error(name: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StoreError(f"{name}: cannot build: {oserror(e)}") from None


async def _run(
    run: Run, tmp: str, *, detach: bool = False, hooks: JobHooks | None = None
) -> BuildResult:
    """Prepare, execute and record one run (``run`` arrives with its run id and work dir
    unset). The caller holds the key.

    A full disk (ENOSPC, EDQUOT) anywhere is one StoreError line; every write before it was
    atomic, so the store holds nothing partial under a final name."""
    store, index, plan = run.store, run.index, run.plan
    with _full_disk_is_a_store_error(plan.name):
        if plan.repo is None or plan.commit is None:
            raise UserError(f"{plan.drv_path}: no source repository to build from")
        run_id = run.run_id = new_run_id()
        # Prepare phase under the shared gc lock: gc cannot sweep what is written here before
        # the live-roots file names it (and an object found present stays present).
        async with GcLock(tmp, exclusive=False):
            snapshot = await take_snapshot(store, index, plan.repo, plan.commit, tmp)
            await _store_inputs(store, plan, tmp)
            await _check_tree_inputs(store, index, plan)
            await store.storage.sync()  # snapshot and inputs are durable before the records naming them
            drv_hash = run.drv_hash = await store.put_derivation(plan.record(snapshot))
            live = LiveRootFile.create(tmp, LiveRoot.now(run_id, drv_hash))
        record_lock = GcLock(tmp, exclusive=False)
        try:
            run.rd = RunDir(tmp, run_id)
            return await _execute_and_record(run, record_lock, tmp, detach, hooks)
        finally:
            record_lock.release()
            live.release()  # after the work dir is gone: gc removes a work dir with no live root


async def _execute_and_record(
    run: Run, record_lock: GcLock, tmp: str, detach: bool, hooks: JobHooks | None
) -> BuildResult:
    """Stage the work dir (unless the execution side stages it: ssh), run the job with no
    gc lock held, then take ``record_lock`` and record the outcome."""
    plan, rd = run.plan, run.rundir
    job = run.driver if isinstance(run.driver, JobDriver) else None
    run.copy_outputs = job is not None  # a scheduler's job may leave processes behind
    try:
        if job is None or not any(isinstance(x, SshLayer) for x in plan.layers):
            await _stage(run.store, plan, rd.work)
    except BaseException:
        rd.remove()
        raise
    env, run.impure = base_env(plan, run.run_id, plan.key, rd.path, run.environ)
    if job is not None and "PATH" not in plan.derivation.env.vars:
        env.pop("PATH")  # the execution host's own (or the container's): spec/drivers.md
        if "PATH" in run.impure:
            run.impure["PATH"] = "(the execution host's PATH)"
    rp = RunPlan(
        run_id=run.run_id,
        key=plan.key,
        name=plan.name,
        workdir=rd.work,
        argv=plan.derivation.command,
        env=env,
        layers=plan.layers,
        image=plan.image_ref,
        drv=run.drv_hash,
        project_root=plan.repo.root if plan.repo is not None else None,
        runner=plan.runner,
        passed=list(plan.drvfile.env.pass_),
    )
    run.started = time.time_ns()
    try:
        if job is not None:
            outcome = await execute_job(run, job, rp, rd, tmp, detach, hooks)
        else:
            outcome = await _execute(run.driver, rp, rd, run.on_log)
    except Detached:
        rd.close()  # the job goes on in it; gc keeps it while the handle exists
        raise
    except DriverError:
        if job is not None and load_handle(tmp, run.run_id) is not None:
            rd.close()  # submitted: the job may run on in it; a rebuild attaches
        else:
            rd.remove()  # the backend failed, not the command: no run
        raise
    return await record_ended(run, record_lock, outcome, tmp, job)


async def _execute(
    driver: Driver, rp: RunPlan, rd: RunDir, on_log: Callable[[str, bytes], None]
) -> RunOutcome | None:
    """Run the driver, teeing output to the run dir's logs; None if cancelled.

    A log that cannot be written (a full disk) fails the run, which goes on to its end:
    its output still reaches ``on_log``, and the message names the log and the error."""
    broken: list[str] = []
    try:
        outcome = await driver.run(rp, tee(rd, on_log, broken))
    except asyncio.CancelledError:
        return None
    return with_broken(outcome, broken)

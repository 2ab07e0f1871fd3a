"""The execution side of a remote run (spec/drivers.md, "Execution side"): stage a work dir
from store objects alone, and ingest the outputs into that store.

A remote host has a qwex store of its own (a plain directory) and no git repository. The
client first copies the *job closure* of the derivation record there
(:func:`push_job_closure`: the record, its source snapshot and bundles, its inputs' manifests
and blobs; only what is missing, decided by one batched ``exists``). On the host,
``qwex agent stage`` (:func:`stage`) writes the work dir exactly as a local build stages it,
and after the job ``qwex agent ingest`` (:func:`ingest`) hashes the outputs with the local
build's own rules and code and stores them as blobs and a manifest; the job script writes
the manifest digest into the marker. Nothing here writes a run record or a realisation:
those stay the client's (spec/store.md, "Write order").

Both functions take the store's shared gc lock (:class:`~qwexstore.liveroots.GcLock`) while
they read or write it, so a ``qwex gc`` of that store never removes an object mid-stage or
an output between its blob and its manifest.
"""

from __future__ import annotations

import errno
import os
import secrets

import msgspec

from .build import scratch_dir, stage_inputs
from .errors import StoreError, UserError
from .globs import Selector
from .liveroots import GcLock
from .record import oserror, publish_outputs, scan_outputs
from .records import DerivationRecord
from .rundir import RunDir
from .snapshot import restore
from .store import Store
from .transfer import copy_closure
from .transfer_plan import plan_job_closure

__all__ = ["JobClosureReport", "ingest", "push_job_closure", "stage"]


class JobClosureReport(msgspec.Struct):
    """What :func:`push_job_closure` did: ``objects``/``bytes`` copied to the destination,
    ``skipped``/``skipped_bytes`` already there, ``paths`` of the copied objects."""

    drv: str
    objects: int
    bytes: int
    skipped: int
    skipped_bytes: int
    paths: list[str] = msgspec.field(default_factory=list)


async def push_job_closure(src: Store, dst: Store, drv_hash: str) -> JobClosureReport:
    """Copy to ``dst`` everything :func:`stage` needs for the derivation record ``drv_hash``
    of ``src``, and nothing ``dst`` already has.

    The closure is planned at ``src`` (:func:`qwexstore.transfer_plan.plan_job_closure`);
    ONE batched ``exists`` at ``dst`` decides what is missing; the push's copier sends it
    in the store's write order, blobs first and the derivation record last, each phase made
    durable before the next, every blob verified by digest and size as it arrives (through
    a temporary name). Idempotent: run again after an interruption, it sends the rest.
    Raises ObjectNotFound, CorruptObject or StoreError naming a damaged object at ``src``
    (nothing of it written at ``dst``), StoreError for a failing ``dst``, UserError for an
    unresolved record.
    """
    closure = await plan_job_closure(src, drv_hash)
    report = await copy_closure(src, dst, closure)
    total = sum(i.size or 0 for i in closure.items.values())
    return JobClosureReport(drv_hash, report.objects, report.bytes, report.skipped,
                            total - report.bytes, report.paths)


async def _record(store: Store, drv_hash: str) -> DerivationRecord:
    record = await store.get_derivation(drv_hash)  # ObjectNotFound, CorruptObject: StoreErrors
    if not record.derivation.is_resolved():
        raise UserError(f"{record.name}: derivation {drv_hash} has unresolved drv: inputs; "
                        "only a resolved derivation runs")
    return record


def _gc_lock(store: Store) -> GcLock:
    scratch = scratch_dir(store)
    os.makedirs(scratch, exist_ok=True)
    return GcLock(scratch, exclusive=False)


async def stage(store: Store, drv_hash: str, workdir: str) -> None:
    """Write the work dir of derivation record ``drv_hash`` into ``workdir`` (absent or an
    empty directory, not a symlink; created with its parents), from ``store`` alone: the
    source files the record's include/exclude selects at its commit (restored from the
    snapshot, by the writer that stages a local build's source), then the inputs as
    read-only verified copies and the output directories (:func:`qwexstore.build.stage_inputs`,
    the local build's own code). The result equals a local build's work dir, file for
    file and mode for mode.

    Raises StoreError (ObjectNotFound, CorruptObject) naming a missing or damaged object,
    UserError for a record without a source, an unresolved record or an unusable
    ``workdir``. A failure may leave a partial ``workdir``: the caller discards it.
    """
    workdir = os.path.abspath(workdir)
    if os.path.islink(workdir):
        raise UserError(f"work dir {workdir} is a symbolic link; qwex never writes through one")
    if os.path.lexists(workdir) and (not os.path.isdir(workdir) or os.listdir(workdir)):
        raise UserError(f"work dir {workdir} exists and is not an empty directory")
    async with _gc_lock(store):
        record = await _record(store, drv_hash)
        source = record.source
        if source is None:
            raise UserError(f"{record.name}: derivation {drv_hash} has no source snapshot to stage")
        await restore(store, source.snapshot, Selector(source.include, source.exclude), workdir)
        await stage_inputs(store, record.derivation, workdir, record.name)


async def ingest(store: Store, drv_hash: str, workdir: str) -> str:
    """Hash and store the outputs of a finished job in ``workdir``; return the manifest digest.

    The derivation's output patterns are collected by the local build's own code
    (:meth:`qwexstore.rundir.RunDir.collect` through :meth:`RunDir.adopt`, then
    :func:`qwexstore.record.scan_outputs` and ``publish_outputs``): ``workdir`` is opened
    once without following a symlink and walked through descriptors, so a symlink the job
    planted is stored as a link, never followed. The outputs are moved out, then replaced
    by copies before hashing: the job script runs this right after the command, when a
    process the job left behind may still hold a file open, and the store must never share
    an inode such a process can write. Blobs are durable before the manifest is written.

    Raises UserError, whose message is the run's failure message (the job script puts it
    into the marker), for an output that is missing, empty, not allowed or unreadable, or a
    ``workdir`` that is a symlink or absent; StoreError for a missing record or a store
    (or disk) that fails.
    """
    async with _gc_lock(store):
        record = await _record(store, drv_hash)
        try:
            rd = RunDir.adopt(os.path.abspath(workdir), scratch_dir(store), f"agent-{secrets.token_hex(6)}")
        except OSError as e:
            why = "is a symbolic link or not a directory" if e.errno in (errno.ELOOP, errno.ENOTDIR) \
                else oserror(e)
            raise UserError(f"work dir {workdir}: {why}") from None
        try:
            try:
                # copies: processes the job left behind may still hold its files open
                out = await scan_outputs(rd, record.derivation.outputs, None, copy=True)
            except ValueError as e:
                raise UserError(str(e)) from None
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):  # the disk's fault, not the job's
                    raise StoreError(f"{record.name}: cannot ingest its outputs: {oserror(e)}") from None
                raise UserError(f"cannot read its outputs: {oserror(e)}") from None
            try:
                await publish_outputs(store, out)
            except OSError as e:
                raise StoreError(f"{record.name}: cannot store its outputs: {oserror(e)}") from None
            return out.manifest.digest()
        finally:
            rd.remove()

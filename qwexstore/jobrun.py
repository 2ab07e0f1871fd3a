"""Running one job through a :class:`~qwexstore.jobs.JobDriver`: submit, persist the
handle, follow, collect; or attach to a job a dead client left running (spec/drivers.md,
"Lifecycle", "Attach").

Called by build.py with the key held, so at most one client follows a job at a time. The
handle file ``<scratch>/jobs/<run-id>`` exists from submission until the run is recorded:
while it exists, ``qwex gc`` keeps the run's derivation closure and run dir, and a build of
the same key attaches instead of submitting again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from .cache import BuildResult
from .driver import RunOutcome, RunPlan
from .errors import Detached, DriverError, StoreError, TransientDriverError, TransientStoreError
from .jobs import LIVE, JobDriver, JobHandle, JobStatus, delete_handle, follow, outcome_of, save_handle
from .liveroots import GcLock, LiveRoot, LiveRootFile
from .record import Run, oserror, record
from .rundir import RunDir
from .store import Store

__all__ = [
    "JobHooks",
    "attach",
    "attach_job",
    "execute_job",
    "forget",
    "record_ended",
    "submit_and_follow",
    "tee",
    "with_broken",
]


@dataclass(frozen=True)
class JobHooks:
    """What a build tells its caller about a job, and asks it: ``submitted(handle)`` once
    the job is submitted or attached to; ``keep_running(handle)`` when the client is
    interrupted while following it: True leaves the job running (as --detach would),
    False or no hook cancels it."""

    submitted: Callable[[JobHandle], None] | None = None
    keep_running: Callable[[JobHandle], bool] | None = None


async def submit_and_follow(
    driver: JobDriver,
    rp: RunPlan,
    store: Store,
    scratch: str,
    sink: Callable[[str, bytes], None],
    *,
    impure: dict[str, str],
    detach: bool,
    hooks: JobHooks | None = None,
) -> tuple[JobHandle, RunOutcome | None]:
    """Submit ``rp`` and follow it to its end; (handle, outcome), outcome None if this
    client was interrupted (the job is then cancelled, and waited for, before returning).
    With ``detach``, raises :class:`Detached` right after the handle is saved."""
    handle = await driver.submit(rp, store)
    handle = msgspec.structs.replace(handle, impure=impure)
    save_handle(scratch, handle)
    hooks = hooks or JobHooks()
    if hooks.submitted is not None:
        hooks.submitted(handle)
    if detach:
        raise Detached(handle)
    return handle, await _follow_or_cancel(driver, handle, sink, hooks.keep_running)


async def attach_job(
    driver: JobDriver, handle: JobHandle, sink: Callable[[str, bytes], None],
    keep_running: Callable[[JobHandle], bool] | None = None,
) -> RunOutcome | None:
    """Follow a job submitted earlier (its logs again from the start); None if interrupted
    (the job is cancelled first, unless ``keep_running`` says otherwise: Detached)."""
    return await _follow_or_cancel(driver, handle, sink, keep_running)


async def _follow_or_cancel(
    driver: JobDriver, handle: JobHandle, sink: Callable[[str, bytes], None],
    keep_running: Callable[[JobHandle], bool] | None = None,
) -> RunOutcome | None:
    try:
        return await follow(driver, handle, sink)
    except asyncio.CancelledError:
        # Ctrl-C or SIGTERM on an attached client: the caller is asked (a terminal: the
        # user); by default the job is stopped. Kept running, it is like --detach.
        ended = await _ended(driver, handle)
        if ended is not None:  # it had finished: record what it did, cancel nothing
            return ended
        if keep_running is not None and keep_running(handle):
            raise Detached(handle) from None
        with contextlib.suppress(Exception):
            await asyncio.shield(_cancel_and_wait(driver, handle))
        return await _ended(driver, handle)  # it may have ended by itself meanwhile


async def _ended(driver: JobDriver, handle: JobHandle) -> RunOutcome | None:
    """The outcome of a job that has written its own marker (waiting, bounded, for the
    scheduler to let it go), or None if it has none (or only a cancel marker)."""
    try:
        marker = await asyncio.shield(driver.marker(handle))
        if marker is None or marker.phase == "cancel":
            return None
        st = await asyncio.shield(_wait_not_live(driver, handle))
    except Exception:  # unreachable now: treated as not ended
        return None
    return outcome_of(marker, st)


async def _wait_not_live(driver: JobDriver, handle: JobHandle, timeout: float = 60.0) -> JobStatus:
    loop = asyncio.get_running_loop()
    deadline, delay = loop.time() + timeout, 0.1
    while True:
        st = (await driver.status([handle])).get(handle.run_id, JobStatus("unknown"))
        if st.state not in LIVE or loop.time() >= deadline:
            return st
        await asyncio.sleep(delay)
        delay = min(1.0, delay * 1.5)


async def _cancel_and_wait(driver: JobDriver, handle: JobHandle, timeout: float = 60.0) -> None:
    """Cancel, then wait (up to ``timeout``) until the scheduler no longer runs the job:
    ``scancel`` returns before the job has stopped, and the run is recorded (its run dir
    removed) only once it has."""
    await driver.cancel(handle)
    await _wait_not_live(driver, handle, timeout)


def tee(rd: RunDir, on_log: Callable[[str, bytes], None], broken: list[str]) -> Callable[[str, bytes], None]:
    """A log sink that writes the run dir's logs and passes chunks on; the first log write
    that fails is noted in ``broken`` (the run then fails, but goes on to its end)."""

    def sink(stream: str, chunk: bytes) -> None:
        if not broken:
            try:
                rd.write_log(stream, chunk)
            except OSError as e:
                broken.append(f"cannot write its {stream} log: {oserror(e)}")
        on_log(stream, chunk)

    return sink


def with_broken(outcome: RunOutcome, broken: list[str]) -> RunOutcome:
    if broken and outcome.status == "succeeded":
        return msgspec.structs.replace(outcome, status="failed", message=broken[0])
    if broken:
        return msgspec.structs.replace(outcome, message=f"{outcome.message}; {broken[0]}")
    return outcome


async def execute_job(
    run: Run, job: JobDriver, rp: RunPlan, rd: RunDir, tmp: str, detach: bool, hooks: JobHooks | None,
) -> RunOutcome | None:
    """Submit through a job driver and follow to the end, then collect the outputs into
    the work dir; None if interrupted (the job was cancelled)."""
    broken: list[str] = []
    handle, outcome = await submit_and_follow(
        job, rp, run.store, tmp, tee(rd, run.on_log, broken), impure=run.impure, detach=detach,
        hooks=hooks,
    )  # fmt: skip
    return await _collect(run, job, handle, outcome, rd, tmp, broken)


async def _collect(
    run: Run, job: JobDriver, handle: JobHandle, outcome: RunOutcome | None, rd: RunDir, tmp: str,
    broken: list[str],
) -> RunOutcome | None:
    facts = getattr(job, "facts", None)  # optional: impure facts of the execution host
    if facts is not None and outcome is not None:
        run.impure.update(await facts(handle))
    if outcome is not None and outcome.status == "succeeded":
        try:
            await job.collect(handle, run.store, rd.work)
        except (TransientDriverError, TransientStoreError):
            raise  # the connection lost: the handle stays; building again collects again
        except (DriverError, StoreError) as e:  # for good (damaged, forged): the run failed
            where = f" from {handle.store}" if handle.store else ""
            msg = f"its outputs could not be collected{where}: {e}"
            outcome = RunOutcome("failed", outcome.exit_code, outcome.started_ns, outcome.finished_ns, msg)
    return None if outcome is None else with_broken(outcome, broken)


async def attach(run: Run, tmp: str, handle: JobHandle, hooks: JobHooks | None) -> BuildResult:
    """Follow and record a job submitted by an earlier client (dead, or detached)."""
    job = run.driver
    assert isinstance(job, JobDriver)
    run.run_id, run.drv_hash = handle.run_id, handle.drv
    run.copy_outputs = True
    run.impure, run.started = handle.impure, handle.submitted_ns
    try:
        run.rd = RunDir.reopen(tmp, handle.run_id)
    except FileNotFoundError:
        run.rd = RunDir(tmp, handle.run_id)  # ssh: the local run dir only receives outputs
    rd = run.rd
    with contextlib.suppress(FileNotFoundError):  # the roots file of the dead client
        os.unlink(os.path.join(tmp, "roots", handle.run_id))
    live = LiveRootFile.create(tmp, LiveRoot.now(handle.run_id, handle.drv))
    record_lock = GcLock(tmp, exclusive=False)
    try:
        hooks = hooks or JobHooks()
        if hooks.submitted is not None:
            hooks.submitted(handle)
        broken: list[str] = []
        outcome = await attach_job(job, handle, tee(rd, run.on_log, broken), hooks.keep_running)
        outcome = await _collect(run, job, handle, outcome, rd, tmp, broken)
        return await record_ended(run, record_lock, outcome, tmp, job)
    finally:
        record_lock.release()
        live.release()


async def record_ended(
    run: Run, record_lock: GcLock, outcome: RunOutcome | None, tmp: str, job: JobDriver | None
) -> BuildResult:
    """Record an ended job even if interrupted now (Ctrl-C while outputs are being hashed
    must not throw a finished run away), then let the interruption proceed; for a job
    driver's run, only then forget its handle."""
    recording = asyncio.ensure_future(record(run, record_lock, outcome))
    try:
        return await asyncio.shield(recording)
    except asyncio.CancelledError:
        return await recording
    finally:
        if job is not None and recording.done():
            await forget(tmp, run.run_id, job)  # recorded (or the store refused it)


async def forget(scratch: str, run_id: str, job: JobDriver) -> None:
    """The run is recorded: the handle goes (only now: a client killed before this leaves
    the handle, and a rebuild attaches, finds the job ended, and records it), then the
    driver's optional ``cleanup(handle)`` removes the job dir on the execution host (best
    effort)."""
    from .jobs import load_handle

    try:
        handle = load_handle(scratch, run_id)
    except StoreError:  # unreadable: nothing to clean up with it
        handle = None
    delete_handle(scratch, run_id)
    cleanup = getattr(job, "cleanup", None)
    if handle is not None and cleanup is not None:
        with contextlib.suppress(Exception):
            await cleanup(handle)

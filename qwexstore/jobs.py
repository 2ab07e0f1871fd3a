"""Jobs that outlive the client (spec/drivers.md, "Lifecycle").

A driver that runs a job somewhere else (a layer stack: ssh, SLURM, containers) splits
:meth:`Driver.run` into steps, so that a client can die and another one pick the job up:

    submit ──▶ JobHandle (persisted) ──▶ status / logs, polled ──▶ marker ──▶ collect ──▶ record
                                    └──▶ cancel

- :class:`JobHandle` says where the job is; it is written to ``<scratch>/jobs/<run-id>``
  right after submission and removed once the run is recorded. While it exists, a build
  of the same key attaches to the job instead of submitting another (build.py).
- :class:`JobStatus` is the scheduler's view: a *hint* (a scheduler forgets jobs, a
  process table cannot tell a finished job from a crashed one).
- :class:`Marker` is the truth: written last by the job script on the execution side
  (temp file, then rename), with the command's exit status and times.

:func:`follow` is the one polling loop every job driver shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import msgspec

from .driver import LogSink, RunOutcome, RunPlan
from .errors import StoreError, TransientDriverError
from .layers import Layer

__all__ = [
    "JobDriver",
    "JobHandle",
    "JobState",
    "JobStatus",
    "Marker",
    "delete_handle",
    "follow",
    "handle_for_key",
    "list_handles",
    "load_handle",
    "outcome_of",
    "run_to_end",
    "save_handle",
]

JobState = Literal["pending", "running", "succeeded", "failed", "cancelled", "unknown"]
#: States in which the job may still be running (or about to).
LIVE: tuple[JobState, ...] = ("pending", "running")


class JobStatus(msgspec.Struct, frozen=True):
    """The scheduler's view of a job (a hint). ``reason`` is the scheduler's own word for
    a failure or a wait ("TIMEOUT", "Resources"), empty if it gave none."""

    state: JobState
    reason: str = ""


class Marker(
    msgspec.Struct, frozen=True, tag="qwex.marker/1", tag_field="format", forbid_unknown_fields=True
):
    """Written last by the job script (``JOB/marker.json``).

    ``exit`` is the shell's ``$?`` for the phase that ended the job (128+N when the
    command was killed by signal N). ``phase`` is where it ended: ``stage`` (the
    execution side could not prepare the work dir), ``run`` (the command ran), or
    ``ingest`` (the command succeeded but its outputs could not be stored there), or
    ``cancel`` (written by ``qwex cancel`` when the job had no marker yet: the run is
    recorded as cancelled).
    ``manifest`` is the output manifest's digest when the execution side ingested."""

    exit: int
    started_ns: int
    finished_ns: int
    phase: Literal["stage", "run", "ingest", "cancel"] = "run"
    manifest: str | None = None


class JobHandle(msgspec.Struct, tag="qwex.job/1", tag_field="format", forbid_unknown_fields=True):
    """Where a submitted job is. ``layers`` is the effective stack (the driver is rebuilt
    from it on attach); ``job_dir`` is the execution side's absolute path; ``scheduler_id``
    is the process group id (no scheduler) or the SLURM job id; ``host`` the ssh target
    as configured, empty for this machine. ``started_ns`` is when the client submitted."""

    run_id: str
    key: str
    name: str
    drv: str
    runner: str | None
    driver: str
    layers: list[Layer]
    job_dir: str
    scheduler_id: str
    host: str
    submitted_ns: int
    impure: dict[str, str] = msgspec.field(default_factory=dict)
    store: str = ""  # the execution side's store, when it has one (ssh)
    sent_objects: int = 0  # what submission sent to that store (only what it lacked)
    sent_bytes: int = 0


@runtime_checkable
class JobDriver(Protocol):
    """A driver whose jobs outlive the client. Also a :class:`~qwexstore.driver.Driver`
    (its ``run`` is submit + :func:`follow` + collect)."""

    name: str

    async def run(self, plan: RunPlan, logs: LogSink) -> RunOutcome: ...

    async def submit(self, plan: RunPlan, store: object) -> JobHandle:
        """Send what the job needs, submit it, return its handle. Raises DriverError."""
        ...

    async def status(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        """One scheduler query for every handle, by run id."""
        ...

    async def marker(self, handle: JobHandle) -> Marker | None:
        """The job's marker, or None while it has none."""
        ...

    async def read_log(self, handle: JobHandle, stream: str, offset: int) -> bytes:
        """The job's ``stream`` log from ``offset`` (up to a chunk), b"" if none yet."""
        ...

    async def cancel(self, handle: JobHandle) -> None:
        """Stop the job (scancel, the process group, the container). Idempotent."""
        ...

    async def collect(self, handle: JobHandle, store: object, workdir: str) -> None:
        """Make the job's outputs available in ``workdir`` on this machine."""
        ...

    async def script(self, plan: RunPlan, *, masked: bool = True) -> str:
        """The exact script submission runs, secrets masked (``--dry-run``)."""
        ...

    async def close(self) -> None: ...


def outcome_of(marker: Marker | None, status: JobStatus) -> RunOutcome | None:
    """A finished job's outcome: the marker's, or, without one, a failure naming what the
    scheduler said (a job killed for its time limit never writes its marker). None for a
    cancelled job (a ``cancel`` marker)."""
    now = time.time_ns()
    if marker is not None and marker.phase == "cancel":
        return None
    if marker is None and status.state == "cancelled":
        return None  # cancelled through the scheduler (scancel) before it could finish
    if marker is None:
        why = status.reason or f"scheduler state {status.state}"
        return RunOutcome("failed", None, now, now, f"the job ended without finishing ({why})")
    if marker.phase == "stage":
        return RunOutcome("failed", None, marker.started_ns, marker.finished_ns,
                          "the execution side could not prepare the work dir (see the stderr log)")
    if marker.phase == "ingest":
        return RunOutcome("failed", marker.exit, marker.started_ns, marker.finished_ns,
                          "the execution side could not store the outputs (see the stderr log)")
    if marker.exit == 0:
        return RunOutcome("succeeded", 0, marker.started_ns, marker.finished_ns)
    msg = f"command exited with status {marker.exit}"
    if marker.exit > 128:
        msg += f" (killed by signal {marker.exit - 128}?)"
    if status.reason:
        msg += f"; scheduler: {status.reason}"
    return RunOutcome("failed", marker.exit, marker.started_ns, marker.finished_ns, msg)


async def follow(driver: JobDriver, handle: JobHandle, logs: LogSink, *,
                 offsets: dict[str, int] | None = None, max_interval: float = 1.0) -> RunOutcome | None:
    """Poll ``handle`` until its job has ended, passing new log bytes to ``logs``.

    The job has ended when it has a marker and the scheduler no longer runs it (so the
    job's last processes are gone before the outputs are read), or when the scheduler
    says it ended and, checked three times (with the job never seen live in between),
    there is still no marker. Polls start at 0.1 s (for the first 3 s, and after any new
    log byte) and back off to ``max_interval`` while nothing happens.
    A TransientDriverError (a lost connection, a controller restarting) is retried, backing
    off to 5 s, until ``QWEX_DRIVER_RETRY_S`` seconds (default 60) pass without one poll
    succeeding; then it propagates and the job stays in flight (its handle is kept).
    Cancellation propagates without cancelling the job (the caller decides).
    None: the job was cancelled."""
    offsets = {"stdout": 0, "stderr": 0} if offsets is None else offsets
    delay, gone = 0.1, 0
    loop = asyncio.get_running_loop()
    brisk_until = loop.time() + 3.0  # short jobs are common: poll every 0.1 s at first
    failing_since: float | None = None
    while True:
        try:
            marker = await driver.marker(handle)
            status = (await driver.status([handle])).get(handle.run_id, JobStatus("unknown"))
            moved = await _drain(driver, handle, logs, offsets)
        except TransientDriverError:
            now = loop.time()
            failing_since = now if failing_since is None else failing_since
            if now - failing_since >= driver_retry_budget():
                raise
            delay = min(5.0, delay * 2)  # from the poll interval (0.1 s at first)
            await asyncio.sleep(delay)
            continue
        failing_since = None
        if status.state in LIVE:
            gone = 0
        else:
            if marker is not None:
                await _drain(driver, handle, logs, offsets)
                return outcome_of(marker, status)
            gone += 1
            if gone >= 3:  # not a race with the marker's rename: the job died without one
                await _drain(driver, handle, logs, offsets)
                return outcome_of(None, status)
        delay = 0.1 if moved or loop.time() < brisk_until else min(max_interval, delay * 1.5)
        await asyncio.sleep(delay)


#: Seconds of failing polls :func:`follow` rides out before giving up (``QWEX_DRIVER_RETRY_S``).
DEFAULT_DRIVER_RETRY_S = 60.0


def driver_retry_budget() -> float:
    """``QWEX_DRIVER_RETRY_S`` as seconds (>= 0), else :data:`DEFAULT_DRIVER_RETRY_S`."""
    from .storage_retry import env_seconds

    return env_seconds("QWEX_DRIVER_RETRY_S", DEFAULT_DRIVER_RETRY_S)


#: At most this many reads per log per poll: a log that never ends (a job that points its
#: log at /dev/zero) cannot keep the loop from seeing the job end.
_READS_PER_POLL = 16


async def _drain(driver: JobDriver, handle: JobHandle, logs: LogSink, offsets: dict[str, int]) -> bool:
    moved = False
    for stream in ("stdout", "stderr"):
        for _ in range(_READS_PER_POLL):
            chunk = await driver.read_log(handle, stream, offsets[stream])
            if not chunk:
                break
            offsets[stream] += len(chunk)
            logs(stream, chunk)
            moved = True
    return moved


async def run_to_end(driver: JobDriver, plan: RunPlan, logs: LogSink) -> RunOutcome:
    """A job driver's ``Driver.run``: submit (with no store: a job on this machine), follow
    to the end; on cancellation cancel the job, then re-raise. The core uses the steps
    instead (build.py), which persist the handle and can attach."""
    handle = await driver.submit(plan, None)
    try:
        out = await follow(driver, handle, logs)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await asyncio.shield(driver.cancel(handle))
        raise
    if out is None:
        now = time.time_ns()
        return RunOutcome("failed", None, now, now, "the job was cancelled")
    return out


# -- handles on disk ------------------------------------------------------------------------


def _dir(scratch: str) -> str:
    return os.path.join(scratch, "jobs")


def save_handle(scratch: str, handle: JobHandle) -> str:
    """Write ``<scratch>/jobs/<run-id>`` atomically (temp, fsync, rename); return its path."""
    d = _dir(scratch)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, handle.run_id)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(msgspec.json.encode(handle))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


#: Parsed handles by path and inode: a handle file is written once (by rename) and only
#: ever deleted, so its inode names its content (a sweep lists 100 handles per node).
_PARSED: dict[str, tuple[int, JobHandle]] = {}


def load_handle(scratch: str, run_id: str) -> JobHandle | None:
    path = os.path.join(_dir(scratch), run_id)
    try:
        with open(path, "rb") as f:
            ino = os.fstat(f.fileno()).st_ino
            hit = _PARSED.get(path)
            if hit is not None and hit[0] == ino:
                return hit[1]
            handle = msgspec.json.decode(f.read(), type=JobHandle)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError) as e:
        raise StoreError(f"job handle {path} is unreadable: {e}") from None
    _PARSED[path] = (ino, handle)
    return handle


def list_handles(scratch: str) -> list[JobHandle]:
    """Every job handle in ``scratch``, oldest first (unreadable ones skipped)."""
    try:
        with os.scandir(_dir(scratch)) as it:
            entries = sorted((e for e in it if ".tmp-" not in e.name), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    out = []
    for e in entries:
        known = _PARSED.get(e.path)
        if known is not None and known[0] == e.inode():  # the same file, parsed before
            out.append(known[1])
            continue
        with contextlib.suppress(StoreError):
            h = load_handle(scratch, e.name)
            if h is not None:
                out.append(h)
    return out


def handle_for_key(scratch: str, key: str) -> JobHandle | None:
    """The in-flight job building ``key``, if any (the newest)."""
    found = [h for h in list_handles(scratch) if h.key == key]
    return found[-1] if found else None


def delete_handle(scratch: str, run_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(_dir(scratch), run_id))

"""A fake job driver, for tests of everything above the drivers (as httpx ships a mock
transport): the lifecycle (:func:`qwexstore.jobs.follow`), attach, detach, cancel, gc.

Like ``httpx.MockTransport`` it takes a handler, called once per submission with the
:class:`~qwexstore.driver.RunPlan`, that returns a :class:`FakeJob` saying what the job
does. Nothing runs: the job advances one step per *poll* (each :meth:`FakeJobDriver.status`
query that names it):

- poll ``n`` (1-based) reports ``states[n-1]`` (the last one again while the gate holds
  the job) and makes the ``n`` first chunks of ``stdout``/``stderr`` readable;
- the job *ends* at the first poll past ``len(states)`` with its gate open: every chunk
  becomes readable, ``outputs`` are written into ``plan.workdir`` (if that directory was
  removed since submission, the job fails with exit 1, as a real one would), the marker is written
  (unless ``marker`` is False: a job the scheduler killed writes none), and after
  ``linger`` more polls still reporting the last live state, the scheduler reports
  ``end_state`` with ``reason``;
- :meth:`~FakeJobDriver.cancel` stops it (no outputs), writing a ``cancel`` marker if it
  had none (as the stack driver does); after ``cancel_delay`` more polls reporting the
  last live state, the scheduler reports ``cancelled``.

Jobs live in a :class:`FakeRegistry`; a second ``FakeJobDriver(registry=first.registry)``
is a second client that sees the same jobs (attach after the first client died). The
registry records every call in ``calls`` (one :class:`Call` each), in order; each driver
also keeps its own. :meth:`FakeRegistry.fail` makes the next call of an operation raise
(a lost connection). Not thread-safe: one event loop at a time (the registry holds no
loop-bound object, so it outlives ``asyncio.run``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from qwexstore.driver import LogSink, RunOutcome, RunPlan
from qwexstore.errors import PermanentDriverError
from qwexstore.jobs import JobDriver, JobHandle, JobState, JobStatus, Marker, run_to_end

__all__ = ["Call", "FakeJob", "FakeJobDriver", "FakeRegistry"]


class Gate(Protocol):
    """Anything with ``is_set()`` (``asyncio.Event``, ``threading.Event``)."""

    def is_set(self) -> bool: ...


@dataclass
class FakeJob:
    """What a fake job does; see the module docstring. ``gate``: an event (the job runs
    until it is set) or a poll count (the job runs at least that many polls). ``end_state``
    defaults to ``succeeded`` for exit 0, else ``failed``. ``read_limit`` caps the bytes one
    log read returns (0: no cap), to exercise log offsets. ``cancel_delay``: polls after a
    cancel that the scheduler still reports the job live (scancel is asynchronous)."""

    stdout: list[bytes] = field(default_factory=list)
    stderr: list[bytes] = field(default_factory=list)
    outputs: dict[str, bytes] = field(default_factory=dict)
    exit: int = 0
    states: list[JobState] = field(default_factory=lambda: ["running"])
    end_state: JobState | None = None
    reason: str = ""
    marker: bool = True
    linger: int = 0
    gate: Gate | int | None = None
    read_limit: int = 0
    cancel_delay: int = 0


class Call(NamedTuple):
    """One driver call: ``op`` is submit, status, marker, read_log, cancel, collect or
    close; ``run_ids`` the jobs it named (a status query names all of its handles);
    ``detail`` what it saw (status: the states reported; read_log: ``stream@offset``;
    marker: ``found`` or ``none``)."""

    op: str
    run_ids: tuple[str, ...]
    detail: str = ""


@dataclass
class _Job:
    plan: RunPlan
    spec: FakeJob
    submitted_ns: int
    polls: int = 0
    ended_at: int | None = None  # the poll at which it ended
    marker: Marker | None = None
    cancelled_at: int | None = None  # the poll count when it was cancelled
    workdir_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the work dir at submission
    died: bytes = b""  # the job's last words on stderr when it could not write its outputs

    def gate_open(self) -> bool:
        g = self.spec.gate
        if g is None:
            return True
        if isinstance(g, int):
            return self.polls >= g
        return g.is_set()

    def poll(self) -> JobStatus:
        self.polls += 1
        n, spec = self.polls, self.spec
        if self.ended_at is None and self.cancelled_at is None and n > len(spec.states) and self.gate_open():
            self._end(n)
        live = JobStatus(spec.states[min(n, len(spec.states)) - 1] if spec.states else "running")
        if self.cancelled_at is not None:
            return live if n <= self.cancelled_at + spec.cancel_delay else JobStatus("cancelled", spec.reason)
        if self.ended_at is None or n < self.ended_at + spec.linger:
            return live
        return JobStatus(spec.end_state or ("succeeded" if spec.exit == 0 else "failed"), spec.reason)

    def _end(self, n: int) -> None:
        self.ended_at = n
        code = self.spec.exit
        try:
            if _identity(self.plan.workdir) != self.workdir_id:
                raise FileNotFoundError(2, "the job's work dir was removed", self.plan.workdir)
            for rel, data in self.spec.outputs.items():
                path = os.path.join(self.plan.workdir, rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(data)
        except OSError as e:  # as a real job whose cwd is gone: it fails, saying why
            self.died = f"fake job: cannot write its outputs: {e}\n".encode()
            code = 1
        if self.spec.marker:
            now = time.time_ns()
            self.marker = Marker(exit=code, started_ns=self.submitted_ns, finished_ns=now)

    def log(self, stream: str) -> bytes:
        chunks = self.spec.stdout if stream == "stdout" else [*self.spec.stderr, self.died]
        shown = len(chunks) if self.ended_at is not None or self.cancelled_at is not None else self.polls
        return b"".join(chunks[:shown])


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class FakeRegistry:
    """The fake jobs, by run id, and every call any driver on this registry made."""

    def __init__(self) -> None:
        self.jobs: dict[str, _Job] = {}
        self.calls: list[Call] = []
        self.faults: dict[str, list[Exception]] = {}

    def fail(self, op: str, error: Exception, times: int = 1) -> None:
        """Make the next ``times`` calls of ``op`` (``status``, ``marker``, ``read_log``,
        ``cancel``, ``collect``, ``submit``) raise ``error`` (e.g. TransientDriverError:
        the connection was lost), after they are recorded."""
        self.faults.setdefault(op, []).extend([error] * times)

    def ops(self, op: str) -> list[Call]:
        """The calls of one kind, in order."""
        return [c for c in self.calls if c.op == op]

    def polls(self, run_id: str) -> int:
        """How many status queries have named ``run_id``."""
        return self.jobs[run_id].polls


class FakeJobDriver:
    """A :class:`~qwexstore.jobs.JobDriver` whose jobs are :class:`FakeJob` scripts; see
    the module docstring. ``handler`` may be None for a client that only attaches (its
    :meth:`submit` then raises PermanentDriverError)."""

    name = "fake"

    def __init__(
        self, handler: Callable[[RunPlan], FakeJob] | None = None, *, registry: FakeRegistry | None = None
    ) -> None:
        self.handler = handler
        self.registry = registry if registry is not None else FakeRegistry()
        self.calls: list[Call] = []

    def _note(self, op: str, run_ids: Sequence[str], detail: str = "") -> None:
        call = Call(op, tuple(run_ids), detail)
        self.calls.append(call)
        self.registry.calls.append(call)
        pending = self.registry.faults.get(op)
        if pending:
            raise pending.pop(0)

    def _job(self, handle: JobHandle) -> _Job:
        job = self.registry.jobs.get(handle.run_id)
        if job is None:
            raise PermanentDriverError(f"fake driver: no job {handle.run_id}")
        return job

    async def submit(self, plan: RunPlan, store: object) -> JobHandle:
        """Call the handler (its exceptions propagate), register the job, return its handle."""
        self._note("submit", [plan.run_id])
        if self.handler is None:
            raise PermanentDriverError("fake driver: this client has no handler and cannot submit")
        spec = self.handler(plan)
        now = time.time_ns()
        self.registry.jobs[plan.run_id] = _Job(plan, spec, now, workdir_id=_identity(plan.workdir))
        return JobHandle(
            run_id=plan.run_id, key=plan.key, name=plan.name, drv=plan.drv, runner=plan.runner,
            driver=self.name, layers=list(plan.layers), job_dir=os.path.dirname(plan.workdir),
            scheduler_id=f"fake-{len(self.registry.jobs)}", host="", submitted_ns=now,
        )  # fmt: skip

    async def status(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        """One poll of every named job (a job this registry does not know: ``unknown``)."""
        pending = self.registry.faults.get("status")
        if pending:  # a failed query reaches no job
            self._note("status", [h.run_id for h in handles], "error")
        out: dict[str, JobStatus] = {}
        for h in handles:
            job = self.registry.jobs.get(h.run_id)
            out[h.run_id] = JobStatus("unknown") if job is None else job.poll()
        self._note("status", [h.run_id for h in handles], " ".join(s.state for s in out.values()))
        return out

    async def marker(self, handle: JobHandle) -> Marker | None:
        job = self.registry.jobs.get(handle.run_id)
        m = None if job is None else job.marker
        self._note("marker", [handle.run_id], "none" if m is None else "found")
        return m

    async def read_log(self, handle: JobHandle, stream: str, offset: int) -> bytes:
        self._note("read_log", [handle.run_id], f"{stream}@{offset}")
        data = self._job(handle).log(stream)[offset:]
        limit = self._job(handle).spec.read_limit
        return data[:limit] if limit else data

    async def cancel(self, handle: JobHandle) -> None:
        """End the job now; a ``cancel`` marker unless it had a marker. Idempotent."""
        self._note("cancel", [handle.run_id])
        job = self._job(handle)
        if job.marker is None:
            now = time.time_ns()
            job.marker = Marker(exit=130, started_ns=job.submitted_ns, finished_ns=now, phase="cancel")
        if job.ended_at is None and job.cancelled_at is None:
            job.cancelled_at = job.polls

    async def collect(self, handle: JobHandle, store: object, workdir: str) -> None:
        """Nothing to fetch: the job wrote its outputs into the work dir."""
        self._note("collect", [handle.run_id])

    async def script(self, plan: RunPlan, *, masked: bool = True) -> str:
        return f"# fake job driver: {plan.name} ({plan.run_id}) would run {plan.argv!r}\n"

    async def run(self, plan: RunPlan, logs: LogSink) -> RunOutcome:
        """Submit and follow; cancelled: cancel the job, then re-raise (jobs.run_to_end)."""
        return await run_to_end(self, plan, logs)

    async def close(self) -> None:
        self._note("close", [])



def _is_a_job_driver(d: FakeJobDriver) -> JobDriver:
    return d  # mypy checks the fake against the protocol here

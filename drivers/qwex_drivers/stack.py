"""The stack driver: ssh, SLURM and container layers, composed (spec/drivers.md).

Registered under the layer kinds ``ssh``, ``slurm``, ``podman`` and ``singularity``: the
core picks it when one of them is outermost. One instance serves one build; it keeps one
transport per execution host (one ssh connection, multiplexed).

Where the files are:

- **this machine** (no ssh layer): the client has staged the work dir (a RunDir); the job
  dir is ``<run dir>/job`` beside it; outputs are already where the core ingests them.
- **ssh**: the remote has a store of its own at ``ROOT/store`` and job dirs under
  ``ROOT/jobs/<run-id>`` (``ROOT`` is the ssh layer's ``root``, default ``~/.qwex``).
  Submission sends the job's closure (derivation record, source snapshot, inputs), only
  what that store lacks; the job script stages from it and ingests the outputs into it
  (``qwex agent``); collecting copies, verified, only the output files back.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import shlex
import time
from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from qwexstore.compose import JobPaths, Stack, compile_job, local_paths, mask_env, split_stack
from qwexstore.driver import LogSink, RunOutcome, RunPlan
from qwexstore.errors import PermanentDriverError
from qwexstore.jobs import JobHandle, JobStatus, Marker, run_to_end
from qwexstore.store import Store

from .sched_none import NoScheduler
from .transport import LocalTransport, Transport

__all__ = ["StackDriver"]


class Scheduler(Protocol):
    kind: str
    template: str

    def parse_submit(self, out: bytes) -> str: ...

    def status_script(self, ids: Sequence[str]) -> str: ...

    def parse_status(self, rc: int, out: bytes, ids: Sequence[str]) -> dict[str, JobStatus]: ...

    def cancel_script(self, ids: Sequence[str]) -> str: ...


def _scheduler(stack: Stack) -> Scheduler:
    if stack.scheduler is None:
        return NoScheduler()
    from .slurm import SlurmScheduler

    s: Scheduler = SlurmScheduler()
    return s


def _placement(stack: Stack) -> dict[str, Any]:
    if stack.scheduler is None:
        return {}
    from .slurm import sbatch_placement

    return {"placement": sbatch_placement(stack.scheduler)}


def _host(stack: Stack) -> str:
    t = stack.transport
    if t is None:
        return ""
    return f"{t.user + '@' if t.user else ''}{t.host}{':' + str(t.port) if t.port else ''}"


class StackDriver:
    """See the module docstring. Not thread-safe; one event loop."""

    name = "stack"

    def __init__(self) -> None:
        self._transports: dict[str, Transport] = {}
        self._waiting: list[JobHandle] = []
        self._batch: asyncio.Future[dict[str, JobStatus]] | None = None
        self.last_push: object = None  # the last job closure sent (ssh): objects and bytes

    # -- pieces ----------------------------------------------------------------------------

    def _transport(self, stack: Stack) -> Transport:
        host = _host(stack)
        t = self._transports.get(host)
        if t is None:
            if stack.transport is None:
                t = LocalTransport()
            else:
                from .transport_ssh import SshTransport

                t = SshTransport.from_layer(stack.transport)
            self._transports[host] = t
        return t

    async def _root(self, stack: Stack) -> str:
        """The execution side's qwex root (ssh): ``root`` made absolute under its home."""
        assert stack.transport is not None
        root = stack.transport.root or stack.transport.workdir or ".qwex"  # workdir: the older name
        if root.startswith("/"):
            return root
        return posixpath.join(await self._transport(stack).home(), root)

    async def _paths(self, plan: RunPlan, stack: Stack) -> JobPaths:
        if stack.transport is None:
            return local_paths(plan.workdir)
        job = posixpath.join(await self._root(stack), "jobs", plan.run_id)
        return JobPaths(job, f"{job}/work", f"{job}/home", f"{job}/tmp")

    async def _compile(self, plan: RunPlan, stack: Stack, *, masked: bool) -> tuple[str, str, JobPaths]:
        paths = await self._paths(plan, stack)
        env = dict(plan.env)
        env.update({"HOME": paths.home, "TMPDIR": paths.tmpdir, "QWEX_RUN_DIR": paths.workdir})
        if masked:
            env = mask_env(env, plan.passed)
        stage = ingest = None
        if stack.transport is not None:
            root = await self._root(stack)
            qwex = shlex.quote(stack.transport.qwex or "qwex")
            args = (f"--store {shlex.quote(root + '/store')} --drv {shlex.quote(plan.drv)} "
                    f"--workdir {shlex.quote(paths.workdir)}")
            stage = f"{qwex} agent stage {args}"
            ingest = f"{qwex} agent ingest {args}"
        compiled = compile_job(
            run_id=plan.run_id, key=plan.key, name=plan.name, argv=plan.argv, env=env, stack=stack,
            paths=paths, project_root=plan.project_root, scheduler_ctx=_placement(stack),
            stage=stage, ingest=ingest, image=plan.image if stack.wrapper is not None else None,
        )  # fmt: skip
        return compiled.submit, compiled.shown, paths

    # -- lifecycle -------------------------------------------------------------------------

    async def script(self, plan: RunPlan, *, masked: bool = True) -> str:
        """The whole script (the ssh transport included), as ``--dry-run`` prints it. For
        ssh this connects once, to learn the remote home."""
        return (await self._compile(plan, split_stack(plan.layers), masked=masked))[1]

    async def submit(self, plan: RunPlan, store: object) -> JobHandle:
        """Send the closure (ssh), run the submission script, return the handle."""
        stack = split_stack(plan.layers)
        t = self._transport(stack)
        remote_store, self.last_push = "", None
        if stack.transport is not None:
            from .transport_ssh import SshTransport

            assert isinstance(t, SshTransport)
            # The resident shell's login (SSH6) overlaps sending the closure and compiling.
            warming = asyncio.ensure_future(t.warm())
            try:
                remote_store = await self._push_closure(plan, stack, store)
                submit, _shown, paths = await self._compile(plan, stack, masked=False)
            except BaseException:
                warming.cancel()
                await asyncio.gather(warming, return_exceptions=True)
                raise
            await warming
        else:
            submit, _shown, paths = await self._compile(plan, stack, masked=False)
        done = await t.run(submit)
        if done.rc != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            raise PermanentDriverError(f"{plan.name}: submission failed (status {done.rc}): "
                                       f"{err[-1] if err else 'no message'}")
        sid = _scheduler(stack).parse_submit(done.stdout)
        return JobHandle(
            run_id=plan.run_id, key=plan.key, name=plan.name, drv=plan.drv, runner=plan.runner,
            driver=self.name, layers=plan.layers, job_dir=paths.job_dir, scheduler_id=sid,
            host=_host(stack), submitted_ns=time.time_ns(), store=remote_store,
            sent_objects=getattr(self.last_push, "objects", 0),
            sent_bytes=getattr(self.last_push, "bytes", 0),
        )  # fmt: skip

    async def _exec_store(self, stack: Stack, *, create: bool) -> Store:
        """The execution side's store (``ROOT/store``), over the transport's own ssh
        connection (one connection per host and build)."""
        from qwexstore.store import open_store_on

        from .transport_ssh import SshTransport

        t = self._transport(stack)
        assert isinstance(t, SshTransport)
        root = f"{await self._root(stack)}/store"
        return await open_store_on(t.sftp_storage(root), f"ssh://{_host(stack)}{root}", create=create)

    async def _push_closure(self, plan: RunPlan, stack: Stack, store: object) -> str:
        """Send what the job needs that the execution store lacks (qwexstore.agent)."""
        from qwexstore.agent import push_job_closure

        if not isinstance(store, Store):
            raise PermanentDriverError("an ssh runner needs the local store to send the job's inputs")
        remote = await self._exec_store(stack, create=True)
        try:
            self.last_push = await push_job_closure(store, remote, plan.drv)
        finally:
            await remote.storage.close()
        return remote.location

    async def status(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        """One scheduler query per host and scheduler for ``handles``; concurrent calls
        (the follow loops of a pipeline's jobs) made within one short window share a
        single query, so a sweep of N jobs costs one squeue per cycle, not N."""
        self._waiting.extend(handles)
        if self._batch is None:
            self._batch = asyncio.ensure_future(self._status_soon())
        batch = self._batch
        result = await asyncio.shield(batch)
        return {h.run_id: result[h.run_id] for h in handles if h.run_id in result}

    async def _status_soon(self) -> dict[str, JobStatus]:
        await asyncio.sleep(0.02)  # let the other follow loops of this cycle join
        handles, self._waiting, self._batch = self._waiting, [], None
        unique = list({h.run_id: h for h in handles}.values())
        return await self._status_now(unique)

    async def _status_now(self, handles: Sequence[JobHandle]) -> dict[str, JobStatus]:
        out: dict[str, JobStatus] = {}
        groups: dict[tuple[str, str], list[JobHandle]] = {}
        for h in handles:
            stack = split_stack(h.layers)
            groups.setdefault((h.host, _scheduler(stack).kind), []).append(h)
        for group in groups.values():
            stack = split_stack(group[0].layers)
            sched = _scheduler(stack)
            ids = [h.scheduler_id for h in group]
            done = await self._transport(stack).run(sched.status_script(ids))
            by_id = sched.parse_status(done.rc, done.stdout, ids)
            out.update({h.run_id: by_id.get(h.scheduler_id, JobStatus("unknown")) for h in group})
        return out

    async def marker(self, handle: JobHandle) -> Marker | None:
        data = await self._transport(split_stack(handle.layers)).read(f"{handle.job_dir}/marker.json")
        if not data:
            return None
        try:
            return msgspec.json.decode(data, type=Marker)
        except msgspec.DecodeError:
            return None  # not a marker qwex wrote: treated as none (the job failed)

    async def facts(self, handle: JobHandle) -> dict[str, str]:
        """Impure facts the job script found on the execution host: ``gpus`` (name and
        driver version per GPU, from nvidia-smi), when it has any."""
        data = await self._transport(split_stack(handle.layers)).read(f"{handle.job_dir}/gpus", 0, 1 << 16)
        text = (data or b"").decode(errors="replace").strip()
        return {"gpus": "; ".join(line.strip() for line in text.splitlines())} if text else {}

    async def read_log(self, handle: JobHandle, stream: str, offset: int) -> bytes:
        data = await self._transport(split_stack(handle.layers)).read(f"{handle.job_dir}/{stream}", offset)
        return data or b""

    async def cancel(self, handle: JobHandle) -> None:
        """Write a ``cancel`` marker unless the job has one (so the run is recorded as
        cancelled, whoever records it), then stop the job: the scheduler's cancel, and the
        container by name."""
        stack = split_stack(handle.layers)
        job = shlex.quote(handle.job_dir)
        now = "$(date +%s%N)"
        script = (f'if [ ! -e {job}/marker.json ]; then printf \'{{"format":"qwex.marker/1","exit":130,'
                  f'"phase":"cancel","started_ns":%s,"finished_ns":%s}}\\n\' "{handle.submitted_ns}" "{now}" '
                  f'>{job}/marker.cancel && mv -n {job}/marker.cancel {job}/marker.json; fi; ')
        script += "(" + _scheduler(stack).cancel_script([handle.scheduler_id]) + ")"
        if stack.wrapper is not None and stack.wrapper.executable.rsplit("/", 1)[-1] in ("podman", "docker"):
            exe = shlex.quote(stack.wrapper.executable)
            script += f"; {exe} rm -f qwex-{handle.run_id} >/dev/null 2>&1; exit 0"
        await self._transport(stack).run(script)

    async def collect(self, handle: JobHandle, store: object, workdir: str) -> None:
        """ssh: copy the outputs the execution side ingested into ``workdir`` (verified);
        this machine: nothing to do."""
        if not handle.store:
            return
        marker = await self.marker(handle)
        if marker is None or marker.manifest is None:
            # job.sh writes a succeeded marker only with the manifest it ingested: this
            # one was written by the job itself
            raise PermanentDriverError(f"{handle.name}: the job's marker names no outputs "
                                       "(not written by the job script)")
        from qwexstore.digest import is_digest
        from qwexstore.tree import materialize

        if not is_digest(marker.manifest):
            raise PermanentDriverError(f"{handle.name}: the job's marker names no valid manifest")
        remote = await self._exec_store(split_stack(handle.layers), create=False)
        try:
            await materialize(remote, await remote.get_manifest(marker.manifest), workdir)
        finally:
            await remote.storage.close()

    async def cleanup(self, handle: JobHandle) -> None:
        """Remove the job dir on an execution host (ssh) once the run is recorded: its
        job.sh holds the job's environment, passed-through secrets included. The outputs
        stay in the execution store. On this machine the job dir is inside the run dir,
        which recording removes."""
        if handle.store:
            await self._transport(split_stack(handle.layers)).run(f"rm -rf {shlex.quote(handle.job_dir)}")

    async def run(self, plan: RunPlan, logs: LogSink) -> RunOutcome:
        """Submit, follow, and (on cancellation) cancel: the whole lifecycle in one call,
        for a job on this machine (an ssh job needs the store: the core uses the steps)."""
        try:
            return await run_to_end(self, plan, logs)
        finally:
            await self.close()

    async def close(self) -> None:
        ts, self._transports = list(self._transports.values()), {}
        for t in ts:
            with contextlib.suppress(Exception):
                await t.close()


async def doctor(layers: list[Any]) -> list[Any]:
    """``qwex doctor``: the checks of :mod:`qwex_drivers.doctor` for a layer stack."""
    from qwexstore import __version__

    from .doctor import run_checks

    d = StackDriver()
    stack = split_stack(layers)
    try:
        root = None
        if stack.transport is not None:
            try:
                root = await d._root(stack)
            except Exception:
                root = None
        return await run_checks(stack, d._transport(stack), __version__, root)
    finally:
        await d.close()

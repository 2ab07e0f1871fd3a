"""Jobs in flight, for :class:`~qwexstore.workspace.Workspace`: list them with their
scheduler state, attach to one, cancel one (spec/drivers.md, "Commands").

A job in flight is a handle in ``<scratch>/jobs/``. Attaching is building its key again:
under the key's hold, :func:`qwexstore.build.realize` finds the handle and follows the job
instead of submitting, then records the run. The plan it needs is rebuilt from the
derivation record the job runs (stored at submission), so no .drv file is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import BuildCancelled, BuildFailed, DriverError, KeyLookupError
from .jobs import JobDriver, JobHandle, JobStatus, list_handles

if TYPE_CHECKING:
    from .cache import BuildResult
    from .plan import Plan
    from .workspace import BuildEvents, Workspace

__all__ = ["attach", "cancel", "find_job", "job_driver", "plan_of", "statuses"]


def job_driver(handle: JobHandle) -> JobDriver:
    """A fresh driver for ``handle``'s layer stack (PermanentDriverError if none)."""
    from .driver import driver_for, load_driver
    from .errors import PermanentDriverError

    drv = load_driver(driver_for(handle.layers))
    if not isinstance(drv, JobDriver):
        raise PermanentDriverError(f"driver {drv.name!r} cannot follow a submitted job")
    return drv


def find_job(ws: Workspace, ref: str) -> JobHandle:
    """The job in flight whose run id or key starts with ``ref`` (KeyLookupError if none or
    several)."""
    bare = ref.removeprefix("blake3:")
    found = [h for h in list_handles(ws.scratch)
             if h.run_id.startswith(ref) or h.key.removeprefix("blake3:").startswith(bare)]
    if not found:
        raise KeyLookupError(ref, f"no job in flight matches {ref!r} (see `qwex runs`)")
    if len(found) > 1:
        ids = tuple(h.run_id for h in found)
        raise KeyLookupError(ref, f"{ref!r} matches {len(found)} jobs in flight: {', '.join(ids[:5])}", ids)
    return found[0]


async def statuses(ws: Workspace, driver: JobDriver | None = None) -> list[tuple[JobHandle, JobStatus]]:
    """Every job in flight with its scheduler state: one query per execution host and
    scheduler. A host that cannot be reached gives ``unknown`` with the error as reason.
    ``driver`` replaces the registered one (tests: a fake)."""
    handles = list_handles(ws.scratch)
    groups: dict[tuple[str, ...], list[JobHandle]] = {}
    for h in handles:
        groups.setdefault((h.host, *(str(type(x).__struct_config__.tag) for x in h.layers)), []).append(h)
    out: dict[str, JobStatus] = {}
    for group in groups.values():
        drv = driver or job_driver(group[0])
        try:
            out.update(await drv.status(group))
        except DriverError as e:
            out.update({h.run_id: JobStatus("unknown", str(e)) for h in group})
        finally:
            if driver is None:
                await drv.close()
    return [(h, out.get(h.run_id, JobStatus("unknown"))) for h in handles]


async def plan_of(ws: Workspace, handle: JobHandle) -> Plan:
    """The plan of a submitted job, from its derivation record (its key is the handle's)."""
    from .drvfile import DrvFile, EnvSpec
    from .plan import Plan

    store = await ws.store()
    rec = await store.get_derivation(handle.drv)
    df = DrvFile(command=rec.derivation.command, name=rec.name, outputs=rec.derivation.outputs,
                 env=EnvSpec(image=rec.image_ref, vars=dict(rec.derivation.env.vars), pass_=rec.pass_env))
    return Plan(
        drv_path=f"run {handle.run_id}", name=rec.name, drvfile=df, repo=None, commit=None, tree=None,
        selector=None, derivation=rec.derivation, image_ref=rec.image_ref, layers=handle.layers,
        file_inputs=[], dirty_snapshot=False,
    )  # fmt: skip


async def attach(
    ws: Workspace, handle: JobHandle, events: BuildEvents, driver: JobDriver | None = None
) -> BuildResult:
    """Follow ``handle``'s job to its end and record it (waits while another client holds
    its key: that one records it, and this returns its result)."""
    from .build import realize

    plan = await plan_of(ws, handle)
    store = await ws.store()
    sink = events.logs(plan)
    try:
        return await realize(
            store, ws.index, plan, on_log=sink, on_wait=lambda owner: events.waiting(plan, owner),
            progress=events.progress, driver=driver, coordinator=ws.coordinator(store),
            signer=ws.signing_key(), scratch=ws.scratch, hooks=events.job_hooks(plan),
        )  # fmt: skip
    finally:
        sink.close()


async def cancel(
    ws: Workspace, handle: JobHandle, events: BuildEvents, driver: JobDriver | None = None
) -> str:
    """Stop ``handle``'s job (scancel, its process group, its container) and record the
    run as cancelled; return the status recorded: ``cancelled``, or, for a job that had
    already ended, what it ended as (``succeeded``, ``failed``)."""
    drv = driver or job_driver(handle)
    try:
        await drv.cancel(handle)
    finally:
        if driver is None:
            await drv.close()
    try:
        await attach(ws, handle, events, driver)
    except BuildCancelled:
        return "cancelled"
    except BuildFailed:
        return "failed"
    return "succeeded"


"""``qwex runs``, ``qwex attach`` and ``qwex cancel``: jobs in flight on runners
(spec/drivers.md, "Commands")."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from ._ctx import emit_json, handles_errors, run_async, workspace
from ._options import Json

Ref = Annotated[str, typer.Argument(help="A run id or key (a unique prefix is enough).")]


def _since(ns: int) -> str:
    s = max(0, (time.time_ns() - ns) // 1_000_000_000)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _where(layers: list[object], host: str) -> str:
    kinds = [str(type(x).__struct_config__.tag) for x in layers]  # type: ignore[attr-defined]
    return " > ".join(kinds) + (f" ({host})" if host else "")


@handles_errors
def runs(json: Json = False) -> None:
    """List jobs in flight: submitted to a runner and not yet recorded.

    One scheduler query per host; the state is the scheduler's view (a hint: the job's
    marker decides the outcome when it is recorded, by `qwex attach` or a build of the
    same key)."""
    from qwexstore.workspace_jobs import statuses

    from ._ctx import location

    if not location().exists():  # no store: nothing was ever submitted from it
        rows = []
    else:
        ws = workspace()
        rows = run_async(lambda: statuses(ws))
    if json:
        emit_json([{"run_id": h.run_id, "key": h.key, "name": h.name, "runner": h.runner,
                    "stack": _where(h.layers, h.host),
                    "job": h.scheduler_id, "state": st.state, "reason": st.reason,
                    "submitted_ns": h.submitted_ns} for h, st in rows])
        return
    if not rows:
        print("no jobs in flight", file=sys.stderr)
        return
    from .table import plain

    head = ("RUN", "NAME", "KEY", "RUNNER", "JOB", "STATE", "SINCE")
    sys.stdout.write(plain(head, [(h.run_id, h.name, h.key.removeprefix("blake3:")[:12],
                                   h.runner or _where(h.layers, h.host),
                                   h.scheduler_id, st.state + (f" ({st.reason})" if st.reason else ""),
                                   _since(h.submitted_ns)) for h, st in rows]))


@handles_errors
def attach(ref: Ref, json: Json = False) -> None:
    """Follow a job in flight: its logs from the start, then record its run like a build.

    Ctrl-C cancels the job (and records it as cancelled); to stop following without
    cancelling, close the terminal's view with `qwex runs` instead of attaching."""
    from qwexstore.workspace_jobs import attach as attach_job
    from qwexstore.workspace_jobs import find_job

    from .build_cmd import _events
    from .build_view import print_result

    ws = workspace()
    handle = find_job(ws, ref)

    async def go() -> object:
        from qwexstore.workspace_jobs import plan_of

        plan = await plan_of(ws, handle)
        try:
            return await attach_job(ws, handle, _events([plan], json))
        finally:
            await ws.disconnect()

    from qwexstore.errors import Detached

    try:
        result = run_async(go)
    except Detached:  # interrupted, and the user chose to leave the job running
        return
    print_result(result, json, None)


@handles_errors
def cancel(ref: Ref, json: Json = False) -> None:
    """Stop a job in flight (scancel, its process group, its container) and record the
    run as cancelled."""
    from qwexstore.workspace import BuildEvents
    from qwexstore.workspace_jobs import cancel as cancel_job
    from qwexstore.workspace_jobs import find_job

    ws = workspace()
    handle = find_job(ws, ref)

    async def go() -> str:
        try:
            return await cancel_job(ws, handle, BuildEvents())
        finally:
            await ws.disconnect()

    status = run_async(go)
    if json:
        emit_json({"run_id": handle.run_id, "key": handle.key, "status": status})
    elif status == "cancelled":
        print(f"qwex: cancelled run {handle.run_id} of {handle.name}", file=sys.stderr)
    else:
        print(f"qwex: run {handle.run_id} of {handle.name} had already ended: recorded as {status}",
              file=sys.stderr)

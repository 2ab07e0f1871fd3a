"""``qwex build --dry-run``: the script each missing node would run, written nowhere and
submitted nowhere (spec/drivers.md, "The compiled script").

Two values are only known at submission and are shown as placeholders: the run id (a
fresh one is shown; the real one is new) and the derivation record's hash (the record
names the source snapshot, which is written at submission). A node whose key depends on
upstreams not built yet is listed without a script. Secrets are masked: the values of
``[env] pass`` variables and of variables whose names look like credentials.
"""

from __future__ import annotations

import os
import shlex
from typing import TYPE_CHECKING

from .build import base_env, new_run_id
from .driver import RunPlan, driver_for, load_driver
from .jobs import JobDriver

if TYPE_CHECKING:
    from .plan import Plan
    from .workspace import Workspace

__all__ = ["DRV_PLACEHOLDER", "dry_run"]

DRV_PLACEHOLDER = "blake3:<derivation record, written at submission>"


async def dry_run(ws: Workspace, plan: Plan) -> list[tuple[Plan, str]]:
    """(node, script) for every node of ``plan``'s graph that is not realised, upstreams
    first. Makes no connection except for an ssh runner's remote home."""
    from .graph import graph_nodes, try_resolve

    out: list[tuple[Plan, str]] = []
    for node in graph_nodes(plan):
        resolved = try_resolve(node, ws.index, ws.realised)
        if resolved is not None and ws.lookup(resolved) is not None:
            continue
        if resolved is None:
            note = "runs once its drv: inputs are built (its key depends on them)"
            out.append((node, f"# {node.name}: {note}\n"))
            continue
        out.append((node, await _script(ws, resolved)))
    return out


async def _script(ws: Workspace, node: Plan) -> str:
    run_id = new_run_id()
    rundir = os.path.join(ws.scratch, "runs", run_id)
    env, _impure = base_env(node, run_id, node.key, rundir, dict(os.environ))
    drv = load_driver(driver_for(node.layers))
    if not isinstance(drv, JobDriver):
        from .compose import mask_env

        shown = mask_env(env, node.drvfile.env.pass_)
        words = " ".join(shlex.quote(f"{k}={v}") for k, v in shown.items())
        return (f"#!/bin/sh\n# {node.name} ({node.key}): the local driver runs it on this machine\n"
                f"cd {shlex.quote(os.path.join(rundir, 'work'))} && exec env -i -- {words} "
                f"{' '.join(shlex.quote(a) for a in node.derivation.command)}\n")
    if "PATH" not in node.derivation.env.vars:
        env.pop("PATH")
    rp = RunPlan(
        run_id=run_id, key=node.key, name=node.name, workdir=os.path.join(rundir, "work"),
        argv=node.derivation.command, env=env, layers=node.layers, image=node.derivation.env.image,
        drv=DRV_PLACEHOLDER, project_root=node.repo.root if node.repo is not None else None,
        passed=list(node.drvfile.env.pass_),
    )  # fmt: skip
    try:
        return await drv.script(rp, masked=True)
    finally:
        await drv.close()

"""``qwex build``, ``qwex run`` and ``qwex hash``."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Annotated

import typer

from qwexstore.cache import BuildResult
from qwexstore.drvfile import DrvFile, validate
from qwexstore.errors import QwexError, UserError
from qwexstore.plan import Plan, plan_file, plan_parsed

if TYPE_CHECKING:
    from qwexstore.graph import NodeReport
    from qwexstore.jobs import JobHandle
    from qwexstore.workspace import BuildEvents, LogSink, Workspace

from ._ctx import (
    emit_json,
    handles_errors,
    location,
    note_remote,
    open_index,
    run_async,
    workspace,
)
from ._options import AllowDirty, AllowUnpinned, Json, Offline, Runner, Substituter
from .build_view import node_json as _node_json
from .build_view import print_result as _print_result

Jobs = Annotated[
    int | None,
    typer.Option("--jobs", "-j", min=1, help="Derivations built at once (default: the number of cores)."),
]
Detach = Annotated[
    bool,
    typer.Option("--detach", help="Return once a runner has the job (print its run id); it runs on. "
                                  "Follow it with `qwex attach`."),
]
DryRun = Annotated[
    bool,
    typer.Option("--dry-run", help="Print the script each missing stage would run; run nothing."),
]
KeepGoing = Annotated[
    bool,
    typer.Option("--keep-going", "-k", help="After a failure, go on building what does not depend on it."),
]


def _default_jobs() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _events(nodes: list[Plan], as_json: bool) -> BuildEvents:
    """How the CLI shows a build: messages on stderr, live logs (prefixed for a graph)."""
    from qwexstore.workspace import BuildEvents

    from .build_view import IngestProgress, PrefixedLogs, RawLogs

    width = max(len(n.name) for n in nodes)

    class Events(BuildEvents):
        progress = IngestProgress()

        def logs(self, node: Plan) -> LogSink:
            return PrefixedLogs(node.name, width, as_json) if len(nodes) > 1 else RawLogs(as_json)

        def building(self, node: Plan) -> None:
            if not as_json:
                print(f"qwex: building {node.name} ({node.key})", file=sys.stderr)

        def substituted(self, node: Plan, result: BuildResult) -> None:
            print(f"qwex: {node.name}: substituted from {result.remote} ({node.key})", file=sys.stderr)

        def fetching(self, key: str, remote: str) -> None:
            print(f"qwex: fetching the outputs of {key} from {remote}", file=sys.stderr)

        def waiting(self, node: Plan, owner: str) -> None:
            print(f"qwex: {node.name}: waiting for {owner}, which is building {node.key}", file=sys.stderr)

        def warning(self, message: str) -> None:
            print(f"qwex: warning: {message}", file=sys.stderr)

        def keep_running(self, node: Plan, handle: JobHandle) -> bool:
            return ask_keep_running(handle)

        def submitted(self, node: Plan, handle: JobHandle) -> None:
            where = handle.host or "this host"
            sent = (f" (sent {handle.sent_objects} objects, {handle.sent_bytes} bytes)"
                    if handle.store else "")
            print(f"qwex: {node.name}: run {handle.run_id} is job {handle.scheduler_id} on {where}{sent}",
                  file=sys.stderr)

    return Events()


def ask_keep_running(handle: JobHandle) -> bool:
    """Interrupted while following a job: on a terminal, ask whether to cancel it (the
    default); without one (a script, SIGTERM from a supervisor), cancel."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    where = handle.host or "this host"
    print(f"\nqwex: cancel run {handle.run_id} (job {handle.scheduler_id} on {where})? [Y/n] ",
          end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline().strip().lower()
    except (OSError, KeyboardInterrupt):
        return False
    if answer in ("n", "no"):
        print(f"qwex: left run {handle.run_id} running; `qwex attach {handle.run_id}` follows it",
              file=sys.stderr)
        return True
    return False


def _build(
    ws: Workspace, plan: Plan, as_json: bool, jobs: int = 1, keep_going: bool = False, detach: bool = False
) -> None:
    """Answer a hit from the index (no connection), else build through the workspace."""
    hit = ws.lookup(plan)
    if hit is not None:
        _print_result(hit, as_json)
        note_remote(hit)
        return
    import time

    from qwexstore.errors import Detached
    from qwexstore.graph import graph_nodes

    from .build_view import summary_lines

    nodes = graph_nodes(plan)
    events = _events(nodes, as_json)
    reports: dict[str, NodeReport] = {}
    t0 = time.monotonic_ns()
    try:
        result: BuildResult = run_async(
            lambda: ws.build(plan, events=events, jobs=jobs, keep_going=keep_going, reports=reports,
                             detach=detach)
        )
    except Detached as e:  # not a failure: the job runs on (every submitted node's run id)
        subs = [r.error.handle for r in reports.values() if isinstance(r.error, Detached)] or [e.handle]
        if as_json:
            emit_json({"detached": True, "runs": [{"run_id": h.run_id, "key": h.key, "name": h.name}
                                                  for h in subs]})
        else:
            print("\n".join(h.run_id for h in subs))
        return
    except QwexError as e:
        if as_json:  # scripts learn what failed, and which nodes did build
            emit_json({"error": str(e), "nodes": [_node_json(r) for r in reports.values()]})
        raise
    finally:
        if len(nodes) > 1 and reports and not as_json:
            print("\n".join(summary_lines(list(reports.values()))), file=sys.stderr)
    shown = [_node_json(r) for r in reports.values()] if len(nodes) > 1 else None
    _print_result(result, as_json, None if result.cached else time.monotonic_ns() - t0, shown)


@handles_errors
def build(
    drv: Annotated[str, typer.Argument(help="The derivation file.")],
    allow_dirty: AllowDirty = False,
    allow_unpinned: AllowUnpinned = False,
    runner: Runner = None,
    jobs: Jobs = None,
    keep_going: KeepGoing = False,
    substituter: Substituter = None,
    offline: Offline = False,
    detach: Detach = False,
    dry_run: DryRun = False,
    json: Json = False,
) -> None:
    """Build a derivation unless its key is already realized; print the key and outputs.

    drv: inputs are built first, independent ones in parallel. A failure stops the build
    from starting more derivations (running ones finish); --keep-going builds everything
    that does not depend on the failure. A missing result is first asked of the
    substituters (config `substituters`, or --substituter), unless --offline.
    """
    with workspace(create=True, substituters=substituter, offline=offline) as ws:
        plan = ws.plan(drv, allow_dirty=allow_dirty, allow_unpinned=allow_unpinned, runner=runner)
        if dry_run:
            _dry_run(ws, plan, json)
            return
        # Detached, a node only waits on its submission (sbatch, ssh): more of them overlap.
        _build(ws, plan, json, jobs or (max(8, _default_jobs()) if detach else _default_jobs()), keep_going,
               detach)


def _dry_run(ws: Workspace, plan: Plan, as_json: bool) -> None:
    from qwexstore.dryrun import dry_run

    shown = run_async(lambda: dry_run(ws, plan))
    if as_json:
        emit_json({"stages": [{"name": n.name, "script": text} for n, text in shown]})
    elif not shown:
        print(f"# {plan.name}: already built; nothing would run", file=sys.stderr)
    else:
        print("\n".join(text for _, text in shown), end="")


@handles_errors
def run(
    command: Annotated[list[str], typer.Argument(help="The command and its arguments, after --.")],
    output: Annotated[
        list[str] | None, typer.Option("--output", "-o", help="Output path/glob (default out/).")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="A label for the run.")] = None,
    allow_dirty: AllowDirty = False,
    json: Json = False,
) -> None:
    """Run a command as an ad-hoc derivation of the current repo at HEAD."""
    df = DrvFile(command=command, name=name or os.path.basename(command[0]), outputs=output or ["out/"])
    validate(df, "qwex run")  # -o is checked exactly as a .drv file's outputs are
    cwd = os.getcwd()
    with workspace(create=True) as ws:
        plan = plan_parsed(
            df,
            os.path.join(cwd, "(qwex run)"),
            cwd,
            ws.index,
            allow_dirty=allow_dirty,
            allow_unpinned=False,
            runner=None,
        )
        _build(ws, plan, json)


@handles_errors
def hash(
    drv: Annotated[str, typer.Argument(help="The derivation file.")],
    allow_dirty: AllowDirty = False,
    allow_unpinned: AllowUnpinned = False,
    runner: Runner = None,
    json: Json = False,
) -> None:
    """Print a derivation's key without building it."""
    from qwexstore.graph import try_resolve

    loc = location()
    # No store: nothing is built, so only a derivation without drv: inputs has a key (and
    # no index is created for a store that does not exist).
    index = open_index() if loc.exists() else None
    try:
        plan = plan_file(drv, index, allow_dirty=allow_dirty, allow_unpinned=allow_unpinned, runner=runner)
        resolved = (try_resolve(plan, index, loc.realised()) if index is not None
                    else plan if plan.derivation.is_resolved() else None)
    finally:
        if index is not None:
            index.close()
    if resolved is None:
        raise UserError(
            f"{drv}: its key depends on the outputs of drv: inputs that are not built yet "
            f"(derivation hash {plan.derivation.hash()}); build them first"
        )
    plan = resolved
    if json:
        import msgspec

        emit_json(
            {
                "key": plan.key,
                "name": plan.name,
                "derivation": msgspec.json.decode(plan.derivation.canonical()),
            }
        )
    else:
        print(plan.key)

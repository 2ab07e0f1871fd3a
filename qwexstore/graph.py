"""Pipelines: build a plan's ``drv:`` upstreams first, then the plan itself, resolved.

A downstream's key is the hash of its *resolved* derivation, in which each ``drv`` input is
replaced by that upstream's output manifest digest (early cutoff: an upstream that re-runs
but yields identical bytes leaves its dependants cached). ``drv:blake3:<hex>`` inputs name
a derivation whose key must already be realized.

:func:`realize_graph` builds the DAG with up to ``jobs`` nodes at once. Each node (one
.drv file, however many inputs name it) is built once per invocation, after all its
upstreams. A failure skips the node's dependants; without ``keep_going`` it also stops
any node from *starting*, while nodes already running finish and are recorded (their
work is not wasted, and nothing is ever left half-written).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal

import msgspec

from .cache import BuildResult, Realised, lookup
from .derivation import DrvInput, resolve
from .errors import BuildCancelled, BuildFailed, Detached, UserError
from .index import Index
from .plan import Plan

if TYPE_CHECKING:
    import asyncio  # imported when a graph is built: the cache-hit path never needs it

__all__ = ["NodeReport", "graph_nodes", "realize_graph", "try_resolve"]

NodeStatus = Literal["cached", "built", "failed", "skipped", "cancelled", "submitted"]


class NodeReport(msgspec.Struct):
    """How one node of the graph ended. ``key`` is None when it was never resolved;
    ``error`` is what stopped a failed or cancelled node (a QwexError, or a bug's exception)."""

    name: str
    drv_path: str
    status: NodeStatus = "skipped"
    key: str | None = None
    duration_ns: int = 0
    message: str = ""
    result: BuildResult | None = None
    error: Exception | None = None


def _blake3_upstreams(plan: Plan, index: Index, realised: Realised) -> dict[str, str]:
    """Manifests of ``drv:blake3:`` inputs, which must be realized keys."""
    out: dict[str, str] = {}
    for dest, inp in plan.derivation.inputs.items():
        if isinstance(inp, DrvInput) and dest not in plan.upstreams:
            hit = lookup(index, inp.drv, realised)
            if hit is None:
                raise UserError(f"{plan.drv_path}: input {dest!r}: {inp.drv} is not a realized key")
            out[inp.drv] = hit.manifest
    return out


def try_resolve(plan: Plan, index: Index, realised: Realised) -> Plan | None:
    """The resolved plan if every upstream (recursively) is realized, else None. The
    cache-hit path for a pipeline: the index, plus ``realised`` (one stat) per upstream."""
    manifests = _blake3_upstreams(plan, index, realised)
    ups: dict[str, Plan] = {}
    for dest, up in plan.upstreams.items():
        resolved = try_resolve(up, index, realised)
        if resolved is None:
            return None
        hit = lookup(index, resolved.key, realised)
        if hit is None:
            return None
        manifests[up.derivation.hash()] = hit.manifest
        ups[dest] = resolved
    return _resolved(plan, manifests, ups)


def _resolved(plan: Plan, manifests: dict[str, str], upstreams: dict[str, Plan]) -> Plan:
    """``plan`` with its drv: inputs resolved, and ``upstreams`` (destination -> resolved
    upstream plan) in place of its unresolved upstreams, so its record names their keys."""
    if plan.derivation.is_resolved():
        return plan
    return msgspec.structs.replace(plan, derivation=resolve(plan.derivation, manifests), upstreams=upstreams)


def graph_nodes(plan: Plan) -> list[Plan]:
    """Every node of the graph once (by .drv path), upstreams before their dependants."""
    seen: dict[str, Plan] = {}

    def visit(p: Plan) -> None:
        if p.drv_path in seen:
            return
        for up in p.upstreams.values():
            visit(up)
        seen[p.drv_path] = p

    visit(plan)
    return list(seen.values())


async def realize_graph(
    plan: Plan,
    index: Index,
    build_one: Callable[[Plan], Awaitable[BuildResult]],
    *,
    realised: Realised,
    jobs: int = 1,
    keep_going: bool = False,
    reports: dict[str, NodeReport] | None = None,
) -> BuildResult:
    """Build the graph rooted at ``plan``; return the root's result.

    ``reports`` (by .drv path, filled in as nodes end) tells the caller how every node
    ended, also when this raises. Raises BuildFailed if any node failed or was skipped
    because of a failure, BuildCancelled if any was interrupted, and UserError for a
    ``drv:blake3:`` input that is not realized.
    """
    import asyncio

    reports = {} if reports is None else reports
    for p in graph_nodes(plan):
        reports[p.drv_path] = NodeReport(name=p.name, drv_path=p.drv_path)
    slots = asyncio.Semaphore(max(1, jobs))
    tasks: dict[str, asyncio.Task[BuildResult | None]] = {}
    resolved_plans: dict[str, Plan] = {}  # by .drv path, set before a node is built
    stopped = False

    async def node(p: Plan) -> BuildResult | None:
        report = reports[p.drv_path]
        ups = {dest: tasks[up.drv_path] for dest, up in p.upstreams.items()}
        results = await asyncio.gather(*ups.values())
        failed = [p.upstreams[d].name for d, r in zip(ups, results, strict=True) if r is None]
        if failed:
            report.message = f"not built: its upstream {failed[0]} did not build"
            if all(reports[p.upstreams[d].drv_path].status == "submitted"
                   for d, r in zip(ups, results, strict=True) if r is None):
                report.message = f"not started: its upstream {failed[0]} is still running (detached)"
            return None
        nonlocal stopped
        try:
            return await build_node(p, report, list(zip(p.upstreams.values(), results, strict=True)))
        except asyncio.CancelledError:
            report.status, report.message = "cancelled", "interrupted"
            raise
        except Detached as e:  # --detach: submitted and running on; its dependants wait
            report.status, report.message, report.error = "submitted", str(e), e
            return None
        except Exception as e:  # one node's error, even a bug's, never aborts the others
            report.status = "cancelled" if isinstance(e, BuildCancelled) else "failed"
            report.message, report.error = str(e) or type(e).__name__, e
            stopped = stopped or (report.status == "failed" and not keep_going)
            return None

    async def build_node(
        p: Plan, report: NodeReport, ups: list[tuple[Plan, BuildResult | None]]
    ) -> BuildResult | None:
        manifests = _blake3_upstreams(p, index, realised)
        for up, r in ups:
            if r is None:  # node() returns before this when an upstream did not build
                raise RuntimeError(f"{up.name}: upstream result missing")
            manifests[up.derivation.hash()] = r.manifest
        resolved = _resolved(p, manifests, {d: resolved_plans[up.drv_path] for d, up in p.upstreams.items()})
        resolved_plans[p.drv_path] = resolved
        report.key = resolved.key
        hit = lookup(index, resolved.key, realised)
        if hit is not None:
            report.status, report.result = "cached", hit
            return hit
        async with slots:
            if stopped:
                report.message = "not started: an earlier failure stopped the build (--keep-going builds on)"
                return None
            t0 = time.monotonic_ns()
            try:
                r = await build_one(resolved)
            finally:
                report.duration_ns = time.monotonic_ns() - t0
        report.status, report.result = ("cached" if r.cached else "built"), r
        return r

    try:
        async with asyncio.TaskGroup() as group:
            for p in graph_nodes(plan):
                tasks[p.drv_path] = group.create_task(node(p))
    except asyncio.CancelledError:
        for r in reports.values():  # interrupted: say which runs were recorded as cancelled
            if isinstance(r.error, BuildCancelled):
                raise r.error from None
        for r in reports.values():  # ... or which jobs the user chose to leave running
            if isinstance(r.error, Detached):
                raise r.error from None
        root_task = tasks.get(plan.drv_path)
        if root_task is not None and root_task.done() and not root_task.cancelled() \
                and root_task.exception() is None and (done := root_task.result()) is not None:
            return done  # the interruption came when every job had ended and was recorded
        raise
    root = tasks[plan.drv_path].result()
    if root is not None:
        return root
    return _raise_outcome(plan, reports)


def _raise_outcome(plan: Plan, reports: dict[str, NodeReport]) -> BuildResult:
    """Raise what stopped the root: an interruption first, then the one failure as it was
    raised (its exit status kept), or a summary of several."""
    ended = [r for r in reports.values() if r.error is not None]
    for r in ended:
        if isinstance(r.error, BuildCancelled):
            raise r.error
    if ended and all(isinstance(r.error, Detached) for r in ended):
        raise ended[0].error  # type: ignore[misc]
    if len(ended) == 1 and ended[0].error is not None:
        raise ended[0].error
    names = ", ".join(r.name for r in ended)
    raise BuildFailed(f"{len(ended)} derivations failed ({names}); {plan.name} was not built", None, "")

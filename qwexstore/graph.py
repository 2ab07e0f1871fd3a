"""Pipelines: build a plan's ``drv:`` upstreams first, then the plan itself, resolved.

A downstream's key is the hash of its *resolved* derivation, in which each ``drv`` input is
replaced by that upstream's output manifest digest (early cutoff: an upstream that re-runs
but yields identical bytes leaves its dependants cached). ``drv:blake3:<hex>`` inputs name
a derivation whose key must already be realized.

This version builds upstreams one at a time, depth first; an upstream shared by two
inputs is built once per invocation.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec

from .cache import BuildResult, lookup
from .derivation import DrvInput, resolve
from .errors import UserError
from .index import Index
from .plan import Plan

__all__ = ["realize_graph", "try_resolve"]


def _blake3_upstreams(plan: Plan, index: Index) -> dict[str, str]:
    """Manifests of ``drv:blake3:`` inputs, which must be realized keys."""
    out: dict[str, str] = {}
    for dest, inp in plan.derivation.inputs.items():
        if isinstance(inp, DrvInput) and dest not in plan.upstreams:
            hit = lookup(index, inp.drv)
            if hit is None:
                raise UserError(f"{plan.drv_path}: input {dest!r}: {inp.drv} is not a realized key")
            out[inp.drv] = hit.manifest
    return out


def try_resolve(plan: Plan, index: Index) -> Plan | None:
    """The resolved plan if every upstream (recursively) is realized, else None. No store
    access: this is the cache-hit path for a pipeline."""
    manifests = _blake3_upstreams(plan, index)
    for up in plan.upstreams.values():
        resolved = try_resolve(up, index)
        if resolved is None:
            return None
        hit = lookup(index, resolved.key)
        if hit is None:
            return None
        manifests[up.derivation.hash()] = hit.manifest
    return _resolved(plan, manifests)


def _resolved(plan: Plan, manifests: dict[str, str]) -> Plan:
    if plan.derivation.is_resolved():
        return plan
    return msgspec.structs.replace(plan, derivation=resolve(plan.derivation, manifests))


async def realize_graph(
    plan: Plan,
    index: Index,
    build_one: Callable[[Plan], Awaitable[BuildResult]],
    done: dict[str, BuildResult] | None = None,
) -> BuildResult:
    """Build upstreams depth first with ``build_one``, then ``plan`` resolved."""
    done = {} if done is None else done
    manifests = _blake3_upstreams(plan, index)
    for up in plan.upstreams.values():
        if up.drv_path not in done:
            done[up.drv_path] = await realize_graph(up, index, build_one, done)
        manifests[up.derivation.hash()] = done[up.drv_path].manifest
    return await build_one(_resolved(plan, manifests))

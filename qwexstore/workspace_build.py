"""Build orchestration for :meth:`qwexstore.workspace.Workspace.build`: lookup, preflight,
then the graph, each missing node asked of the substituters before it runs
(spec/remotes.md, "Substitution"; spec/store.md, "Build").

Per missing node, in order:

1. a substituter that realises its key under a trusted signature gives an index entry
   marked with its name, and the node is done (nothing is copied);
2. otherwise the node must be runnable here (preflight, for this node alone when
   substituters are in use: a node a substituter holds needs no driver here);
3. inputs taken from substituted upstreams are fetched (a trust-checked pull), because
   staging needs their bytes;
4. the node runs under the key's hold (:func:`qwexstore.build.realize`), signed if a
   signing key is configured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .cache import BuildResult, lookup
from .derivation import TreeInput

if TYPE_CHECKING:
    from .driver import Driver
    from .graph import NodeReport
    from .plan import Plan
    from .store import Store
    from .workspace import BuildEvents, Workspace

__all__ = ["build", "fetch_inputs"]


async def build(
    ws: Workspace,
    plan: Plan,
    events: BuildEvents,
    *,
    jobs: int,
    keep_going: bool,
    reports: dict[str, NodeReport] | None,
    driver: Driver | None,
    environ: dict[str, str] | None,
    detach: bool = False,
) -> BuildResult:
    """See :meth:`Workspace.build`."""
    from .build import realize
    from .driver import preflight
    from .graph import realize_graph
    from .substitute import indexed

    hit = ws.lookup(plan)
    if hit is not None:
        return hit
    index, realised = ws.index, ws.realised
    subs = ws.substituters(events.warning)
    if not subs:  # every node must be runnable here: refuse before any starts
        preflight(plan, index, realised)
    signer = ws.signing_key()
    store = await ws.store()
    coordinator = ws.coordinator(store)
    shared: dict[str, Driver] = {}  # one job driver per kind for the whole build (one connection per host)

    def driver_of(node: Plan) -> Driver | None:
        if driver is not None:
            return driver
        from .driver import driver_for, load_driver
        from .jobs import JobDriver

        name = driver_for(node.layers)
        if name == "local":
            return None  # the local driver: one per run, loaded by realize as before
        if name not in shared:
            d = load_driver(name)
            same = [x for x in shared.values() if type(x) is type(d)]
            shared[name] = same[0] if same else d
        d = shared[name]
        return d if isinstance(d, JobDriver) else None

    async def build_one(node: Plan) -> BuildResult:
        hit = lookup(index, node.key, realised)
        if hit is not None and hit.remote is not None:
            return hit
        if hit is None and subs:
            found = await subs.query(node.key)
            if found is not None:
                entry = indexed(found)
                with index.writer() as w:
                    w.realisation(node.key, entry)
                result = BuildResult(node.key, True, entry.run_id, entry.manifest, entry.files, entry.size,
                                     list(entry.listing), found.remote)
                events.substituted(node, result)
                return result
            preflight(node, index, realised)  # upstreams are realised: this node alone
        await fetch_inputs(ws, node, store, events)
        if hit is None:
            events.building(node)
        sink = events.logs(node)
        try:
            return await realize(
                store, index, node, on_log=sink, on_wait=lambda owner: events.waiting(node, owner),
                progress=events.progress, driver=driver_of(node), environ=environ, coordinator=coordinator,
                signer=signer, scratch=ws.scratch, detach=detach,
                hooks=events.job_hooks(node),
            )
        finally:
            sink.close()

    try:
        return await realize_graph(plan, index, build_one, realised=realised, jobs=jobs,
                                   keep_going=keep_going, reports=reports)
    finally:
        for d in {id(x): x for x in shared.values()}.values():
            close = getattr(d, "close", None)
            if close is not None:
                await close()


async def fetch_inputs(ws: Workspace, node: Plan, store: Store, events: BuildEvents) -> list[str]:
    """Fetch the outputs of every substituted key whose outputs ``node`` (resolved) takes as
    an input and the store lacks; return those keys. Upstreams of the graph are found by
    key; ``drv:blake3:`` inputs by their manifest among the substituted index entries."""
    needed = {inp.manifest for inp in node.derivation.inputs.values() if isinstance(inp, TreeInput)}
    if not needed:
        return []
    index = ws.index
    keys: dict[str, str] = {}  # manifest -> substituted key
    for up in node.upstreams.values():
        entry = index.realisation(up.key)
        if entry is not None and entry.remote is not None and entry.manifest in needed:
            keys[entry.manifest] = up.key
    if len(keys) < len(needed):
        for key, entry in index.iter_realisations():
            if entry.remote is not None and entry.manifest in needed:
                keys.setdefault(entry.manifest, key)
    if not keys:
        return []
    manifests = sorted(keys)
    there = await store.storage.exists([store.manifest_path(m) for m in manifests])
    fetched = []
    for m, ok in zip(manifests, there, strict=True):
        if not ok:
            await ws.fetch_outputs(keys[m], events)
            fetched.append(keys[m])
    return fetched

"""A workspace: one store, its local index, the coordinator, the scratch directory, the
config and the substituters, behind one object, so that a Python caller and the CLI do
the same thing (the CLI parses, calls a :class:`Workspace` method, prints).

Use::

    with Workspace.open() as ws:                 # the store of `--store`/config/default
        plan = ws.plan("train.drv")
        hit = ws.lookup(plan)                    # the cache-hit path: index + one stat
        result = hit or asyncio.run(ws.build(plan))   # build() disconnects when it ends

Opening a workspace reads no config beyond locating the store and imports neither
asyncio nor any remote-storage client, nor the planner (git, the .drv parser) before
:meth:`plan` is called: the cache-hit path (:meth:`lookup`) costs the
index and one stat and never connects anywhere, substituters included. The store is
opened on first need, inside the async method that needs it; :meth:`disconnect` (done by
:meth:`build`, :meth:`checkout` and :meth:`rebuild_index` before they return) closes the
connections, which belong to that event loop.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from .cache import BuildResult, Realised, lookup
from .config import Config, load_config, qwex_home
from .errors import StoreError, UserError
from .index import Index
from .location import StoreLocation, locate_store

if TYPE_CHECKING:
    import asyncio

    from .checkout import CheckoutResult
    from .coordinator import Coordinator
    from .driver import Driver
    from .graph import NodeReport
    from .jobrun import JobHooks
    from .jobs import JobHandle
    from .keys import SecretKey
    from .plan import Plan
    from .reindex import RebuildReport
    from .store import Store
    from .substitute import Substituters

__all__ = ["BuildEvents", "LogSink", "Workspace"]


class LogSink(Protocol):
    """Where one derivation's live output goes: called with (stream, chunk); closed when
    the derivation ends."""

    def __call__(self, stream: str, chunk: bytes) -> None:
        """Take a chunk of ``stream`` ("stdout" or "stderr")."""

    def close(self) -> None:
        """The derivation ended."""


class _Discard:
    """The default sink: drops live output (the logs are stored either way)."""

    def __call__(self, stream: str, chunk: bytes) -> None:
        pass

    def close(self) -> None:
        pass


class BuildEvents:
    """What a build tells its caller as it goes. Override what you want; the defaults
    say nothing. ``progress(done, total)`` reports ingest hashing, when set."""

    progress: Callable[[int, int], None] | None = None

    def logs(self, node: Plan) -> LogSink:
        """A sink for ``node``'s live output (called when it starts)."""
        return _Discard()

    def building(self, node: Plan) -> None:
        """``node`` (resolved: ``node.key`` is its key) is about to run."""

    def substituted(self, node: Plan, result: BuildResult) -> None:
        """``node`` was found at substituter ``result.remote`` and is not built."""

    def fetching(self, key: str, remote: str) -> None:
        """The outputs of ``key`` are being fetched from substituter ``remote``."""

    def waiting(self, node: Plan, owner: str) -> None:
        """Another builder (``owner``) holds ``node``'s key; this build waits for it."""

    def warning(self, message: str) -> None:
        """A one-line warning (an unavailable or untrusted substituter)."""

    def submitted(self, node: Plan, handle: JobHandle) -> None:
        """``node``'s job was submitted (or attached to: a job an earlier client left
        running) through a job driver; ``handle`` says where it runs."""

    def keep_running(self, node: Plan, handle: JobHandle) -> bool:
        """The build was interrupted while following ``node``'s job: True leaves the job
        running (it can be attached to later), False (the default) cancels it."""
        return False

    def job_hooks(self, node: Plan) -> JobHooks:
        from .jobrun import JobHooks

        return JobHooks(lambda h: self.submitted(node, h), lambda h: self.keep_running(node, h))


class Workspace:
    """One store's workspace; see the module docstring. ``create``: build and run create
    the store on first use (otherwise a location without a store is the UserError "no
    qwex store at X", and nothing is created, no index either). ``substituters``: remote
    names asked before building a missing key (None: the config's ``substituters``);
    ``offline``: ask none. ``on_create`` hears the one-line notice when a store is created
    at a chosen location."""

    def __init__(
        self,
        location: StoreLocation,
        *,
        create: bool = False,
        config: Config | None = None,
        substituters: Sequence[str] | None = None,
        offline: bool = False,
        cwd: str | None = None,
        on_create: Callable[[str], None] | None = None,
    ) -> None:
        if not create:
            location.require()
        self.location = location
        self.create = create
        self.cwd = os.path.abspath(cwd or os.getcwd())
        self.offline = offline
        self.on_create = on_create
        self._config = config
        self._substituter_names = None if substituters is None else list(substituters)
        self._index: Index | None = None
        self._store: Store | None = None
        self._subs: Substituters | None = None
        self._realised: Realised | None = None
        self._fetch_locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def open(
        cls,
        store: str | None = None,
        *,
        cwd: str | None = None,
        create: bool = False,
        config: Config | None = None,
        substituters: Sequence[str] | None = None,
        offline: bool = False,
        on_create: Callable[[str], None] | None = None,
    ) -> Workspace:
        """The workspace of the store at ``store`` (a path or URL), else ``$QWEX_STORE``,
        else the config's ``store``, else ``$QWEX_HOME/store`` (spec/store.md, "Locating
        the store"). Keyword arguments as for the constructor."""
        return cls(locate_store(store, cwd), create=create, config=config, substituters=substituters,
                   offline=offline, cwd=cwd, on_create=on_create)

    # -- what it owns ----------------------------------------------------------------------
    @property
    def index(self) -> Index:
        """The store's local index, ``$QWEX_HOME/index/<tag of the location>`` (opened on
        first use; StoreError if unreadable: :meth:`rebuild_index` recreates it)."""
        if self._index is None:
            self._index = Index(self.location.index_path())
        return self._index

    @property
    def config(self) -> Config:
        """The user config overlaid with the project's (the git repository around cwd)."""
        if self._config is None:
            from .remotes import project_root

            self._config = load_config(project_root(self.cwd))
        return self._config

    @property
    def scratch(self) -> str:
        """Temp files, work dirs, locks and kept outputs: ``tmp/`` inside a local store
        (so ingest is a rename), else ``$QWEX_HOME/tmp``; as :func:`qwexstore.build.scratch_dir`
        (a ``file://`` URL is a local store once opened)."""
        root = self._store.local_root if self._store is not None else self.location.local_root
        return os.path.join(root, "tmp") if root else os.path.join(qwex_home(), "tmp")

    @property
    def realised(self) -> Realised:
        """Whether the store holds a key's realisation (one stat for a local store)."""
        if self._realised is None:
            self._realised = self.location.realised()
        return self._realised

    @property
    def substituter_names(self) -> list[str]:
        """The remotes asked before a missing key is built, in order (none when offline)."""
        if self.offline:
            return []
        names = self._substituter_names
        return list(names) if names is not None else list(self.config.substituters or [])

    def signing_key(self) -> SecretKey | None:
        """The config's ``signing-key``, loaded (UserError if it names no readable key)."""
        from .keys import load_signing_key

        return load_signing_key(self.config)

    async def store(self) -> Store:
        """The store, opened on first call (created if the workspace may create it)."""
        if self._store is None:
            self._store = await self.location.open(create=self.create, on_create=self.on_create)
        return self._store

    def coordinator(self, store: Store) -> Coordinator:
        """One execution per key: a ``flock`` in the scratch dir for a local store; for a
        shared (non-local) store, that and a lease object in the store (spec/locks.md)."""
        if store.local_root is not None:
            from .coordinator import FlockCoordinator

            return FlockCoordinator(self.scratch)
        from .leases import LeaseCoordinator

        return LeaseCoordinator(store.storage, self.scratch)

    def substituters(self, warn: Callable[[str], None]) -> Substituters:
        """This session's substituters (UserError for a name no remote has)."""
        if self._subs is None:
            from .remotes import resolve_remote
            from .substitute import Substituters

            names = self.substituter_names
            for name in names:
                resolve_remote(self.config, name)
            self._subs = Substituters(self.config, names, warn)
        return self._subs

    # -- reading ---------------------------------------------------------------------------
    def plan(
        self, drv: str, *, allow_dirty: bool = False, allow_unpinned: bool = False, runner: str | None = None
    ) -> Plan:
        """Plan a .drv file (:func:`qwexstore.plan.plan_file`): parse, select the source,
        hash; ``drv:`` upstreams recursively."""
        from .plan import plan_file  # git and the .drv parser: not for `ls` and `show`

        return plan_file(drv, self.index, allow_dirty=allow_dirty, allow_unpinned=allow_unpinned,
                         runner=runner)

    def resolve(self, plan: Plan) -> Plan | None:
        """``plan`` with its drv: inputs resolved, if every upstream is realised; else None."""
        from .graph import try_resolve

        return try_resolve(plan, self.index, self.realised)

    def lookup(self, plan: Plan) -> BuildResult | None:
        """The cache-hit path: ``plan``'s result if it and every upstream are realised
        (here, or substituted earlier). The index and one stat per node; no connection."""
        resolved = self.resolve(plan)
        return None if resolved is None else lookup(self.index, resolved.key, self.realised)

    # -- building --------------------------------------------------------------------------
    async def build(
        self,
        plan: Plan,
        *,
        events: BuildEvents | None = None,
        jobs: int = 1,
        keep_going: bool = False,
        reports: dict[str, NodeReport] | None = None,
        driver: Driver | None = None,
        environ: dict[str, str] | None = None,
        detach: bool = False,
    ) -> BuildResult:
        """Build ``plan``'s graph: each missing node is asked of the substituters, then
        run (upstreams first, up to ``jobs`` at once). Raises as
        :func:`qwexstore.graph.realize_graph`; a node no driver can run is refused first
        (without substituters, before any starts). With ``detach``, a node run through a
        job driver raises :class:`~qwexstore.jobrun.Detached` once submitted (the job
        runs on). Disconnects before returning."""
        from . import workspace_build

        try:
            return await workspace_build.build(self, plan, events or BuildEvents(), jobs=jobs,
                                               keep_going=keep_going, reports=reports, driver=driver,
                                               environ=environ, detach=detach)
        finally:
            await self.disconnect()

    async def fetch_outputs(self, key: str, events: BuildEvents | None = None) -> bool:
        """Make a substituted key's outputs local: a trust-checked pull of its closure from
        the substituter its index entry names. False if the key needs no fetch."""
        import asyncio

        lock = self._fetch_locks.setdefault(key, asyncio.Lock())  # one pull per key at a time
        async with lock:
            return await self._fetch(key, events)

    async def _fetch(self, key: str, events: BuildEvents | None) -> bool:
        import msgspec

        entry = self.index.realisation(key)
        if entry is None or entry.remote is None:
            return False
        if self.offline:
            raise UserError(f"{key} was substituted from {entry.remote} and its outputs are needed "
                            "here; fetching them needs the network (drop --offline)")
        ev = events or BuildEvents()
        ev.fetching(key, entry.remote)
        store = await self.store()
        await self.substituters(ev.warning).fetch(key, entry.remote, store, self.index)
        with self.index.writer() as w:  # the store holds it now
            w.realisation(key, msgspec.structs.replace(entry, remote=None))
        return True

    async def checkout(
        self, prefix: str, dest: str, *, link: bool = False, outputs_only: bool = False,
        events: BuildEvents | None = None,
    ) -> CheckoutResult:
        """Write a run's source and outputs to ``dest`` (spec/store.md, "Checkout"),
        fetching them first if the key was substituted. Disconnects before returning."""
        from .checkout import checkout

        try:
            kind, full = self.index.resolve_prefix(prefix)
            if kind == "real":
                await self.fetch_outputs(full, events)
            return await checkout(await self.store(), self.index, prefix, dest, link=link,
                                  outputs_only=outputs_only)
        finally:
            await self.disconnect()

    async def rebuild_index(self, on_aside: Callable[[str], None] | None = None) -> RebuildReport:
        """Rebuild the index from the store's records, under the shared gc lock (a
        concurrent gc cannot delete what is being indexed). An unreadable index is moved
        aside first (``on_aside`` hears where) and a fresh one started. Entries of
        substituted keys are dropped: the next build asks the substituters again."""
        from .liveroots import GcLock
        from .reindex import rebuild_index

        try:
            store = await self.store()
            try:
                index = self.index
            except StoreError:  # unreadable: keep it aside for inspection, start afresh
                path = self.location.index_path()
                aside = f"{path}.unreadable-{time.time_ns()}"
                os.rename(path, aside)
                if on_aside is not None:
                    on_aside(aside)
                index = self.index
            async with GcLock(self.scratch, exclusive=False):
                return await rebuild_index(store, index)
        finally:
            await self.disconnect()

    # -- closing ---------------------------------------------------------------------------
    async def disconnect(self) -> None:
        """Close the store's and the substituters' connections (reopened on next need)."""
        store, self._store = self._store, None
        subs, self._subs = self._subs, None
        self._fetch_locks = {}  # they belong to the event loop that is ending
        if subs is not None:
            await subs.close()
        if store is not None:
            await store.storage.close()

    def close(self) -> None:
        """Close the index. Call :meth:`disconnect` first if a store was opened."""
        if self._index is not None:
            self._index.close()
            self._index = None

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Workspace:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()
        self.close()


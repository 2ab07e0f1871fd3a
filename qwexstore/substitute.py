"""Substitution: before a missing key is built, ask remote stores for it
(spec/remotes.md, "Substitution").

:class:`Substituters` asks each named remote in order. A remote answers with the key's
realisation, a signature by a trusted key over it, and its output manifest, fetched and
verified (:func:`qwexstore.transfer.fetch_realisation`); then the key is recorded in the
local index, marked with the remote's name (:func:`indexed`), and nothing else is copied.
The outputs are fetched later, by a trust-checked pull of the key's closure
(:meth:`Substituters.fetch`), only when something needs them: a checkout, or staging a
downstream derivation.

A remote that cannot be reached or answers with an error is a one-line warning and a miss,
never a failed build, and is not asked again in this session. An untrusted answer is a
warning and a miss for that key. Opening a remote (and importing its client libraries)
happens only here, so a cache hit never connects anywhere.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import msgspec

from .cache import LISTING
from .config import Config
from .errors import CorruptObject, ObjectNotFound, QwexError, StoreError, UntrustedObject
from .index import Index, IndexedRealisation

if TYPE_CHECKING:
    import asyncio

    from .keys import Trust
    from .manifest import Manifest
    from .records import Realisation
    from .store import Store

__all__ = ["Substituted", "Substituters", "indexed", "query_timeout_s"]

#: Seconds one question to a substituter may take, opening it included.
DEFAULT_TIMEOUT_S = 10.0


def query_timeout_s() -> float:
    """``$QWEX_SUBSTITUTE_TIMEOUT_S``, else :data:`DEFAULT_TIMEOUT_S`."""
    try:
        return float(os.environ.get("QWEX_SUBSTITUTE_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


class Substituted(msgspec.Struct, frozen=True):
    """A key a substituter realises: which remote, its realisation and (verified) manifest."""

    remote: str
    realisation: Realisation
    manifest: Manifest


def indexed(sub: Substituted) -> IndexedRealisation:
    """The local index entry for a substituted key: marked with the remote's name."""
    files = sub.manifest.files()
    listing = [(e.path, e.size) for e in files[:LISTING]]
    real = sub.realisation
    return IndexedRealisation(real.manifest, real.run_id, real.created_ns, len(files),
                              sub.manifest.total_size(), listing, sub.remote)


def _why(err: BaseException) -> str:
    if isinstance(err, QwexError):
        return str(err)
    if isinstance(err, TimeoutError):
        return "no answer in time"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


class Substituters:
    """The substituters of one session, by name, asked in order. ``warn`` receives the
    one-line warnings. Opened remotes are kept until :meth:`close`."""

    def __init__(self, config: Config, names: Sequence[str], warn: Callable[[str], None]) -> None:
        self.config = config
        self.names = list(dict.fromkeys(names))
        self.warn = warn
        self._stores: dict[str, Store] = {}
        self._down: set[str] = set()
        self._trust: Trust | None = None
        self._opening: dict[str, asyncio.Lock] = {}

    def __bool__(self) -> bool:
        return bool(self.names)

    @property
    def trust(self) -> Trust:
        """The trusted keys of the config (parsed once)."""
        if self._trust is None:
            from .keys import trust_from_config

            self._trust = trust_from_config(self.config)
        return self._trust

    async def open(self, name: str) -> Store:
        """The store of remote ``name`` (UserError for an unknown name; StoreError or an
        OSError if it cannot be opened)."""
        import asyncio

        async with self._opening.setdefault(name, asyncio.Lock()):  # parallel nodes open it once
            store = self._stores.get(name)
            if store is None:
                from .remotes import open_remote, resolve_remote

                store = await open_remote(resolve_remote(self.config, name), create=False)
                self._stores[name] = store
            return store

    async def query(self, key: str) -> Substituted | None:
        """The first substituter that realises ``key`` under a trusted signature, or None.
        Never raises for a remote's failure: it is warned about and skipped."""
        import asyncio

        from .transfer import fetch_realisation

        for name in self.names:
            if name in self._down:
                continue

            async def ask(name: str = name) -> tuple[Realisation, Manifest] | None:
                return await fetch_realisation(await self.open(name), key, trust=self.trust)

            try:
                found = await asyncio.wait_for(ask(), query_timeout_s())
            except UntrustedObject as e:
                self.warn(f"substituter {name}: {e}; not used")
                continue
            except CorruptObject as e:  # the remote's copy is damaged: this key only
                self.warn(f"substituter {name}: {e.path} does not match its digest; not used")
                continue
            except ObjectNotFound as e:  # the remote's copy is incomplete: this key only
                self.warn(f"substituter {name}: its result for {key} lacks {e.path}; not used")
                continue
            except Exception as e:  # unreachable, refusing, misconfigured: a miss, never a failure
                self._down.add(name)
                self.warn(f"substituter {name} is unavailable ({_why(e)}); building without it")
                continue
            if found is not None:
                return Substituted(name, found[0], found[1])
        return None

    async def fetch(self, key: str, remote: str, dst: Store, index: Index) -> None:
        """Pull ``key``'s closure from ``remote`` into ``dst`` (trust-checked before anything
        is written) and index it there. Raises StoreError naming the remote on failure:
        the outputs are needed now."""
        from .transfer import pull

        try:
            await pull(await self.open(remote), dst, [key], trust=self.trust, index=index)
        except (StoreError, OSError) as e:
            again = ""
            if isinstance(e, (ObjectNotFound, CorruptObject, UntrustedObject)):
                # The remote's copy is gone or damaged, not just out of reach: forget the
                # substitution, so that the next build runs the job instead of hitting it.
                entry = index.realisation(key)
                if entry is not None and entry.remote == remote:
                    with index.writer() as w:
                        w.delete_realisation(key)
                    again = "; the next build runs it"
            raise StoreError(f"cannot fetch {key} from substituter {remote}: {_why(e)}{again}") from None

    async def close(self) -> None:
        """Close every remote opened."""
        stores, self._stores = list(self._stores.values()), {}
        for store in stores:
            with contextlib.suppress(Exception):  # closing a connection that already failed
                await store.storage.close()

"""Which store a command uses, where its local index lives, and whether it exists.

The rule (spec/store.md, "Locating the store"), shared by the CLI and Python callers:

- The location is ``--store`` (the ``explicit`` argument), else ``$QWEX_STORE``, else the
  ``store`` key of ``.qwex/config.toml`` in the project (the git repository around the
  working directory), else of ``$QWEX_HOME/config.toml``, else ``$QWEX_HOME/store``. A
  relative ``store`` path is relative to the project root, or to ``$QWEX_HOME``.
- Commands that only read (``ls``, ``show``, ``log``, ``checkout``, ``diff``, ``verify``,
  ``gc``, ``pin``, ``unpin``, ``index rebuild``) MUST fail with "no qwex store at X"
  (a user error: a typo in ``--store`` is the usual cause) when the location holds no
  store, and MUST create nothing there or in ``$QWEX_HOME/index``.
- ``build`` and ``run`` create the store on first use; when the location was chosen (not
  the default) they say so on stderr, so a typo does not silently start a second store.

Kept free of asyncio and fsspec for local stores: the cache-hit path uses
:meth:`StoreLocation.realised` and :meth:`StoreLocation.require`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .digest import hash_bytes, hex_of
from .errors import UserError
from .home import qwex_home

if TYPE_CHECKING:
    from .store import Store

__all__ = ["VERSION_FILE", "StoreLocation", "locate_store", "project_root", "realisation_path", "realised_in"]

#: The store's version file; its presence is what makes a location a store.
VERSION_FILE: Final = "qwex-store.json"


def realisation_path(key: str) -> str:
    """``realisations/<h2>/<hex>``: :meth:`Store.realisation_path`, without importing the
    store (and asyncio) on the cache-hit path. A test checks that the two agree."""
    h = hex_of(key)
    return f"realisations/{h[:2]}/{h}"


class StoreLocation(msgspec.Struct, frozen=True):
    """A store's location: an absolute path or an fsspec URL, and whether the user chose it
    (``--store``, ``$QWEX_STORE`` or a config file) rather than getting the default."""

    url: str
    explicit: bool

    @property
    def local_root(self) -> str | None:
        """The directory of a local store; None for a URL."""
        return None if "://" in self.url else self.url

    def index_path(self) -> str:
        """The store's local index: ``$QWEX_HOME/index/<16 hex of the location>``."""
        tag = hex_of(hash_bytes(self.url.encode()))[:16]
        return os.path.join(qwex_home(), "index", tag)

    def exists(self) -> bool:
        """Whether a store (its version file) is there: one stat for a local store."""
        root = self.local_root
        if root is not None:
            return os.path.isfile(os.path.join(root, VERSION_FILE))
        return _run(self._remote_exists)

    async def _remote_exists(self) -> bool:
        from .storage import open_storage

        storage = open_storage(self.url)
        try:
            (ok,) = await storage.exists([VERSION_FILE])
        finally:
            await storage.close()  # its own connection: not left to the garbage collector
        return ok

    def require(self) -> None:
        """Raise UserError "no qwex store at X" unless a store is there. Creates nothing."""
        if not self.exists():
            raise UserError(f"no qwex store at {self.url}")

    async def open(self, *, create: bool, on_create: Callable[[str], None] | None = None) -> Store:
        """Open the store. Without ``create``, a missing store is the UserError of
        :meth:`require`; with it, a missing store is created, and ``on_create`` is called
        with a one-line message if the location was explicit."""
        from .store import open_store

        root = self.local_root
        there = (os.path.isfile(os.path.join(root, VERSION_FILE)) if root is not None
                 else await self._remote_exists())
        if not there:
            if not create:
                raise UserError(f"no qwex store at {self.url}")
            store = await open_store(self.url, create=True)
            if self.explicit and on_create is not None:
                on_create(f"created a new store at {self.url}")
            return store
        return await open_store(self.url, create=False)

    def realised(self) -> Callable[[str], bool]:
        """A check that a key's realisation exists in the store: one stat for a local store
        (``realisations/<h2>/<hex>``, spec/store.md), one ``exists`` call for a URL."""
        root = self.local_root
        if root is not None:
            def local(key: str) -> bool:
                return os.path.exists(os.path.join(root, realisation_path(key)))

            return local

        def remote(key: str) -> bool:
            from .storage import open_storage

            path = realisation_path(key)

            async def check() -> bool:
                (ok,) = await open_storage(self.url).exists([path])
                return ok

            return _run(check)

        return remote


def _run(make: Callable[[], Coroutine[Any, Any, bool]]) -> bool:
    """Run a coroutine to completion from sync code, also inside a running event loop
    (then in a thread of its own: remote checks on the hit path of a graph build)."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as ex:
        return ex.submit(lambda: asyncio.run(make())).result()


def realised_in(store: Store) -> Callable[[str], bool]:
    """:meth:`StoreLocation.realised` for an open store."""
    return StoreLocation(store.local_root or store.location, explicit=False).realised()


def project_root(cwd: str | None = None) -> str | None:
    """The git repository around ``cwd`` (default: the working directory), or None: the
    project whose ``.qwex/config.toml`` applies."""
    d = os.path.abspath(cwd or os.getcwd())
    while not os.path.exists(os.path.join(d, ".git")):
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent
    return d


def _config_store(start: str) -> str | None:
    """The ``store`` setting of the project config (``.qwex/config.toml`` at the root of
    the git repository around ``start``), else of the user config, made absolute: a
    relative path is relative to the project root, or to ``$QWEX_HOME``. Reads no file
    that does not exist (the cache-hit path runs this)."""
    home = qwex_home()
    root = project_root(start)
    has_proj = root is not None and os.path.isfile(os.path.join(root, ".qwex", "config.toml"))
    if not has_proj and not os.path.isfile(os.path.join(home, "config.toml")):
        return None
    from .config import load_config

    user = load_config(None).store
    value = load_config(root).store if has_proj else user
    if value is None:
        return None
    if "://" in value:
        return value
    base = root if has_proj and value != user and root is not None else home
    return os.path.join(base, os.path.expanduser(value))


def locate_store(explicit: str | None = None, cwd: str | None = None) -> StoreLocation:
    """The store location by the rule in the module docstring; ``explicit`` is ``--store``."""
    given = explicit or os.environ.get("QWEX_STORE")
    if not given:
        given = _config_store(cwd or os.getcwd())
    if not given:
        return StoreLocation(os.path.join(os.path.abspath(qwex_home()), "store"), explicit=False)
    url = given if "://" in given else os.path.abspath(os.path.expanduser(given))
    return StoreLocation(url, explicit=True)

"""The cache-hit path: is a key realized, and what did it produce? The index answers,
and one existence check of the realisation in the store confirms (spec/index.md, I1).

Kept free of asyncio, fsspec and the driver registry: ``qwex build`` of an up-to-date
derivation imports this, :mod:`qwexstore.plan` and the index, and nothing heavier.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from .index import Index

__all__ = ["LISTING", "BuildResult", "Realised", "lookup"]

#: Does the store hold this key's realisation? (:meth:`StoreLocation.realised`: one stat.)
Realised = Callable[[str], bool]

#: Listing entries kept in the index so a cache hit can print outputs without the store.
LISTING = 20


class BuildResult(msgspec.Struct):
    """What ``qwex build`` reports: the key, whether it ran, and the outputs. ``remote``
    names the substituter that holds the result when this store does not (yet)."""

    key: str
    cached: bool
    run_id: str
    manifest: str
    files: int
    size: int
    listing: list[tuple[str, int]]
    remote: str | None = None


def lookup(index: Index, key: str, realised: Realised) -> BuildResult | None:
    """The cache-hit path: the indexed realisation of ``key``, or None.

    An index entry whose realisation the store lacks (the store was deleted, or lost the
    object behind the index's back) is a *phantom*: its entry is dropped and the answer
    is a miss, so the build runs instead of reporting outputs that cannot be checked out.

    An entry marked with a substituter (``remote``) is a hit without any check: its
    realisation lives in that remote store, and a hit makes no network connection; its
    outputs are fetched when something needs them (spec/remotes.md, "Substitution").
    """
    hit = index.realisation(key)
    if hit is None:
        return None
    if hit.remote is not None:
        return BuildResult(key, True, hit.run_id, hit.manifest, hit.files, hit.size, list(hit.listing),
                           hit.remote)
    if not realised(key):
        with index.writer() as w:
            w.delete_realisation(key)
        return None
    return BuildResult(key, True, hit.run_id, hit.manifest, hit.files, hit.size, list(hit.listing))

"""The cache-hit path: is a key realized, and what did it produce? Index only, no store.

Kept free of asyncio, fsspec and the driver registry: ``qwex build`` of an up-to-date
derivation imports this, :mod:`qwexstore.plan` and the index, and nothing heavier.
"""

from __future__ import annotations

import msgspec

from .index import Index

__all__ = ["LISTING", "BuildResult", "lookup"]

#: Listing entries kept in the index so a cache hit can print outputs without the store.
LISTING = 20


class BuildResult(msgspec.Struct):
    """What ``qwex build`` reports: the key, whether it ran, and the outputs."""

    key: str
    cached: bool
    run_id: str
    manifest: str
    files: int
    size: int
    listing: list[tuple[str, int]]


def lookup(index: Index, key: str) -> BuildResult | None:
    """The cache-hit path: the indexed realisation of ``key``, or None."""
    hit = index.realisation(key)
    if hit is None:
        return None
    return BuildResult(key, True, hit.run_id, hit.manifest, hit.files, hit.size, list(hit.listing))

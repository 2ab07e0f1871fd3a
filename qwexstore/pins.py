"""Pins: realisations that ``qwex gc --older-than`` never drops (spec/gc.md, "Pins").

A pin is the object ``pins/<h2>/<key hex>`` holding a :class:`Pin` record. Pins live in
the store, not in the index, so they survive ``qwex index rebuild`` and travel with the
store. They are the one kind of store object that is deleted by a user's request
(``unpin``); a pin is still written atomically and never modified.
"""

from __future__ import annotations

import time

import msgspec

from . import canonical
from .digest import Digest, is_digest
from .errors import KeyLookupError, ObjectNotFound, StoreError, UserError
from .liveroots import GcLock
from .store import Store

__all__ = ["Pin", "match_pinned", "pin", "pinned", "read_pin", "unpin"]


class Pin(msgspec.Struct, forbid_unknown_fields=True, tag="qwex.pin/1", tag_field="format"):
    """A pinned key, and when it was pinned."""

    key: Digest
    created_ns: int


async def pinned(store: Store) -> list[str]:
    """Every pinned key (from the names under ``pins/``; the records are not read)."""
    keys = []
    for path in await store.storage.list("pins"):
        key = "blake3:" + path.rsplit("/", 1)[-1]
        if is_digest(key) and path == store.pin_path(key):
            keys.append(key)
    return sorted(keys)


async def read_pin(store: Store, key: str) -> Pin:
    """The pin record of ``key``; StoreError if it does not decode or names another key."""
    path = store.pin_path(key)
    data = await store.storage.get(path)
    try:
        p = canonical.decode(data, Pin)
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise StoreError(f"unreadable object {path}: {e}") from None
    if p.key != key:
        raise StoreError(f"unreadable object {path}: it pins {p.key}")
    return p


async def pin(store: Store, scratch: str, key: str) -> bool:
    """Pin a realised key; False if it was already pinned. UserError if it is not realised.

    Runs under the shared gc lock, so a gc cannot sweep the realisation between the check
    and the pin.
    """
    async with GcLock(scratch, exclusive=False):
        if await store.get_realisation(key) is None:
            raise UserError(f"{key} is not realised in the store; only a built key can be pinned")
        data = canonical.encode(Pin(key=key, created_ns=time.time_ns()))
        return await store.storage.put(store.pin_path(key), data)


async def unpin(store: Store, key: str) -> None:
    """Remove the pin of ``key``; UserError if it is not pinned."""
    path = store.pin_path(key)
    try:
        await store.storage.get(path)
    except ObjectNotFound:
        raise UserError(f"{key} is not pinned") from None
    await store.storage.delete(path)


def match_pinned(keys: list[str], prefix: str) -> str:
    """The one pinned key starting with ``prefix`` (with or without ``blake3:``)."""
    bare = prefix.removeprefix("blake3:")
    found = [k for k in keys if bare and k[7:].startswith(bare)]
    if not found:
        raise KeyLookupError(prefix, f"no pinned key matches {prefix!r}")
    if len(found) > 1:
        shown = ", ".join(found[:5])
        raise KeyLookupError(prefix, f"{prefix!r} is ambiguous; it matches pinned keys {shown}", tuple(found))
    return found[0]

"""One execution per key: the coordinator interface and its local implementation
(spec/locks.md, "Coordinator interface").

A build asks its :class:`Coordinator` for a :class:`Hold` on the key it is about to run::

    async with coordinator.hold(key, on_wait) as hold:
        ...                      # re-check the store for a realisation of key; else run
        await hold.check()       # fencing: right before writing the realisation
        await store.put_realisation(real)

Contract of every implementation:

- ``hold`` returns once the key is held; while it waits it calls ``on_wait(owner)`` at
  most once (``owner`` is a one-line description such as ``pid 123 on gpu01 (alice)``)
  and stays cancellable;
- the hold is released on exit, also on error and cancellation;
- after the hold is granted the caller MUST re-check the store for a realisation of the
  key: the previous holder may have written one (that is how a waiter reuses the
  result instead of running the key again);
- ``Hold.check()`` raises :class:`~qwexstore.errors.LeaseLost` if the hold is no longer
  exclusive; a result MUST NOT be realised after it raised.

Implementations: :class:`FlockCoordinator` (a ``flock`` per key in a scratch directory:
one machine, or every machine sharing a local store's directory) and
:class:`~qwexstore.leases.LeaseCoordinator` (that ``flock``, then a lease object in a
shared store).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from .locks import KeyLock, current_user, owner_text

__all__ = ["Coordinator", "FlockCoordinator", "FlockHold", "Hold", "owner_text"]


class Hold(Protocol):
    """The exclusive right to build one key, granted by a :class:`Coordinator`."""

    #: Who holds it (this process), as :func:`owner_text` writes it.
    holder: str

    async def check(self) -> None:
        """Raise LeaseLost if the key is no longer held exclusively by us. Call it right
        before writing the realisation (fencing)."""
        ...


class Coordinator(Protocol):
    """Grants :class:`Hold` s on keys; see the module docstring for the contract."""

    def hold(
        self, key: str, on_wait: Callable[[str], None] | None = None
    ) -> AbstractAsyncContextManager[Hold]:
        """``async with`` it: held inside, released on exit (error and cancellation too)."""
        ...


class FlockHold:
    """A held :class:`~qwexstore.locks.KeyLock`. ``check`` never fails: the kernel keeps a
    ``flock`` for as long as its process lives."""

    def __init__(self, holder: str) -> None:
        self.holder = holder

    async def check(self) -> None:
        """Nothing to do: a ``flock`` cannot be taken over."""


class FlockCoordinator:
    """Today's local protocol: an exclusive ``flock`` on ``<scratch>/locks/<key hex>``.

    Serialises the builders that share ``scratch`` (spec/locks.md, "Protocol").
    """

    def __init__(self, scratch: str) -> None:
        self.scratch = scratch

    @contextlib.asynccontextmanager
    async def hold(self, key: str, on_wait: Callable[[str], None] | None = None) -> AsyncIterator[Hold]:
        """Take the key's ``flock`` (waiting, cancellably); release it on exit."""
        async with KeyLock(self.scratch, key, on_wait):
            yield FlockHold(owner_text(os.getpid(), socket.gethostname(), current_user()))

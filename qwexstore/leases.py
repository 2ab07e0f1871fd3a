"""One execution per key across machines: a lease object in a shared store (spec/locks.md,
"Leases").

The lease of key ``K`` is the mutable ref ``leases/<h2>/<K hex>`` holding a :class:`Lease`
(``qwex.lease/1``). Every change is a compare-and-swap on the ref's etag, so of two
writers racing from the same state exactly one succeeds:

- acquire: create with ``ref_put(expect=None)``; if a lease exists and is live, wait
  (polling with backoff, cancellable, ``on_wait(owner)`` once); if it has expired, take it
  over with ``ref_put(expect=<its etag>)``;
- keep: a heartbeat task renews it every ``ttl/3`` with ``ref_put(expect=<our etag>)``; a
  renewal that fails because someone else replaced it marks the hold lost;
- fence: :meth:`LeaseHold.check` renews once more and raises LeaseLost if that fails;
- release: ``ref_delete(expect=<our etag>)``, on success, error and cancellation alike.

:class:`LeaseCoordinator` takes the local ``flock`` of the key first, so the processes of
one machine queue on the kernel lock and only one of them polls the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Final, Protocol

import msgspec

from . import canonical
from .digest import Digest, hex_of
from .errors import LeaseLost, StoreError, UserError
from .locks import KeyLock, current_user, owner_text
from .storage_types import Versioned

__all__ = ["DEFAULT_TTL_S", "TTL_ENV", "Lease", "LeaseCoordinator", "LeaseHold", "Owner", "RefStorage",
           "lease_path", "lease_ttl_s"]

TTL_ENV: Final = "QWEX_LEASE_TTL_S"
DEFAULT_TTL_S: Final = 60.0
#: How a lease we cannot decode is named in messages.
UNKNOWN_HOLDER: Final = "another builder"
#: First and longest pause between polls of a live lease, as fractions of the TTL.
_POLL_FIRST: Final = 0.02
_POLL_MAX: Final = 0.25


class RefStorage(Protocol):
    """The part of ``Storage`` a lease needs: the compare-and-swap ref namespace."""

    async def ref_get(self, path: str) -> Versioned | None: ...
    async def ref_put(self, path: str, data: bytes, *, expect: str | None) -> str | None: ...
    async def ref_delete(self, path: str, *, expect: str) -> bool: ...


class Owner(msgspec.Struct, frozen=True):
    """Who holds a lease; for messages only (the ``token`` decides ownership)."""

    host: str
    pid: int
    user: str

    def text(self) -> str:
        return owner_text(self.pid, self.host, self.user)


class Lease(msgspec.Struct, frozen=True, tag="qwex.lease/1", tag_field="format"):
    """A lease record. Unknown fields are ignored, so a later minor revision stays
    readable; a lease that does not decode at all counts as held (spec/locks.md)."""

    key: Digest
    owner: Owner
    #: Random, new for every acquisition; a holder recognises its own lease by it.
    token: str
    acquired_ns: int
    expires_ns: int


def lease_path(key: str) -> str:
    """``leases/<h2>/<key hex>``."""
    h = hex_of(key)
    return f"leases/{h[:2]}/{h}"


def lease_ttl_s(environ: Mapping[str, str] | None = None) -> float:
    """The lease duration: ``$QWEX_LEASE_TTL_S`` seconds, default 60. UserError if malformed."""
    text = (os.environ if environ is None else environ).get(TTL_ENV, "")
    if not text:
        return DEFAULT_TTL_S
    try:
        ttl = float(text)
    except ValueError:
        ttl = -1.0
    if not 0.1 <= ttl <= 86400:
        raise UserError(f"{TTL_ENV}={text!r}: want a number of seconds between 0.1 and 86400")
    return ttl


def decode_lease(data: bytes) -> Lease | None:
    """The lease in ``data``, or None if it does not decode."""
    try:
        return canonical.decode(data, Lease)
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None


class LeaseHold:
    """A held lease: renewed by a heartbeat task until :meth:`release`."""

    def __init__(self, storage: RefStorage, lease: Lease, etag: str, ttl_s: float) -> None:
        self.storage = storage
        self.lease = lease
        self.etag = etag
        self.ttl_s = ttl_s
        self.path = lease_path(lease.key)
        self.holder = lease.owner.text()
        #: Who took the lease over, once we know we lost it.
        self.lost_to: str | None = None
        self._mutex = asyncio.Lock()  # one compare-and-swap on our etag at a time
        self._beat = asyncio.create_task(self._heartbeat())

    async def check(self) -> None:
        """Fencing: renew now; raise LeaseLost if the lease is no longer ours.

        After it returns the lease is ours for one more TTL, so a realisation written at
        once is written under the lease (assuming clocks agree within the TTL)."""
        if self.lost_to is None:
            await self._renew()
        if self.lost_to is not None:
            raise LeaseLost(self.lease.key, self.lost_to)

    async def _renew(self) -> None:
        """One renewal. Sets ``lost_to`` if someone else holds the lease now; StoreError
        (the store did not answer) leaves the state unknown and is raised."""
        async with self._mutex:
            if self.lost_to is not None:
                return
            now = time.time_ns()
            lease = msgspec.structs.replace(self.lease, expires_ns=now + int(self.ttl_s * 1e9))
            etag = await self.storage.ref_put(self.path, canonical.encode(lease), expect=self.etag)
            if etag is None:
                # Replaced: by a taker, or by our own write whose answer was lost.
                cur = await self.storage.ref_get(self.path)
                mine = decode_lease(cur.data) if cur is not None else None
                if cur is not None and mine is not None and mine.token == self.lease.token:
                    self.etag, self.lease = cur.etag, mine
                    return
                self.lost_to = mine.owner.text() if mine is not None else (
                    UNKNOWN_HOLDER if cur is not None else "nobody (the lease was deleted)")
                return
            self.etag, self.lease = etag, lease

    async def _heartbeat(self) -> None:
        """Renew every ttl/3 until lost or cancelled. A store that does not answer is
        retried until our lease would have expired; then the hold counts as lost."""
        while self.lost_to is None:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                await self._renew()
            except (StoreError, OSError):  # not answering: try again at the next beat
                if time.time_ns() >= self.lease.expires_ns:
                    self.lost_to = "nobody we know of (the lease expired: the store did not answer)"

    async def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours. Never raises a
        StoreError: an undeleted lease expires within one TTL."""
        self._beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._beat
        if self.lost_to is None:
            async with self._mutex:
                with contextlib.suppress(StoreError):
                    await self.storage.ref_delete(self.path, expect=self.etag)


class LeaseCoordinator:
    """Local ``flock`` first, then the key's lease in ``storage``; see the module docstring.

    ``scratch`` is this machine's scratch directory (the ``flock`` domain); ``ttl_s``
    defaults to :func:`lease_ttl_s`.
    """

    def __init__(self, storage: RefStorage, scratch: str, ttl_s: float | None = None) -> None:
        self.storage = storage
        self.scratch = scratch
        self.ttl_s = lease_ttl_s() if ttl_s is None else ttl_s

    @contextlib.asynccontextmanager
    async def hold(self, key: str, on_wait: Callable[[str], None] | None = None) -> AsyncIterator[LeaseHold]:
        """Hold ``key`` on this machine and in the store; release both on exit."""
        told: list[str] = []

        def tell(owner: str) -> None:
            if not told and on_wait is not None:
                on_wait(owner)
            told.append(owner)

        async with KeyLock(self.scratch, key, tell):
            hold = await self._acquire(key, tell)
            try:
                yield hold
            finally:
                await asyncio.shield(hold.release())

    def _new_lease(self, key: str) -> Lease:
        now = time.time_ns()
        owner = Owner(socket.gethostname(), os.getpid(), current_user())
        return Lease(key, owner, secrets.token_hex(16), now, now + int(self.ttl_s * 1e9))

    async def _acquire(self, key: str, tell: Callable[[str], None]) -> LeaseHold:
        """Create or take over the lease; wait while another live holder has it.

        A lease that does not decode cannot say when it expires: it counts as live until
        its etag has stayed the same for one TTL on our clock."""
        path = lease_path(key)
        pause = self.ttl_s * _POLL_FIRST
        seen: tuple[str, float] | None = None  # an undecodable lease's etag, first seen at
        expect: str | None = None
        while True:
            lease = self._new_lease(key)
            etag = await self.storage.ref_put(path, canonical.encode(lease), expect=expect)
            if etag is not None:
                return LeaseHold(self.storage, lease, etag, self.ttl_s)
            cur = await self.storage.ref_get(path)
            if cur is None:  # released in between: create it
                expect = None
                continue
            other = decode_lease(cur.data)
            if other is not None:
                expired = other.expires_ns < time.time_ns()
                holder = other.owner.text()
            else:
                if seen is None or seen[0] != cur.etag:
                    seen = (cur.etag, time.monotonic())
                expired = time.monotonic() - seen[1] >= self.ttl_s
                holder = UNKNOWN_HOLDER
            if expired:  # take it over, unless another taker is faster
                expect = cur.etag
                continue
            tell(holder)
            expect = None
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, self.ttl_s * _POLL_MAX, 5.0)

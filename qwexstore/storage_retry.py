"""Retry with exponential backoff for the network backends (spec/storage.md, "Errors").

A backend wraps each remote call in :func:`retrying` with a predicate that says which
exceptions are transient. Transient failures are retried, with jittered exponential
backoff (50 ms doubling to at most 2 s), until the budget of ``QWEX_STORE_RETRY_S``
seconds (default 30) is spent; then :class:`TransientStoreError` is raised, one line,
naming the operation and the last failure, with the original exception as ``__cause__``.
Anything else propagates unchanged at once (the backend maps it to a StoreError).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from .errors import QwexError, TransientStoreError

__all__ = ["DEFAULT_RETRY_S", "describe", "env_seconds", "retry_budget_s", "retrying"]

T = TypeVar("T")

DEFAULT_RETRY_S = 30.0
_FIRST_DELAY_S = 0.05
_MAX_DELAY_S = 2.0


def env_seconds(name: str, default: float) -> float:
    """The environment variable ``name`` as seconds (>= 0); ``default`` if unset or not a number."""
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


def retry_budget_s() -> float:
    """``QWEX_STORE_RETRY_S`` as seconds (>= 0), else the default."""
    return env_seconds("QWEX_STORE_RETRY_S", DEFAULT_RETRY_S)


def describe(e: BaseException) -> str:
    """A one-line description of a third-party exception: its type and first line."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


async def retrying(
    op: Callable[[int], Awaitable[T]],
    *,
    is_transient: Callable[[BaseException], bool],
    what: str,
    budget_s: float | None = None,
) -> T:
    """Await ``op(attempt)`` (attempt counts from 0) until it succeeds, retrying transient
    failures within the budget. ``op`` MUST be safe to repeat: a retried attempt may
    follow one that took effect but whose answer was lost (``attempt > 0`` tells it so).
    QwexErrors are never retried."""
    budget = retry_budget_s() if budget_s is None else budget_s
    deadline = time.monotonic() + budget
    delay = _FIRST_DELAY_S
    attempt = 0
    while True:
        try:
            return await op(attempt)
        except QwexError:
            raise
        except Exception as e:
            if not is_transient(e):
                raise
            now = time.monotonic()
            if now >= deadline:
                raise TransientStoreError(
                    f"{what}: {describe(e)} (gave up after {budget:g} s; QWEX_STORE_RETRY_S sets the budget)"
                ) from e
            await asyncio.sleep(min(delay * random.uniform(0.5, 1.0), max(0.0, deadline - now)))
            delay = min(delay * 2, _MAX_DELAY_S)
            attempt += 1

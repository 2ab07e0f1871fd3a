"""``$QWEX_HOME``: where a user's qwex keeps its config, keys, index and default store.

A module of its own, importing nothing, so that locating the store (every command, the
cache hit included) does not load the config's formats (:mod:`qwexstore.config`, which
re-exports :func:`qwex_home`)."""

from __future__ import annotations

import os

__all__ = ["qwex_home"]


def qwex_home() -> str:
    """``$QWEX_HOME`` or ``~/.qwex``."""
    return os.environ.get("QWEX_HOME") or os.path.join(os.path.expanduser("~"), ".qwex")

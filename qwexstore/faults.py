"""Crash points: where the crash-safety tests kill qwex (spec/store.md, "Crash consistency").

``crashpoint(name)`` marks a step between two durable writes. When the environment
variable ``QWEX_TEST_CRASH_AT`` is ``NAME`` or ``NAME:N``, the process sends itself SIGKILL
at the N-th (default first) time it reaches ``NAME``, exactly as ``kill -9`` from outside
would, with no cleanup of any kind. Unset (always, outside the tests), a crash point costs
one comparison.
"""

from __future__ import annotations

import os

__all__ = ["POINTS", "crashpoint"]

#: Every crash point, in the order a build (then a checkout, then gc) reaches them.
POINTS = (
    "snapshot",  # a source bundle blob is stored, its snapshot record is not
    "hash",  # hashing outputs: some files hashed
    "tmp",  # an object's bytes are complete in tmp/, not yet under their final name
    "blob",  # some output blobs are stored (moved in), the manifest is not
    "manifest",  # the output manifest is stored, the run record is not
    "run",  # the run record is stored, the realisation is not
    "realisation",  # the realisation is stored, the index entries are not
    "index.commit",  # inside the index write transaction, before its commit
    "materialize",  # some files of a tree are in place (staging inputs, or a checkout)
    "delete",  # gc or verify --repair: some objects deleted, in the reverse write order
    "transfer",  # push or pull: some objects copied to the destination, the realisation not yet
)

_AT = os.environ.get("QWEX_TEST_CRASH_AT", "")
_NAME, _, _NTH = _AT.partition(":")
_hits = 0


def crashpoint(name: str) -> None:
    """SIGKILL this process if the tests asked for a crash at this point (see module doc)."""
    global _hits
    if name != _NAME:
        return
    _hits += 1
    if _hits >= int(_NTH or 1):
        import signal  # only when crashing: this module is on every path

        os.kill(os.getpid(), signal.SIGKILL)

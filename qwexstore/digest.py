"""Digests: ``blake3:<64 lowercase hex>`` strings, and the functions that make them.

Contract (spec/digests.md):
- Every digest names its algorithm. Only ``blake3`` (256-bit) exists in format version 1.
- Raw content (files, logs, source bundles) is hashed as its exact bytes: ``b3sum`` agrees.
- Structured objects (derivations, manifests, snapshots) are hashed over a domain tag
  (``qwex:<kind>:v1`` then a NUL byte) followed by their canonical encoding, so bytes of
  one kind can never be mistaken for another.
- Nothing is normalised before hashing (no line-ending or Unicode conversion).
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Final

import blake3
import msgspec

__all__ = [
    "DIGEST_RE",
    "Digest",
    "hash_bytes",
    "hash_file",
    "hash_tagged",
    "hex_of",
    "is_digest",
    "parse_digest",
]

PREFIX: Final = "blake3:"
DIGEST_RE: Final = re.compile(r"^blake3:[0-9a-f]{64}$")

#: A digest string as it appears in every format. msgspec validates the pattern on decode.
Digest = Annotated[str, msgspec.Meta(pattern=r"^blake3:[0-9a-f]{64}$")]

# Below this size a single-threaded in-memory hash beats mmap + thread start-up.
_MMAP_THRESHOLD: Final = 4 * 1024 * 1024


def is_digest(text: str) -> bool:
    """True if ``text`` is a well-formed digest string."""
    return DIGEST_RE.match(text) is not None


def parse_digest(text: str) -> str:
    """Return the hex part of a digest string; raise ValueError naming the input otherwise."""
    if not is_digest(text):
        raise ValueError(f"not a digest (want blake3:<64 hex>): {text!r}")
    return text[len(PREFIX) :]


def hex_of(digest: str) -> str:
    """The hex part of a digest already known to be valid."""
    return digest[len(PREFIX) :]


def hash_bytes(data: bytes) -> str:
    """Digest of raw content."""
    return PREFIX + blake3.blake3(data).hexdigest()


def hash_tagged(kind: str, canonical: bytes) -> str:
    """Digest of a structured object: blake3(b"qwex:<kind>:v1\\0" + canonical)."""
    h = blake3.blake3(f"qwex:{kind}:v1".encode() + b"\0")
    h.update(canonical)
    return PREFIX + h.hexdigest()


def hash_file(path: str | os.PathLike[str], size: int | None = None) -> str:
    """Digest of a file's bytes. Large files are hashed via mmap with all cores.

    Symlinks are followed; callers that must not follow them check first.
    """
    if size is None:
        size = os.stat(path).st_size
    if size >= _MMAP_THRESHOLD:
        h = blake3.blake3(max_threads=blake3.blake3.AUTO)
        h.update_mmap(path)
        return PREFIX + h.hexdigest()
    with open(path, "rb") as f:
        return PREFIX + blake3.blake3(f.read()).hexdigest()

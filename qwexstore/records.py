"""Store records other than manifests: derivation records, snapshots, runs, realisations.

Formats and write-ordering rules: spec/store.md. Times are integer nanoseconds since the
Unix epoch (UTC); no floats appear in any stored format.

- :class:`DerivationRecord` stores a derivation under its hash, with the non-identity facts
  needed to build it again from the store alone (label, source snapshot, image reference,
  placement of its layers, names of pass-through variables).
- :class:`Snapshot` says how to recreate a source commit: git bundles, oldest first.
- :class:`RunRecord` is written for every execution, whatever its outcome.
- :class:`Realisation` binds a key to an output manifest. It is written last: its existence
  is what makes a result valid, and it names only objects that already exist.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from . import canonical
from .derivation import Derivation
from .digest import Digest, hash_tagged
from .layers import Layer

__all__ = [
    "DerivationRecord",
    "Realisation",
    "RunRecord",
    "RunStatus",
    "Signature",
    "Snapshot",
]

RunStatus = Literal["succeeded", "failed", "cancelled"]


class SourceRef(msgspec.Struct, forbid_unknown_fields=True):
    """Where the selected source of a derivation comes from (not identity)."""

    commit: str
    snapshot: Digest
    include: list[str]
    exclude: list[str]


class DerivationRecord(msgspec.Struct, forbid_unknown_fields=True, tag="qwex.drv/1", tag_field="format"):
    """A derivation plus what is needed to run it again. Stored under ``derivation.hash()``.

    ``upstream_names`` and ``upstreams`` describe the ``drv:`` inputs of a resolved
    derivation by destination: the upstream's label, and the key whose realisation's output
    manifest is the tree input there. Both are informational (not identity, not covered by
    the name) and may omit destinations the writer did not know; readers treat a missing
    entry, or a named key that is no longer in the store, as unknown.
    """

    name: str
    derivation: Derivation
    source: SourceRef | None
    image_ref: str | None
    layers: list[Layer]
    pass_env: list[str]
    upstream_names: dict[str, str] = msgspec.field(default_factory=dict)
    upstreams: dict[str, Digest] = msgspec.field(default_factory=dict)


class Snapshot(msgspec.Struct, forbid_unknown_fields=True):
    """A source commit, recreatable from ``bundles`` applied in order (each a git bundle v2).

    Digest: ``blake3(b"qwex:snapshot:v1\\0" + canonical)``.
    """

    commit: str
    bundles: list[Digest]

    def canonical(self) -> bytes:
        """The stored and hashed bytes."""
        return canonical.encode(self)

    def digest(self) -> str:
        """The snapshot's digest."""
        return hash_tagged("snapshot", self.canonical())


class RunRecord(msgspec.Struct, forbid_unknown_fields=True, tag="qwex.run/1", tag_field="format"):
    """One execution of a derivation, whatever its outcome.

    ``impure`` holds environment facts that reached the job but are not in the key (PATH
    when no image pins the environment); pass-through variable values are never recorded.
    """

    run_id: str
    key: Digest
    drv: Digest
    name: str
    status: RunStatus
    exit_code: int | None
    started_ns: int
    finished_ns: int
    host: str
    user: str
    driver: str
    stdout: Digest | None
    stderr: Digest | None
    manifest: Digest | None
    impure: dict[str, str]
    message: str = ""

    @property
    def duration_ns(self) -> int:
        """Wall time of the execution."""
        return self.finished_ns - self.started_ns


class Signature(msgspec.Struct, forbid_unknown_fields=True):
    """A signature over a realisation's signed fields (format reserved; see spec/store.md)."""

    key_id: str
    sig: str


class Realisation(msgspec.Struct, forbid_unknown_fields=True, tag="qwex.realisation/1", tag_field="format"):
    """Key -> output manifest. Written only after every object it names exists."""

    key: Digest
    manifest: Digest
    run_id: str
    created_ns: int
    signatures: list[Signature] = msgspec.field(default_factory=list)

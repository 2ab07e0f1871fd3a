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
- :class:`Signature` is one signer's ed25519 signature of a realisation's key and manifest,
  a separate write-once object next to it (spec/signatures.md), so that a lab can add its
  signature to a result it did not build.
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal

import blake3
import msgspec

from . import canonical
from .derivation import Derivation
from .digest import Digest, hash_tagged
from .layers import Layer

__all__ = [
    "KEY_NAME_RE",
    "DerivationRecord",
    "Realisation",
    "RunRecord",
    "RunStatus",
    "Signature",
    "Snapshot",
    "decode_sig",
    "parse_signer",
    "signer_id",
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


#: A key name: letters, digits, ``.``, ``_``, ``-``; not starting with a dot or dash (it is a
#: file name under ``$QWEX_HOME/keys/`` and the part before the colon of a public key).
KEY_NAME_RE: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")  # use fullmatch

#: Shapes only (length and alphabet); :func:`parse_signer` and :func:`decode_sig` check
#: that the base64 is canonical.
_SIGNER = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}:[A-Za-z0-9+/]{43}=\Z"
_SIG = r"^[A-Za-z0-9+/]{86}==\Z"


class Signature(msgspec.Struct, forbid_unknown_fields=True, tag="qwex.signature/1", tag_field="format"):
    """``signer``'s ed25519 signature of ``key`` and ``manifest`` (spec/signatures.md).

    Stored at ``signatures/<h2>/<key hex>/<signer id>``. ``signer`` is ``NAME:<base64 of
    the 32-byte public key>``; ``sig`` the base64 of the 64-byte signature of
    :func:`qwexstore.signing.signed_bytes`. Decoding checks the shapes; whether the
    signature verifies, and whether its signer is trusted, is :mod:`qwexstore.signing`'s.
    """

    key: Digest
    manifest: Digest
    signer: Annotated[str, msgspec.Meta(pattern=_SIGNER)]
    sig: Annotated[str, msgspec.Meta(pattern=_SIG)]

    def signer_id(self) -> str:
        """The object name of this signature under its key (ValueError if malformed)."""
        return signer_id(parse_signer(self.signer)[1])

    def validate(self) -> None:
        """ValueError, naming the field, unless ``signer`` and ``sig`` are canonical base64
        of a 32-byte key and a 64-byte signature (decoding checks only their shapes)."""
        try:
            parse_signer(self.signer)
        except ValueError as e:
            raise ValueError(f"signer: {e}") from None
        try:
            decode_sig(self.sig)
        except ValueError as e:
            raise ValueError(f"sig: {e}") from None


def _b64(text: str, size: int, what: str) -> bytes:
    """Decode canonical base64 of exactly ``size`` bytes; ValueError otherwise."""
    import base64  # signatures only: reading a run record needs no base64
    import binascii

    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"{what} is not base64") from None
    if len(raw) != size:
        raise ValueError(f"{what} is {len(raw)} bytes, not {size}")
    if base64.b64encode(raw).decode("ascii") != text:
        raise ValueError(f"{what} is not in canonical base64 (padding bits set)")
    return raw


def parse_signer(text: str, what: str = "the public key") -> tuple[str, bytes]:
    """``NAME:<base64>`` -> (name, raw 32 bytes); ValueError saying what is wrong."""
    name, colon, b64 = text.partition(":")
    if not colon:
        raise ValueError("missing ':' between the name and the base64 key")
    if not KEY_NAME_RE.fullmatch(name):
        raise ValueError(f"bad key name {name!r} (letters, digits, '.', '_', '-'; at most 64)")
    return name, _b64(b64, 32, what)


def decode_sig(text: str) -> bytes:
    """The raw 64-byte signature of a ``sig`` field; ValueError if malformed."""
    return _b64(text, 64, "the signature")


def signer_id(raw: bytes) -> str:
    """A signer's id: the first 32 hex digits of blake3 of its raw public key."""
    return blake3.blake3(raw).hexdigest()[:32]


class Realisation(msgspec.Struct, forbid_unknown_fields=True, tag="qwex.realisation/2", tag_field="format"):
    """Key -> output manifest. Written only after every object it names exists.

    Version 2 dropped version 1's (always empty) ``signatures`` list: signatures are
    separate objects (:class:`Signature`), so one can be added after the fact.
    """

    key: Digest
    manifest: Digest
    run_id: str
    created_ns: int

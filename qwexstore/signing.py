"""Signing realisations, and accepting them only under trusted signatures (spec/signatures.md).

A signature is a separate write-once object, ``signatures/<h2>/<key hex>/<signer id>``
(:class:`~qwexstore.records.Signature`), over the signed bytes::

    b"qwex:signature:v1\\0" + canonical JSON of {"key": KEY, "manifest": MANIFEST}

It covers exactly what a realisation asserts (this key produced this output manifest),
not the run id or the time, so every lab that built or checked a result can sign the
same statement. A signature counts only for a realisation with the same key and manifest.

:func:`check_trusted` is the gate for a realisation from another store (pull,
substitution): it returns a trusted signature that verifies, or raises
:class:`~qwexstore.errors.UntrustedObject` (reasons: malformed signature, unsigned, bad
signature by NAME, signed only by untrusted keys). Blobs, manifests and the other records
need no signature: they are checked against their digests, which the signed realisation
names (directly or transitively).
"""

from __future__ import annotations

import msgspec

from . import canonical
from .digest import is_digest
from .errors import ObjectNotFound, StoreError, UntrustedObject
from .keys import PublicKey, SecretKey, Trust
from .records import Realisation, Signature, decode_sig, parse_signer
from .store import Store

__all__ = [
    "DOMAIN",
    "SignatureScan",
    "check_trusted",
    "make_signature",
    "read_signatures",
    "sign_realisation",
    "signatures_of",
    "signed_bytes",
    "verifies",
]

#: The domain tag in front of every signed message (never valid JSON, never a digest preimage).
DOMAIN = b"qwex:signature:v1\0"


def signed_bytes(key: str, manifest: str) -> bytes:
    """The exact bytes a signature of (``key``, ``manifest``) signs. ValueError unless
    both are digests."""
    if not (is_digest(key) and is_digest(manifest)):
        raise ValueError("a signature covers a key and a manifest digest")
    return DOMAIN + canonical.encode({"key": key, "manifest": manifest})


def make_signature(secret: SecretKey, key: str, manifest: str) -> Signature:
    """``secret``'s signature of (``key``, ``manifest``). Deterministic: the same inputs
    give the same record, byte for byte."""
    import base64

    raw = secret.sign(signed_bytes(key, manifest))
    return Signature(key=key, manifest=manifest, signer=secret.public().text(),
                     sig=base64.b64encode(raw).decode("ascii"))


def verifies(sig: Signature) -> bool:
    """True iff ``sig`` is a valid signature, by the key its ``signer`` names, of its own
    ``key`` and ``manifest``. Trust is a separate question (:class:`~qwexstore.keys.Trust`)."""
    try:
        name, raw = parse_signer(sig.signer)
        return PublicKey(name, raw).verify(signed_bytes(sig.key, sig.manifest), decode_sig(sig.sig))
    except ValueError:
        return False


async def sign_realisation(store: Store, real: Realisation, secret: SecretKey) -> bool:
    """Write ``secret``'s signature of ``real`` to ``store``; True if written, False if a
    valid signature of ``real`` by this key is already there (idempotent).

    The one exception to write-once: an object at this signer's path that is not a valid
    signature of ``real`` (left by a crash in gc after the key's old realisation went,
    or damaged) can never count, and is replaced."""
    sig = make_signature(secret, real.key, real.manifest)
    if await store.put_signature(sig):
        return True
    path = store.signature_path(real.key, sig.signer_id())
    try:
        old = await store.get_signature(path)
        if old.manifest == real.manifest and verifies(old):
            return False
    except ObjectNotFound:
        pass
    except StoreError:
        pass  # malformed: replace it
    await store.storage.delete(path)
    return await store.put_signature(sig)


class SignatureScan(msgspec.Struct):
    """The signature objects under one key: ``ok`` decoded ones (path, record), and
    ``bad`` ones that do not decode or do not belong where they are (path, reason)."""

    ok: list[tuple[str, Signature]]
    bad: list[tuple[str, str]]


async def read_signatures(store: Store, key: str) -> SignatureScan:
    """Read every object under ``key``'s signature directory (one listing, then one read
    each). Nothing is verified cryptographically here."""
    scan = SignatureScan([], [])
    for path in sorted(await store.storage.list(store.signature_prefix(key))):
        try:
            scan.ok.append((path, await store.get_signature(path)))
        except ObjectNotFound:
            continue  # deleted since the listing
        except StoreError as e:
            scan.bad.append((path, str(e)))
    return scan


async def signatures_of(store: Store, key: str) -> list[Signature]:
    """The well-formed signature records of ``key``'s realisation, whatever their manifest
    and whether or not they verify; malformed objects are skipped."""
    return [sig for _, sig in (await read_signatures(store, key)).ok]


def _at(where: str, path: str) -> str:
    return f"{where.rstrip('/')}/{path}" if where else path


async def check_trusted(store: Store, real: Realisation, trust: Trust, where: str) -> Signature:
    """A signature of ``real`` in ``store`` by a key in ``trust`` that verifies.

    Raises UntrustedObject(path, reason), the path prefixed with ``where`` (the store's
    name or location, for the message), when:

    - an object under the key's signature directory is malformed ("malformed signature");
    - no signature covers ``real``'s key and manifest ("unsigned"; signatures of another
      manifest do not count);
    - a trusted signer's signature does not verify ("bad signature by NAME", NAME from
      trusted-keys), even if another trusted one does: it proves tampering;
    - every signature is by keys not in ``trust`` ("signed only by untrusted keys: NAMES").
    """
    rpath = _at(where, store.realisation_path(real.key))
    scan = await read_signatures(store, real.key)
    if scan.bad:
        path, reason = scan.bad[0]
        raise UntrustedObject(_at(where, path), f"malformed signature: {reason}")
    mine = [s for _, s in scan.ok if s.key == real.key and s.manifest == real.manifest]
    if not mine:
        other = f" (the {len(scan.ok)} signature(s) there are for another manifest)" if scan.ok else ""
        raise UntrustedObject(rpath, f"unsigned{other}")
    good: list[Signature] = []
    bad: list[str] = []
    untrusted: list[str] = []
    for s in mine:
        pub = trust.trusted(s)
        if pub is None:
            untrusted.append(parse_signer(s.signer)[0])
        elif trust.accepts(s):
            good.append(s)
        else:
            bad.append(pub.name)
    if bad:
        raise UntrustedObject(rpath, f"bad signature by {', '.join(sorted(set(bad)))}")
    if good:
        return good[0]
    raise UntrustedObject(rpath, f"signed only by untrusted keys: {', '.join(sorted(set(untrusted)))}")

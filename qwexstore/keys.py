"""Signing keys and trust: ed25519 key pairs, public key text, the trusted set (spec/signatures.md).

Files under ``$QWEX_HOME/keys/`` (the directory is created mode 0700):

- ``NAME.secret``: ``NAME:<base64 of the 32-byte ed25519 seed>`` and a newline, mode 0600,
  created exclusively (an existing key is never overwritten).
- ``NAME.public``: ``NAME:<base64 of the 32-byte public key>`` and a newline; the text a
  peer lab puts in its ``trusted-keys``.

A key name is 1-64 of letters, digits, ``.``, ``_``, ``-``, not starting with ``.`` or
``-`` (no ``/`` and no ``:``): it is a file name and the label before the colon. Trust
is by public key bytes; the name is only a label for messages.

``cryptography`` is imported only when a key is made, used or verified: a build that
signs nothing does not pay for it.
"""

from __future__ import annotations

import base64
import os
import stat
from typing import TYPE_CHECKING

import msgspec

from .config import Config, qwex_home
from .errors import UserError
from .records import KEY_NAME_RE, Signature, decode_sig, parse_signer, signer_id

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "PublicKey",
    "SecretKey",
    "Trust",
    "check_key_name",
    "generate_key",
    "keys_dir",
    "list_keys",
    "load_signing_key",
    "parse_public_key",
    "trust_from_config",
]


class PublicKey(msgspec.Struct, frozen=True):
    """An ed25519 public key with its label. ``raw`` is the 32-byte key."""

    name: str
    raw: bytes

    def text(self) -> str:
        """``NAME:<base64>``: the form in ``trusted-keys`` and in a signature's ``signer``."""
        return f"{self.name}:{base64.b64encode(self.raw).decode('ascii')}"

    @property
    def id(self) -> str:
        """The signer id (the name of this key's signature objects)."""
        return signer_id(self.raw)

    def verify(self, msg: bytes, sig: bytes) -> bool:
        """True iff ``sig`` is this key's signature of ``msg`` (never raises for bad input)."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(sig, msg)
        except (InvalidSignature, ValueError):
            return False
        return True


class SecretKey:
    """An ed25519 signing key. Its ``repr`` never shows the seed."""

    __slots__ = ("_key", "name")

    def __init__(self, name: str, seed: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        if len(seed) != 32:
            raise ValueError("an ed25519 seed is 32 bytes")
        self.name = name
        self._key: Ed25519PrivateKey = Ed25519PrivateKey.from_private_bytes(seed)

    def __repr__(self) -> str:
        return f"SecretKey({self.name!r})"

    def public(self) -> PublicKey:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        return PublicKey(self.name, self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def sign(self, msg: bytes) -> bytes:
        """The 64-byte ed25519 signature of ``msg`` (deterministic, RFC 8032)."""
        return self._key.sign(msg)

    def _seed(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def check_key_name(name: str) -> str:
    """``name`` if it is a valid key name, else UserError."""
    if not KEY_NAME_RE.fullmatch(name):
        raise UserError(f"bad key name {name!r}: use 1-64 letters, digits, '.', '_', '-', "
                        "not starting with '.' or '-'")
    return name


def keys_dir(home: str | None = None) -> str:
    """``$QWEX_HOME/keys`` (or ``home``/keys)."""
    return os.path.join(home or qwex_home(), "keys")


def generate_key(name: str, home: str | None = None) -> PublicKey:
    """Make a new key pair ``name`` under ``keys_dir(home)``; return its public key.

    The secret file is created with O_EXCL and mode 0600 before anything else is written,
    so an existing key is never overwritten (UserError) and the secret is never readable
    by others, even for a moment. The public file is then written (replacing a stale one:
    it is derived from the secret).
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    check_key_name(name)
    d = keys_dir(home)
    os.makedirs(d, mode=0o700, exist_ok=True)
    path = os.path.join(d, f"{name}.secret")
    seed = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise UserError(f"a key named {name!r} already exists ({path}); "
                        "choose another name, or delete it first") from None
    except OSError as e:
        raise UserError(f"cannot create {path}: {e.strerror}") from None
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, f"{name}:{base64.b64encode(seed).decode('ascii')}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    pub = SecretKey(name, seed).public()
    tmp = os.path.join(d, f".{name}.public.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="ascii") as f:
        f.write(pub.text() + "\n")
    os.replace(tmp, os.path.join(d, f"{name}.public"))
    return pub


def _read_secret(path: str, field: str) -> SecretKey:
    """Load a secret key file, refusing one that others can read."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise UserError(f"{field}: no key file {path}") from None
    except OSError as e:
        raise UserError(f"{field}: cannot read {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{field}: {path} is not a regular file")
        if st.st_mode & 0o077:
            raise UserError(f"{field}: {path} is readable by other users (mode "
                            f"{stat.S_IMODE(st.st_mode):04o}); run `chmod 600 {path}`")
        data = os.read(fd, 4096)
    except OSError as e:
        raise UserError(f"{field}: cannot read {path}: {e.strerror}") from None
    finally:
        os.close(fd)
    try:
        name, seed = parse_signer(data.decode("ascii").rstrip("\n"), "the seed")
    except (UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{field}: {path} is not a qwex secret key (want NAME:<base64 of 32 bytes>): "
                        f"{e}") from None
    return SecretKey(name, seed)


def load_signing_key(config: Config) -> SecretKey | None:
    """The key named by ``signing-key`` (None if unset): a key name under
    ``$QWEX_HOME/keys/``, or a path to a secret key file (anything with a ``/``, or
    starting with ``~``). UserError, naming the field, if the file is missing,
    unreadable, readable by others or malformed."""
    value = config.signing_key
    if value is None:
        return None
    if "/" in value or value.startswith("~"):
        return _read_secret(os.path.expanduser(value), "signing-key")
    if not KEY_NAME_RE.fullmatch(value):
        raise UserError(f"signing-key: {value!r} is neither a key name nor a path")
    path = os.path.join(keys_dir(), f"{value}.secret")
    if not os.path.lexists(path):
        raise UserError(f"signing-key: no key named {value!r} ({path}); "
                        f"create it with `qwex key generate {value}`")
    return _read_secret(path, "signing-key")


def parse_public_key(text: str, field: str = "trusted-keys") -> PublicKey:
    """``NAME:<base64 of 32 bytes>`` -> PublicKey; UserError naming ``field`` otherwise."""
    try:
        name, raw = parse_signer(text.strip())
    except ValueError as e:
        raise UserError(f"{field}: {text!r} is not a public key (want NAME:<base64 of 32 bytes>): "
                        f"{e}") from None
    return PublicKey(name, raw)


class Trust:
    """The public keys whose signatures make a realisation from another store acceptable."""

    def __init__(self, keys: list[PublicKey]) -> None:
        self._by_raw: dict[bytes, PublicKey] = {}
        for k in keys:
            self._by_raw.setdefault(k.raw, k)

    @property
    def keys(self) -> list[PublicKey]:
        return list(self._by_raw.values())

    def __bool__(self) -> bool:
        return bool(self._by_raw)

    def trusted(self, sig: Signature) -> PublicKey | None:
        """The trusted key (with its configured name) that ``sig`` claims to be signed by,
        or None. Says nothing about whether the signature verifies."""
        try:
            _, raw = parse_signer(sig.signer)
        except ValueError:
            return None
        return self._by_raw.get(raw)

    def accepts(self, sig: Signature) -> bool:
        """True iff ``sig``'s signer is trusted AND the signature verifies over its own
        ``key`` and ``manifest``. The caller MUST also check that those equal the
        realisation's (:func:`qwexstore.signing.check_trusted` does)."""
        from .signing import signed_bytes

        pub = self.trusted(sig)
        if pub is None:
            return False
        try:
            raw_sig = decode_sig(sig.sig)
        except ValueError:
            return False
        return pub.verify(signed_bytes(sig.key, sig.manifest), raw_sig)


def trust_from_config(config: Config) -> Trust:
    """The ``trusted-keys`` of a config (UserError naming the field for a malformed one)."""
    return Trust([parse_public_key(t) for t in config.trusted_keys])


def list_keys(home: str | None = None) -> list[PublicKey]:
    """Your key pairs: every ``NAME.secret`` under ``keys_dir(home)`` with its public key
    (read from ``NAME.public``, else derived from the secret), sorted by name."""
    d = keys_dir(home)
    try:
        names = sorted(f.removesuffix(".secret") for f in os.listdir(d) if f.endswith(".secret"))
    except FileNotFoundError:
        return []
    out: list[PublicKey] = []
    for name in names:
        if not KEY_NAME_RE.fullmatch(name):
            continue
        try:
            with open(os.path.join(d, f"{name}.public"), encoding="ascii") as f:
                out.append(parse_public_key(f.read(), f"{name}.public"))
                continue
        except (OSError, UnicodeDecodeError, UserError):
            pass
        out.append(_read_secret(os.path.join(d, f"{name}.secret"), name).public())
    return out

"""``qwex key generate`` and ``qwex key list``, through the real command."""

from __future__ import annotations

import base64
import stat

from conftest import Qwex, assert_user_error

from qwexstore.keys import SecretKey, parse_public_key
from qwexstore.signing import make_signature, verifies

K = "blake3:" + "1" * 64
M = "blake3:" + "2" * 64


def test_generate_prints_a_parseable_public_key_and_keeps_the_secret_private(qwex: Qwex) -> None:
    cp = qwex.ok("key", "generate", "alice")
    lines = cp.stdout.splitlines()
    assert len(lines) == 1
    pub = parse_public_key(lines[0])
    assert pub.name == "alice" and len(pub.raw) == 32
    keys = qwex.home / "keys"
    secret = keys / "alice.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert (keys / "alice.public").read_text() == lines[0] + "\n"
    assert "alice.secret" in cp.stderr  # where it went, on stderr: stdout stays one key
    # the secret file signs under the printed public key
    name, _, seed = secret.read_text().strip().partition(":")
    sk = SecretKey(name, base64.b64decode(seed))
    assert sk.public() == pub and verifies(make_signature(sk, K, M))


def test_generate_refuses_to_overwrite(qwex: Qwex) -> None:
    qwex.ok("key", "generate", "alice")
    secret = qwex.home / "keys" / "alice.secret"
    before = secret.read_bytes()
    assert_user_error(qwex("key", "generate", "alice"), "already exists", "alice.secret")
    assert secret.read_bytes() == before


def test_generate_refuses_unsafe_names(qwex: Qwex) -> None:
    for name in ("a/b", "lab:x", ".hidden", "../up"):
        assert_user_error(qwex("key", "generate", "--", name), "bad key name")
    assert not (qwex.home / "keys").exists() or not any((qwex.home / "keys").iterdir())


def test_list_shows_your_keys_the_signing_key_and_trusted_keys(qwex: Qwex) -> None:
    empty = qwex.ok("key", "list").stdout
    assert "none (`qwex key generate NAME`" in empty and "nothing from another store is accepted" in empty
    alice = qwex.ok("key", "generate", "alice").stdout.strip()
    bob = qwex.ok("key", "generate", "bob").stdout.strip()
    lab = SecretKey("lab-a", bytes(range(32))).public().text()
    (qwex.home / "config.toml").write_text(f'signing-key = "alice"\ntrusted-keys = ["{lab}"]\n')
    out = qwex.ok("key", "list").stdout
    assert f"  {alice}  (signing-key)\n" in out and f"  {bob}\n" in out and f"  {lab}\n" in out
    doc = qwex.json("key", "list")
    assert [k["public"] for k in doc["keys"]] == [alice, bob]
    assert doc["signing_key"] == "alice"
    assert [k["public"] for k in doc["trusted"]] == [lab]
    assert all(len(k["id"]) == 32 for k in doc["keys"] + doc["trusted"])


def test_a_malformed_trusted_key_is_a_one_line_error(qwex: Qwex) -> None:
    qwex.home.mkdir(parents=True, exist_ok=True)
    (qwex.home / "config.toml").write_text('trusted-keys = ["lab-a:AAAA"]\n')
    assert_user_error(qwex("key", "list"), "trusted-keys", "lab-a:AAAA")

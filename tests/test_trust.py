"""Signatures and trust (spec/signatures.md): keys, the signed bytes, signature objects in a
store, the trust check a pull or a substituter applies, and signatures in verify and gc."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
from conftest import GitRepo, Qwex, drv_text, job
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qwexstore import canonical
from qwexstore.config import Config
from qwexstore.errors import StoreError, UntrustedObject, UserError
from qwexstore.keys import (
    PublicKey,
    SecretKey,
    Trust,
    generate_key,
    list_keys,
    load_signing_key,
    parse_public_key,
    trust_from_config,
)
from qwexstore.reach import Ref, list_objects, walk
from qwexstore.records import Realisation, Signature, signer_id
from qwexstore.signing import (
    DOMAIN,
    check_trusted,
    make_signature,
    sign_realisation,
    signatures_of,
    signed_bytes,
    verifies,
)
from qwexstore.store import Store, open_store

T = TypeVar("T")
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

K = "blake3:" + "1" * 64
M = "blake3:" + "2" * 64
M2 = "blake3:" + "3" * 64
LAB_A = SecretKey("lab-a", bytes(range(32)))
LAB_B = SecretKey("lab-b", bytes(range(1, 33)))
EVE = SecretKey("eve", bytes(range(2, 34)))


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def real(manifest: str = M) -> Realisation:
    return Realisation(key=K, manifest=manifest, run_id="r1", created_ns=1)


@pytest.fixture(params=["local", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return run(open_store(str(tmp_path / "store")))
    return run(open_store(f"memory://store-{uuid.uuid4().hex}"))


digests = st.binary(min_size=32, max_size=32).map(lambda b: "blake3:" + b.hex())
seeds = st.binary(min_size=32, max_size=32)


def _flip(raw: bytes, bit: int) -> bytes:
    b = bytearray(raw)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


# -- the signed bytes and the primitive -------------------------------------------------------
def test_signed_bytes_are_the_domain_tag_then_canonical_json() -> None:
    msg = signed_bytes(K, M)
    assert msg.startswith(b"qwex:signature:v1\0") and DOMAIN == b"qwex:signature:v1\0"
    assert msg[len(DOMAIN) :] == canonical.encode({"manifest": M, "key": K})
    assert json.loads(msg[len(DOMAIN) :]) == {"key": K, "manifest": M}
    with pytest.raises(ValueError):
        signed_bytes("blake3:xyz", M)


@PROPS
@given(seed=seeds, key=digests, manifest=digests)
def test_sign_then_verify_round_trips(seed: bytes, key: str, manifest: str) -> None:
    secret = SecretKey("s", seed)
    sig = make_signature(secret, key, manifest)
    assert verifies(sig)
    assert make_signature(secret, key, manifest) == sig  # deterministic
    again = canonical.decode(canonical.encode(sig), Signature)
    again.validate()
    assert again == sig and verifies(again)
    assert sig.signer_id() == signer_id(secret.public().raw) == secret.public().id


@PROPS
@given(
    seed=seeds,
    key=digests,
    manifest=digests,
    field=st.sampled_from(["key", "manifest", "sig", "signer"]),
    data=st.data(),
)
def test_any_single_bit_flip_fails_verification(
    seed: bytes, key: str, manifest: str, field: str, data: st.DataObject
) -> None:
    sig = make_signature(SecretKey("s", seed), key, manifest)
    if field in ("key", "manifest"):
        raw = bytes.fromhex(getattr(sig, field).removeprefix("blake3:"))
        bit = data.draw(st.integers(0, 255))
        value = "blake3:" + _flip(raw, bit).hex()
    elif field == "sig":
        bit = data.draw(st.integers(0, 511))
        value = base64.b64encode(_flip(base64.b64decode(sig.sig), bit)).decode()
    else:
        name, _, b64 = sig.signer.partition(":")
        bit = data.draw(st.integers(0, 255))
        value = f"{name}:{base64.b64encode(_flip(base64.b64decode(b64), bit)).decode()}"
    assert not verifies(msgspec.structs.replace(sig, **{field: value}))


def test_a_secret_key_never_shows_its_seed() -> None:
    assert repr(LAB_A) == "SecretKey('lab-a')"
    assert bytes(range(32)).hex() not in repr(LAB_A)


# -- public key text ----------------------------------------------------------------------------
def test_public_key_text_round_trips() -> None:
    pub = LAB_A.public()
    assert parse_public_key(pub.text()) == pub
    assert parse_public_key(pub.text() + "\n") == pub  # pasted from NAME.public


@pytest.mark.parametrize(
    "text",
    [
        "lab-a",  # no colon
        "lab-a:AAAA",  # 3 bytes
        "lab-a:" + "A" * 43 + "=" + "A",  # trailing junk
        "lab-a:" + "_" * 43 + "=",  # not standard base64
        "lab-a:" + "A" * 42 + "B=",  # padding bits set (non-canonical)
        "a/b:" + base64.b64encode(bytes(32)).decode(),  # a slash in the name
        ":" + base64.b64encode(bytes(32)).decode(),  # no name
        ".hidden:" + base64.b64encode(bytes(32)).decode(),
    ],
)
def test_a_malformed_public_key_is_a_one_line_user_error_naming_trusted_keys(text: str) -> None:
    with pytest.raises(UserError) as ei:
        parse_public_key(text)
    assert str(ei.value).startswith("trusted-keys: ") and "\n" not in str(ei.value)
    with pytest.raises(UserError, match=r"^trusted-keys: "):
        trust_from_config(Config(trusted_keys=[LAB_A.public().text(), text]))


def test_trust_is_by_key_bytes_and_needs_a_valid_signature() -> None:
    trust = trust_from_config(Config(trusted_keys=[LAB_A.public().text()]))
    sig = make_signature(LAB_A, K, M)
    relabelled = msgspec.structs.replace(sig, signer="whatever:" + sig.signer.partition(":")[2])
    assert trust.accepts(sig) and trust.accepts(relabelled)
    assert trust.trusted(relabelled) == LAB_A.public()  # the configured name is the one shown
    assert not trust.accepts(make_signature(EVE, K, M))
    assert not trust.accepts(msgspec.structs.replace(sig, manifest=M2))
    assert not Trust([]) and not Trust([]).accepts(sig)


# -- key files ------------------------------------------------------------------------------------
def test_generate_key_writes_a_private_secret_and_never_overwrites(tmp_path: Path) -> None:
    pub = generate_key("alice", str(tmp_path))
    keys = tmp_path / "keys"
    secret = keys / "alice.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert (keys / "alice.public").read_text() == pub.text() + "\n"
    before = secret.read_bytes()
    with pytest.raises(UserError, match="already exists"):
        generate_key("alice", str(tmp_path))
    assert secret.read_bytes() == before
    assert list_keys(str(tmp_path)) == [pub]


@pytest.mark.parametrize("name", ["a/b", "a:b", ".hidden", "-flag", "", "x" * 65, "tab\t", "nl\n"])
def test_generate_key_refuses_unsafe_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError, match="bad key name"):
        generate_key(name, str(tmp_path))
    assert not (tmp_path / "keys").exists() or not any((tmp_path / "keys").iterdir())


def test_load_signing_key_by_name_and_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEX_HOME", str(tmp_path))
    pub = generate_key("alice")
    assert load_signing_key(Config()) is None
    by_name = load_signing_key(Config(signing_key="alice"))
    assert by_name is not None and by_name.public() == pub
    by_path = load_signing_key(Config(signing_key=str(tmp_path / "keys" / "alice.secret")))
    assert by_path is not None and by_path.public() == pub
    sig = make_signature(by_name, K, M)
    assert verifies(sig) and Trust([pub]).accepts(sig)


def _user_error(config: Config, *needles: str) -> str:
    with pytest.raises(UserError) as ei:
        load_signing_key(config)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("signing-key: "), msg
    for n in needles:
        assert n in msg, msg
    return msg


def test_load_signing_key_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEX_HOME", str(tmp_path))
    _user_error(Config(signing_key="bob"), "no key named 'bob'", "qwex key generate bob")
    _user_error(Config(signing_key=str(tmp_path / "nowhere.secret")), "no key file")
    _user_error(Config(signing_key="a:b"), "neither a key name nor a path")
    generate_key("alice")
    secret = tmp_path / "keys" / "alice.secret"
    for mode in (0o644, 0o640, 0o604):
        os.chmod(secret, mode)
        _user_error(Config(signing_key="alice"), "readable by other users", "chmod 600")
    os.chmod(secret, 0o600)
    bad = tmp_path / "bad.secret"
    bad.write_text("alice:not base64!\n")
    os.chmod(bad, 0o600)
    _user_error(Config(signing_key=str(bad)), "not a qwex secret key")
    _user_error(Config(signing_key=str(tmp_path / "keys") + "/"), "not a regular file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_load_signing_key_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QWEX_HOME", str(tmp_path))
    generate_key("alice")
    os.chmod(tmp_path / "keys" / "alice.secret", 0o000)
    _user_error(Config(signing_key="alice"), "cannot read")


# -- signature objects in a store -------------------------------------------------------------
def test_sign_realisation_writes_one_object_per_signer_idempotently(store: Store) -> None:
    r = real()
    assert run(sign_realisation(store, r, LAB_A)) is True
    assert run(sign_realisation(store, r, LAB_A)) is False
    assert run(sign_realisation(store, r, LAB_B)) is True
    path = Store.signature_path(K, LAB_A.public().id)
    assert path == f"signatures/11/{'1' * 64}/{LAB_A.public().id}"
    assert run(store.storage.get(path)) == canonical.encode(make_signature(LAB_A, K, M))
    assert sorted(run(store.storage.list(Store.signature_prefix(K)))) == sorted(
        [path, Store.signature_path(K, LAB_B.public().id)]
    )
    assert {s.signer for s in run(signatures_of(store, K))} == {LAB_A.public().text(), LAB_B.public().text()}


def test_sign_realisation_replaces_a_stale_or_damaged_object_at_its_own_path(store: Store) -> None:
    path = Store.signature_path(K, LAB_A.public().id)
    run(store.put_signature(make_signature(LAB_A, K, M2)))  # the key's earlier realisation
    assert run(sign_realisation(store, real(), LAB_A)) is True
    assert run(store.get_signature(path)).manifest == M
    run(store.storage.delete(path))
    run(store.storage.put(path, b"garbage"))
    assert run(sign_realisation(store, real(), LAB_A)) is True
    assert verifies(run(store.get_signature(path)))


# -- the trust check ----------------------------------------------------------------------------
TRUST = Trust([LAB_A.public(), PublicKey("lab-b", LAB_B.public().raw)])


def _refused(store: Store, r: Realisation, trust: Trust = TRUST) -> UntrustedObject:
    with pytest.raises(UntrustedObject) as ei:
        run(check_trusted(store, r, trust, "lab"))
    assert isinstance(ei.value, StoreError) and "\n" not in str(ei.value)
    assert str(ei.value).startswith(f"refused {ei.value.path}: ")
    return ei.value


def test_a_trusted_signature_is_accepted(store: Store) -> None:
    run(sign_realisation(store, real(), EVE))
    run(sign_realisation(store, real(), LAB_B))
    got = run(check_trusted(store, real(), TRUST, "lab"))
    assert got == make_signature(LAB_B, K, M)


def test_unsigned_is_refused(store: Store) -> None:
    e = _refused(store, real())
    assert e.reason == "unsigned" and e.path == f"lab/{Store.realisation_path(K)}"


def test_a_signature_for_another_manifest_does_not_count(store: Store) -> None:
    run(store.put_signature(make_signature(LAB_A, K, M2)))
    e = _refused(store, real(M))
    assert e.reason.startswith("unsigned") and "another manifest" in e.reason


def test_only_untrusted_signers_are_named(store: Store) -> None:
    run(sign_realisation(store, real(), EVE))
    run(sign_realisation(store, real(), SecretKey("mallory", bytes(range(3, 35)))))
    e = _refused(store, real())
    assert e.reason == "signed only by untrusted keys: eve, mallory"


def test_a_bad_signature_by_a_trusted_key_is_refused_even_beside_a_good_one(store: Store) -> None:
    run(sign_realisation(store, real(), LAB_B))
    forged = make_signature(EVE, K, M)
    bad = msgspec.structs.replace(
        make_signature(LAB_A, K, M), signer="forger:" + LAB_A.public().text()[6:], sig=forged.sig
    )  # right shape, right path, wrong signature
    run(store.put_signature(bad))
    e = _refused(store, real())
    assert e.reason == "bad signature by lab-a"  # the name from trusted-keys, not the object's


def test_a_tampered_realisation_manifest_is_refused(store: Store) -> None:
    run(sign_realisation(store, real(M), LAB_A))
    assert _refused(store, real(M2)).reason.startswith("unsigned")


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b'{"format":"qwex.signature/1"}',
        "wrong path",
        "noncanonical",
    ],
)
def test_a_malformed_signature_object_is_refused(store: Store, content: bytes | str) -> None:
    run(sign_realisation(store, real(), LAB_A))
    if content == "wrong path":  # a valid signature by lab-b stored under eve's id
        path = Store.signature_path(K, EVE.public().id)
        data = canonical.encode(make_signature(LAB_B, K, M))
    elif content == "noncanonical":
        s = make_signature(LAB_B, K, M)
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        last = s.sig[-3]
        s = msgspec.structs.replace(s, sig=s.sig[:-3] + alphabet[alphabet.index(last) ^ 1] + "==")
        path, data = Store.signature_path(K, LAB_B.public().id), canonical.encode(s)
    else:
        assert isinstance(content, bytes)
        path, data = Store.signature_path(K, EVE.public().id), content
    run(store.storage.put(path, data))
    e = _refused(store, real())
    assert e.reason.startswith("malformed signature: ") and e.path == f"lab/{path}"


# -- the reference graph ------------------------------------------------------------------------
def test_walk_reaches_signatures_and_reports_bad_ones_without_dooming_the_realisation(store: Store) -> None:
    r = real()
    run(store.put_realisation(r))
    run(sign_realisation(store, r, LAB_A))
    good = Ref("signature", f"{K}/{LAB_A.public().id}")
    assert good.path == Store.signature_path(K, LAB_A.public().id)
    g = run(walk(store, [Ref("realisation", K)]))
    assert good in g.edges[Ref("realisation", K)] and g.edges[good] == ()
    assert good not in g.problems
    # a well-formed signature that does not verify, and one for another manifest
    forged = msgspec.structs.replace(make_signature(LAB_B, K, M), sig=make_signature(EVE, K, M).sig)
    run(store.storage.put(Store.signature_path(K, LAB_B.public().id), canonical.encode(forged)))
    stale = make_signature(EVE, K, M2)
    run(store.storage.put(Store.signature_path(K, EVE.public().id), canonical.encode(stale)))
    g = run(walk(store, [Ref("realisation", K)]))
    bad = {ref.id.rsplit("/", 1)[1]: p for ref, p in g.problems.items() if ref.kind == "signature"}
    assert set(bad) == {LAB_B.public().id, EVE.public().id}
    assert all(p.kind == "signature" and p.state == "corrupt" for p in bad.values())
    assert "another" not in bad[LAB_B.public().id].detail and M2 in bad[EVE.public().id].detail
    sig_problems = {ref for ref in g.problems if ref.kind == "signature"}
    assert Ref("realisation", K) not in g.dependents(sig_problems)
    refs, strays = run(list_objects(store, ["signature"]))
    assert len(refs) == 3 and not strays
    run(store.storage.put(f"{Store.signature_prefix(K)}/not-an-id", b"x"))
    _, strays = run(list_objects(store, ["signature"]))
    assert [p.path for p in strays] == [f"{Store.signature_prefix(K)}/not-an-id"]


# -- verify and gc, end to end ------------------------------------------------------------------
def _sign_local(qwex: Qwex, key: str, secret: SecretKey) -> Path:
    async def go() -> None:
        st = await open_store(str(qwex.store), create=False)
        r = await st.get_realisation(key)
        assert r is not None
        await sign_realisation(st, r, secret)

    run(go())
    return qwex.store / Store.signature_path(key, secret.public().id)


def test_verify_and_gc_treat_signatures_as_part_of_their_realisation(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drv", {"a.drv": drv_text(job("--out", "a=1"), name="a")})
    built = qwex.build("a.drv", cwd=git_repo.path)
    sig_file = _sign_local(qwex, built.key, LAB_A)
    assert qwex("verify").returncode == 0
    assert qwex.ok("gc").stdout.startswith("no unreachable store objects")
    assert sig_file.exists()

    doc = json.loads(sig_file.read_text())
    doc["sig"] = make_signature(EVE, built.key, doc["manifest"]).sig
    sig_file.write_text(json.dumps(doc))
    cp = qwex("verify", "--json")
    assert cp.returncode == 1
    problems = json.loads(cp.stdout)["problems"]
    assert [(p["kind"], p["state"], p["path"]) for p in problems] == [
        ("signature", "corrupt", str(sig_file.relative_to(qwex.store)))
    ]
    qwex("verify", "--repair")
    assert not sig_file.exists() and qwex("verify").returncode == 0
    assert qwex.build("a.drv", cwd=git_repo.path).cached  # the realisation stayed

    sig_file = _sign_local(qwex, built.key, LAB_A)
    doc = qwex.json("gc", "--older-than", "0s")
    assert doc["dropped"] == [built.key] and doc["removed"]["signature"] == 1
    assert not sig_file.exists()
    assert not [p for p in (qwex.store / "signatures").rglob("*") if p.is_file()]

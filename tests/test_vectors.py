"""The test vectors in ``spec/vectors/``: every file there is loaded and checked against the code.

The vectors are the contract of the formats (spec/README.md, "Test vectors"). Each JSON file
names its ``kind``; the handler for that kind recomputes every expected field from the
file's inputs, and the test asserts the file already holds exactly those values.

Regeneration: ``QWEX_TEST_ACCEPT=1 .venv/bin/pytest tests/test_vectors.py`` rewrites the
expected fields from the current code instead of comparing, so a format change shows up as
a diff of ``spec/vectors/`` in review. Inputs are never rewritten. An expected error is a
substring: a hand-shortened error string is kept as long as it still matches. Errors are
qwex's own words and classes (``FormatError``, ``DrvFileError``, ...), never msgspec's
wording, so the vectors hold for every msgspec release pyproject.toml allows.

A vector with ``"known_bug": "<why>"`` documents behaviour the spec requires and the code
does not have yet; it runs as a strict xfail, so fixing the code makes it fail until the
flag is removed.

Derivation files (``spec/vectors/drvfile/*.toml``) are checked against a sidecar JSON of the
same name: the parsed file for ``good-*``, the one-line error for ``bad-*``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from qwexstore import canonical
from qwexstore.derivation import Derivation, resolve
from qwexstore.digest import Digest, hash_bytes, hash_file, hash_tagged, is_digest
from qwexstore.drvfile import parse_drv_text
from qwexstore.errors import DrvFileError, QwexError
from qwexstore.globs import Selector
from qwexstore.image import image_id
from qwexstore.index import IndexedRealisation, RunSummary, StatEntry
from qwexstore.keys import SecretKey
from qwexstore.manifest import Entry, Manifest
from qwexstore.records import DerivationRecord, Realisation, RunRecord, Signature, Snapshot
from qwexstore.schema import FormatError
from qwexstore.signing import make_signature, signed_bytes, verifies
from qwexstore.snapshot import _header as bundle_header
from qwexstore.source import Repo, SourceTree
from qwexstore.store import Store, open_store

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"
ACCEPT = os.environ.get("QWEX_TEST_ACCEPT") == "1"
B3SUM = shutil.which("b3sum")
GIT = shutil.which("git")

Vector = dict[str, Any]
Handler = Callable[[Vector, Path, Path], None]

_DECODE_TYPES: dict[str, type] = {
    "Derivation": Derivation,
    "Manifest": Manifest,
    "Snapshot": Snapshot,
    "SourceTree": SourceTree,
    "DerivationRecord": DerivationRecord,
    "RunRecord": RunRecord,
    "Realisation": Realisation,
    "Signature": Signature,
}


# -- helpers ---------------------------------------------------------------------------------
def dump(obj: Any) -> str:
    """The one formatting of vector files (so accepting twice changes nothing)."""
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def input_bytes(vec: Vector) -> bytes:
    """A vector's input document: ``input_text`` (exact text), ``input_hex`` or ``input`` (JSON)."""
    if "input_text" in vec:
        text: str = vec["input_text"]
        return text.encode("utf-8")
    if "input_hex" in vec:
        return bytes.fromhex(vec["input_hex"])
    # Default separators and insertion order: whitespace and key order differ from canonical.
    return json.dumps(vec["input"], ensure_ascii=False).encode("utf-8")


def set_error(case: Vector, key: str, actual: str) -> None:
    """Record an error message, keeping a hand-shortened expected substring that still matches."""
    expected = case.get(key)
    if isinstance(expected, str) and expected and expected in actual:
        return
    case[key] = actual


def raw_input(spec: Vector) -> bytes:
    if "hex" in spec:
        return bytes.fromhex(spec["hex"])
    if "utf8" in spec:
        text: str = spec["utf8"]
        return text.encode("utf-8")
    if "repeat251" in spec:  # the BLAKE3 reference input: 0, 1, ..., 250, 0, 1, ...
        return bytes(i % 251 for i in range(spec["repeat251"]))
    raise AssertionError(f"unknown raw input {spec}")


def b3sum(data: bytes) -> str:
    assert B3SUM is not None
    out = subprocess.run([B3SUM, "--no-names"], input=data, capture_output=True, check=True).stdout
    return "blake3:" + out.decode().strip()


def decode_checked(type_name: str, data: bytes) -> Any:
    """Decode as a reader does: the declared type, then the semantic checks of that type."""
    value: Any = canonical.decode(data, _DECODE_TYPES[type_name])
    if isinstance(value, Manifest | Signature):
        value.validate()
    return value


def roundtrip(value: Any, typ: type) -> bytes:
    """Canonical bytes of ``value``, asserting they decode to an equal value with equal bytes."""
    data = canonical.encode(value)
    again: Any = canonical.decode(data, typ)
    assert again == value
    assert canonical.encode(again) == data
    return data


# -- handlers: each fills a copy of the vector with the values computed from its inputs -------
def h_raw_digest(vec: Vector, path: Path, tmp: Path) -> None:
    for case in vec["cases"]:
        data = raw_input(case["input"])
        digest = hash_bytes(data)
        f = tmp / "raw"
        f.write_bytes(data)
        assert hash_file(f) == digest, f"{case['name']}: hash_file disagrees with hash_bytes"
        if B3SUM:
            assert b3sum(data) == digest, f"{case['name']}: b3sum disagrees"
        case["digest"] = digest


def h_tagged_digest(vec: Vector, path: Path, tmp: Path) -> None:
    for case in vec["cases"]:
        body = case["canonical"].encode("utf-8")
        digest = hash_tagged(case["tag"], body)
        if B3SUM:
            prefixed = f"qwex:{case['tag']}:v1".encode() + b"\0" + body
            assert b3sum(prefixed) == digest, f"{case['name']}: b3sum disagrees"
        case["digest"] = digest


def h_digest_syntax(vec: Vector, path: Path, tmp: Path) -> None:
    for case in vec["cases"]:
        valid = is_digest(case["string"])
        try:
            msgspec.convert(case["string"], Digest)
            decodes = True
        except msgspec.ValidationError:
            decodes = False
        assert decodes == valid, f"{case['string']!r}: is_digest and the Digest type disagree"
        case["valid"] = valid


def h_canonical(vec: Vector, path: Path, tmp: Path) -> None:
    for case in vec["cases"]:
        data = canonical.encode(case["value"])
        assert json.loads(data) == case["value"], f"{case['name']}: not a JSON round trip"
        case["canonical"] = data.decode("utf-8")
        case["utf8_hex"] = data.hex()


def h_derivation(vec: Vector, path: Path, tmp: Path) -> None:
    drv = canonical.decode(input_bytes(vec), Derivation)
    data = roundtrip(drv, Derivation)
    vec["canonical"] = data.decode("utf-8")
    vec["digest"] = drv.hash()
    vec["is_resolved"] = drv.is_resolved()
    if "resolve" in vec:
        res = resolve(drv, vec["resolve"])
        assert res.is_resolved()
        vec["resolved_canonical"] = roundtrip(res, Derivation).decode("utf-8")
        vec["key"] = res.hash()
    elif drv.is_resolved():
        vec["key"] = drv.hash()
    if "equivalent_to" in vec:
        other = json.loads((path.parent / vec["equivalent_to"]).read_text(encoding="utf-8"))
        assert other.get("canonical") == vec["canonical"], "not equivalent after all"
    if "same_key_as" in vec:
        other = json.loads((path.parent / vec["same_key_as"]).read_text(encoding="utf-8"))
        assert other.get("key") == vec.get("key"), "keys differ"


def h_manifest(vec: Vector, path: Path, tmp: Path) -> None:
    entries = canonical.decode(json.dumps(vec["input"]["entries"]).encode(), list[Entry])
    m = Manifest.of(entries)
    data = roundtrip(m, Manifest)
    decode_checked("Manifest", data)
    vec["canonical"] = data.decode("utf-8")
    vec["digest"] = m.digest()
    vec["files"] = len(m.files())
    vec["total_size"] = m.total_size()


def h_snapshot(vec: Vector, path: Path, tmp: Path) -> None:
    snap = canonical.decode(input_bytes(vec), Snapshot)
    vec["canonical"] = roundtrip(snap, Snapshot).decode("utf-8")
    vec["digest"] = snap.digest()


def h_source_tree(vec: Vector, path: Path, tmp: Path) -> None:
    tree = canonical.decode(input_bytes(vec), SourceTree)
    vec["canonical"] = roundtrip(tree, SourceTree).decode("utf-8")
    vec["digest"] = tree.digest()


def h_source_repo(vec: Vector, path: Path, tmp: Path) -> None:
    if GIT is None:
        pytest.skip("git is not installed")
    repo = tmp / "repo"
    repo.mkdir()
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "HOME": str(tmp),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "LANG": "C",
    }

    def git(*args: str) -> str:
        cp = subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True, check=True)
        return cp.stdout.decode()

    git("init", "-q")
    for rel, spec in vec["files"].items():
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if spec.get("symlink") is not None:
            os.symlink(spec["symlink"], p)
            continue
        p.write_bytes(spec["text"].encode("utf-8"))
        os.chmod(p, 0o755 if spec.get("executable") else 0o644)
    git("add", "-A")
    git("-c", "user.name=v", "-c", "user.email=v@example.com", "commit", "-q", "-m", "vector")
    r = Repo(str(repo))
    head = r.head()
    assert head is not None
    tree = r.tree(head, Selector(vec.get("include", []), vec.get("exclude", [])))
    vec["entries"] = [[e.path, e.mode, e.oid] for e in tree.entries]
    vec["canonical"] = canonical.encode(tree).decode("utf-8")
    vec["digest"] = tree.digest()


def h_record(vec: Vector, path: Path, tmp: Path) -> None:
    typ = _DECODE_TYPES[vec["type"]]
    rec: Any = canonical.decode(input_bytes(vec), typ)
    vec["canonical"] = roundtrip(rec, typ).decode("utf-8")
    if isinstance(rec, DerivationRecord):
        vec["derivation_hash"] = rec.derivation.hash()


def h_decode_error(vec: Vector, path: Path, tmp: Path) -> None:
    data = input_bytes(vec)
    try:
        value = decode_checked(vec["type"], data)
    except (FormatError, ValueError) as e:  # never msgspec's own error, or its wording
        vec["error_class"] = type(e).__name__
        set_error(vec, "error", str(e))
        return
    raise AssertionError(f"accepted, but the spec says it MUST be rejected: {value!r}")


def h_store_path(vec: Vector, path: Path, tmp: Path) -> None:
    fns = {
        "blob": Store.blob_path,
        "manifest": Store.manifest_path,
        "snapshot": Store.snapshot_path,
        "derivation": Store.derivation_path,
        "realisation": Store.realisation_path,
        "run": Store.run_path,
    }
    for case in vec["cases"]:
        if case["object"] == "signature":
            case["path"] = Store.signature_path(case["id"], case["signer_id"])
        else:
            case["path"] = fns[case["object"]](case["id"])


def h_store_version(vec: Vector, path: Path, tmp: Path) -> None:
    for i, case in enumerate(vec["cases"]):
        root = tmp / f"store{i}"
        root.mkdir()
        if case["file"] is not None:
            (root / "qwex-store.json").write_text(case["file"], encoding="utf-8")
        try:
            asyncio.run(open_store(str(root), create=case.get("create", True)))
        except QwexError as e:
            set_error(case, "error", str(e).replace(str(root), "$STORE"))
            case["opens"] = False
        else:
            case.pop("error", None)
            case["opens"] = True
            case["written"] = (root / "qwex-store.json").read_text(encoding="utf-8")


def h_bundle_header(vec: Vector, path: Path, tmp: Path) -> None:
    for case in vec["cases"]:
        case["header"] = bundle_header(case["commit"], case["prerequisites"]).decode("ascii")


def h_globs(vec: Vector, path: Path, tmp: Path) -> None:
    for case in vec["cases"]:
        if "paths" in case:
            sel = Selector(case.get("include", []), case.get("exclude", []))
            case["paths"] = {p: sel(p) for p in case["paths"]}
        else:
            try:
                Selector(case.get("include", []), case.get("exclude", []))
            except ValueError as e:
                set_error(case, "error", str(e))
                continue
            raise AssertionError(f"{case}: accepted, but the spec says it MUST be rejected")


def h_image_id(vec: Vector, path: Path, tmp: Path) -> None:
    base = str(path.parent)
    for case in vec["cases"]:
        try:
            got = image_id(
                case["ref"], base, allow_unpinned=case.get("allow_unpinned", False), where="env.image"
            )
        except QwexError as e:
            set_error(case, "error", str(e).replace(base, "$VECTORS"))
            case.pop("id", None)
        else:
            case["id"] = got
            case.pop("error", None)


def h_index_value(vec: Vector, path: Path, tmp: Path) -> None:
    types = {"IndexedRealisation": IndexedRealisation, "RunSummary": RunSummary, "StatEntry": StatEntry}
    enc = msgspec.msgpack.Encoder()
    for case in vec["cases"]:
        typ = types[case["type"]]
        value = msgspec.convert(case["value"], typ)
        data = enc.encode(value)
        assert msgspec.msgpack.decode(data, type=typ) == value
        case["msgpack_hex"] = data.hex()


def h_ed25519(vec: Vector, path: Path, tmp: Path) -> None:
    """The signature primitive against RFC 8032's own test vector (expected values are the
    RFC's, so acceptance must leave them unchanged)."""
    secret = SecretKey("rfc", bytes.fromhex(vec["seed_hex"]))
    msg = bytes.fromhex(vec["message_hex"])
    # Compared even under QWEX_TEST_ACCEPT: these values are the RFC's, not ours.
    assert secret.public().raw.hex() == vec["public_hex"]
    assert secret.sign(msg).hex() == vec["signature_hex"]
    assert secret.public().verify(msg, bytes.fromhex(vec["signature_hex"]))


def h_signature(vec: Vector, path: Path, tmp: Path) -> None:
    secret = SecretKey(vec["name"], bytes.fromhex(vec["seed_hex"]))
    pub = secret.public()
    vec["public"] = pub.text()
    vec["signer_id"] = pub.id
    for case in vec["cases"]:
        msg = signed_bytes(case["key"], case["manifest"])
        case["signed_bytes_hex"] = msg.hex()
        case["signed_bytes_text"] = msg.decode("utf-8").replace("\0", "\\0")
        sig = make_signature(secret, case["key"], case["manifest"])
        assert verifies(sig) and make_signature(secret, case["key"], case["manifest"]) == sig
        case["record"] = msgspec.to_builtins(sig)
        case["canonical"] = roundtrip(sig, Signature).decode("utf-8")
        case["path"] = Store.signature_path(sig.key, sig.signer_id())
        tampered = []
        other = "blake3:" + "ab" * 32
        for field, value in (("key", other), ("manifest", other), ("sig", _flip_b64(sig.sig))):
            bad = msgspec.structs.replace(sig, **{field: value})
            assert not verifies(bad), f"a signature with another {field} verifies"
            tampered.append({"field": field, "record": msgspec.to_builtins(bad), "verifies": False})
        case["tampered"] = tampered


def _flip_b64(text: str) -> str:
    """``text`` with one bit of its first byte flipped (the lowest bit of the first base64
    character's value)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return alphabet[alphabet.index(text[0]) ^ 1] + text[1:]


HANDLERS: dict[str, Handler] = {
    "raw-digest": h_raw_digest,
    "tagged-digest": h_tagged_digest,
    "digest-syntax": h_digest_syntax,
    "canonical": h_canonical,
    "derivation": h_derivation,
    "manifest": h_manifest,
    "snapshot": h_snapshot,
    "source-tree": h_source_tree,
    "source-repo": h_source_repo,
    "record": h_record,
    "decode-error": h_decode_error,
    "store-path": h_store_path,
    "store-version": h_store_version,
    "bundle-header": h_bundle_header,
    "globs": h_globs,
    "image-id": h_image_id,
    "index-value": h_index_value,
    "ed25519": h_ed25519,
    "signature": h_signature,
}


# -- collection --------------------------------------------------------------------------------
def _params(paths: list[Path], bug_of: Callable[[Path], str | None]) -> list[Any]:
    out = []
    for p in paths:
        bug = bug_of(p)
        marks = [pytest.mark.xfail(strict=True, reason=f"known bug: {bug}")] if bug else []
        out.append(pytest.param(p, id=str(p.relative_to(VECTORS)), marks=marks))
    return out


def _json_vectors() -> list[Path]:
    return sorted(p for p in VECTORS.rglob("*.json") if p.parent.name != "drvfile")


def _drv_vectors() -> list[Path]:
    return sorted((VECTORS / "drvfile").glob("*.toml"))


def _bug(p: Path) -> str | None:
    try:
        bug: str | None = json.loads(p.read_text(encoding="utf-8")).get("known_bug")
        return bug
    except (OSError, ValueError):
        return None  # the test itself reports the unreadable file


def _check(path: Path, old: Vector, new: Vector) -> None:
    if ACCEPT:
        if path.read_text(encoding="utf-8") != dump(new):
            path.write_text(dump(new), encoding="utf-8")
        return
    assert new == old, f"{path.relative_to(VECTORS)} disagrees with the code (QWEX_TEST_ACCEPT=1 to accept)"


@pytest.mark.parametrize("path", _params(_json_vectors(), _bug))
def test_vector(path: Path, tmp_path: Path) -> None:
    old = json.loads(path.read_text(encoding="utf-8"))
    kind = old.get("kind")
    assert kind in HANDLERS, f"unknown vector kind {kind!r}"
    new = copy.deepcopy(old)
    HANDLERS[kind](new, path, tmp_path)
    _check(path, old, new)


@pytest.mark.parametrize("path", _params(_drv_vectors(), lambda p: _bug(p.with_suffix(".json"))))
def test_drvfile_vector(path: Path) -> None:
    sidecar = path.with_suffix(".json")
    old: Vector = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.exists() else {}
    new = copy.deepcopy(old)
    text = path.read_text(encoding="utf-8")
    if path.name.startswith("good-"):
        df = parse_drv_text(text, path.name)
        new["parsed"] = msgspec.to_builtins(df)
        new["argv"] = df.argv
    else:
        assert path.name.startswith("bad-"), "derivation file vectors are named good-* or bad-*"
        with pytest.raises(DrvFileError) as info:
            parse_drv_text(text, path.name)
        actual = str(info.value)
        assert "\n" not in actual, "errors are one line"
        if "error_prefix" in old:  # messages quoted from tomllib vary between Python versions
            assert actual.startswith(old["error_prefix"]), actual
        else:
            set_error(new, "error", actual)
    if not ACCEPT and not sidecar.exists():
        pytest.fail(f"{sidecar.name} is missing (QWEX_TEST_ACCEPT=1 creates it)")
    _check(sidecar, old, new)


def test_every_vector_file_is_used() -> None:
    """Nothing under spec/vectors is silently ignored."""
    used = set(_json_vectors()) | set(_drv_vectors()) | {p.with_suffix(".json") for p in _drv_vectors()}
    aux = {VECTORS / "README.md"}
    unused = [
        p
        for p in VECTORS.rglob("*")
        if p.is_file() and p not in used and p not in aux and p.parent.name != "image"
    ]
    assert not unused, f"files no test reads: {unused}"
    assert len(_json_vectors()) > 0 and len(_drv_vectors()) > 0

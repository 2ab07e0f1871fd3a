"""Seed new test vectors in ``spec/vectors/`` (input side only).

    .venv/bin/python tests/vectors_gen.py            # write vector files that do not exist yet
    QWEX_TEST_ACCEPT=1 .venv/bin/pytest tests/test_vectors.py   # fill in the expected outputs

Existing files are never touched: the files in spec/vectors are the contract, this script
only saves typing when adding vectors. Expected values that come from outside qwex (the
BLAKE3 reference vectors) are written here and must survive acceptance unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parent.parent / "spec" / "vectors"

H = "0123456789abcdef"


def d(n: int) -> str:
    """A syntactically valid digest with a recognisable pattern (not the hash of anything)."""
    return "blake3:" + (H[n % 16] * 2 + H[(n + 1) % 16] * 2) * 16


SRC = d(1)
OCI = "oci:sha256:" + "5" * 64
BASE: dict[str, Any] = {
    "source": SRC,
    "command": ["python", "train.py", "--epochs", "3"],
    "env": {"image": None, "vars": {}},
    "inputs": {},
    "layers": [],
    "outputs": ["out/"],
}


def drv(desc: str, **over: Any) -> dict[str, Any]:
    inp = {**BASE, **over}
    # Deliberately not in canonical key order: the encoder sorts.
    order = ["outputs", "command", "source", "layers", "inputs", "env"]
    return {"kind": "derivation", "description": desc, "input": {k: inp[k] for k in order}}


def bad(
    type_: str,
    desc: str,
    doc: Any = None,
    text: str | None = None,
    error: str = "",
    bug: str | None = None,
    hexdata: str | None = None,
) -> dict[str, Any]:
    v: dict[str, Any] = {"kind": "decode-error", "type": type_, "description": desc}
    if bug:
        v["known_bug"] = bug
    if text is not None:
        v["input_text"] = text
    elif hexdata is not None:
        v["input_hex"] = hexdata
    else:
        v["input"] = doc
    v["error"] = error
    return v


def fe(path: str, size: int, digest: str, executable: bool | None = False) -> dict[str, Any]:
    e: dict[str, Any] = {"type": "file", "path": path, "size": size, "digest": digest}
    if executable is not None:
        e["executable"] = executable
    return e


def sl(path: str, target: str) -> dict[str, Any]:
    return {"type": "symlink", "path": path, "target": target}


def man(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"entries": entries}


FILES: dict[str, Any] = {}

# -- digests -------------------------------------------------------------------------------
_B3 = {  # BLAKE3 team test_vectors/test_vectors.json, first 32 bytes of "hash"
    0: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
    1: "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213",
    1023: "10108970eeda3eb932baac1428c7a2163b0e924c9a9e25b35bba72b28f70bd11",
    1024: "42214739f095a406f3fc83deb889744ac00df831c10daa55189b5d121c855af7",
    1025: "d00278ae47eb27b34faecf67b4fe263f82d5412916c1ffd97c8cb7fb814b8444",
    2048: "e776b6028c7cd22a4d0ba182a8bf62205d2ef576467e838ed6f2529b85fba24a",
    2049: "5f4d72f40d7a5f82b15ca2b2e44b1de3c2ef86c426c95c1af0b6879522563030",
    3072: "b98cb0ff3623be03326b373de6b9095218513e64f1ee2edd2525c7ad1e5cffd2",
    3073: "7124b49501012f81cc7f11ca069ec9226cecb8a2c850cfe644e327d22d3e1cd3",
    4096: "015094013f57a5277b59d8475c0501042c0b642e531b0a1c8f58d2163229e969",
    4097: "9b4052b38f1c5fc8b1f9ff7ac7b27cd242487b3d890d15c96a1c25b8aa0fb995",
    5120: "9cadc15fed8b5d854562b26a9536d9707cadeda9b143978f319ab34230535833",
    5121: "628bd2cb2004694adaab7bbd778a25df25c47b9d4155a55f8fbd79f2fe154cff",
    6144: "3e2e5b74e048f3add6d21faab3f83aa44d3b2278afb83b80b3c35164ebeca205",
    6145: "f1323a8631446cc50536a9f705ee5cb619424d46887f3c376c695b70e0f0507f",
    7168: "61da957ec2499a95d6b8023e2b0e604ec7f6b50e80a9678b89d2628e99ada77a",
    7169: "a003fc7a51754a9b3c7fae0367ab3d782dccf28855a03d435f8cfe74605e7817",
}
FILES["digest/raw-blake3-reference.json"] = {
    "kind": "raw-digest",
    "description": "Raw content is hashed as its exact bytes. Expected values are the BLAKE3 "
    "team's reference vectors (test_vectors/test_vectors.json, first 32 bytes of "
    "`hash`); the input is the bytes 0, 1, ..., 250 repeated to `repeat251` bytes.",
    "cases": [
        {"name": f"len-{n}", "input": {"repeat251": n}, "digest": "blake3:" + h} for n, h in _B3.items()
    ],
}
FILES["digest/raw-misc.json"] = {
    "kind": "raw-digest",
    "description": "Raw content: no normalisation of line endings, Unicode or trailing newlines; "
    "a file and its bytes hash alike, above and below the 4 MiB mmap threshold.",
    "cases": [
        {"name": "empty", "input": {"hex": ""}},
        {"name": "abc", "input": {"utf8": "abc"}},
        {"name": "lf", "input": {"utf8": "hello\n"}},
        {"name": "crlf", "input": {"utf8": "hello\r\n"}},
        {"name": "nfc-e-acute", "input": {"utf8": "\u00e9"}},
        {"name": "nfd-e-acute", "input": {"utf8": "e\u0301"}},
        {"name": "nul-byte", "input": {"hex": "00"}},
        {"name": "not-utf8", "input": {"hex": "ff fe 00 80".replace(" ", "")}},
        {"name": "mmap-threshold-minus-1", "input": {"repeat251": 4 * 1024 * 1024 - 1}},
        {"name": "mmap-threshold", "input": {"repeat251": 4 * 1024 * 1024}},
    ],
}
_MIN_CANON = (
    '{"command":["python","train.py"],"env":{"image":null,"vars":{}},"inputs":{},'
    '"layers":[],"outputs":["out/"],"source":null}'
)
FILES["digest/tagged.json"] = {
    "kind": "tagged-digest",
    "description": 'Structured objects: blake3("qwex:<kind>:v1" NUL canonical). The same bytes '
    "under different kinds give unrelated digests (domain separation).",
    "cases": [
        {"name": "manifest-empty", "tag": "manifest", "canonical": '{"entries":[]}'},
        {"name": "source-tree-empty", "tag": "source-tree", "canonical": '{"entries":[]}'},
        {"name": "snapshot-empty-bytes", "tag": "snapshot", "canonical": ""},
        {"name": "manifest-empty-bytes", "tag": "manifest", "canonical": ""},
        {"name": "derivation-minimal", "tag": "derivation", "canonical": _MIN_CANON},
        {"name": "manifest-same-bytes", "tag": "manifest", "canonical": _MIN_CANON},
    ],
}
FILES["digest/syntax.json"] = {
    "kind": "digest-syntax",
    "description": "A digest is exactly `blake3:` and 64 lowercase hex digits.",
    "cases": [
        {"string": s}
        for s in [
            "blake3:" + "0" * 64,
            "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
            "blake3:" + "A" * 64,
            "blake3:" + "0" * 63,
            "blake3:" + "0" * 65,
            "BLAKE3:" + "0" * 64,
            "sha256:" + "0" * 64,
            "0" * 64,
            "blake3:" + "0" * 64 + "\n",
            " blake3:" + "0" * 64,
            "blake3:" + "g" * 64,
            "",
        ]
    ],
}

# -- canonical encoding ---------------------------------------------------------------------
FILES["canonical/strings.json"] = {
    "kind": "canonical",
    "description": 'String escaping: " and \\ are escaped; U+0008/09/0A/0C/0D use the short '
    "escapes \\b \\t \\n \\f \\r; other code points below U+0020 use \\u00XX "
    "with lowercase hex; everything else (/, DEL, U+2028, U+2029, non-ASCII) "
    "is written raw as UTF-8.",
    "cases": [
        {"name": "ascii", "value": "hello world"},
        {"name": "nul", "value": "\u0000"},
        {"name": "c0-short-escapes", "value": "\b\t\n\f\r"},
        {"name": "c0-others", "value": "\u0001\u0007\u000b\u000e\u001b\u001f"},
        {"name": "quote-backslash", "value": 'say "hi" \\ bye'},
        {"name": "slash-not-escaped", "value": "a/b</script>"},
        {"name": "del-raw", "value": "\u007f"},
        {"name": "c1-raw", "value": "\u0080\u009f"},
        {"name": "line-separators-raw", "value": "\u2028\u2029"},
        {"name": "latin1", "value": "caf\u00e9 na\u00efve"},
        {"name": "nbsp-raw", "value": "a\u00a0b"},
        {"name": "bmp-max", "value": "\uffff"},
        {"name": "astral", "value": "\U0001f600 \U00010000"},
        {"name": "html-raw", "value": "<&>'"},
        {"name": "empty", "value": ""},
    ],
}
FILES["canonical/structure.json"] = {
    "kind": "canonical",
    "description": "Objects: keys sorted by code point (= UTF-8 byte order), no whitespace. "
    "Integers in decimal without exponent or sign for zero. Literals lowercase.",
    "cases": [
        {
            "name": "key-order",
            "value": {"b": 1, "a": 2, "B": 3, "aa": 4, "": 5, "a-b": 6, "a.b": 7, "a/b": 8},
        },
        {
            "name": "key-order-non-ascii",
            "value": {"\u00e9": 1, "z": 2, "\uffff": 3, "\U0001f600": 4, "\u2028": 5},
        },
        {"name": "nested", "value": {"z": [{"b": True, "a": None}], "a": {"y": [], "x": {}}}},
        {
            "name": "integers",
            "value": [
                0,
                -1,
                1,
                9007199254740993,
                9223372036854775807,
                -9223372036854775808,
                18446744073709551615,
            ],
        },
        {"name": "literals", "value": [True, False, None]},
        {"name": "empty-containers", "value": [[], {}, ""]},
        {"name": "array-order-kept", "value": ["b", "a", "c"]},
    ],
}

# -- derivations ------------------------------------------------------------------------------
FILES["derivation/minimal.json"] = drv(
    "The smallest planned derivation: a source tree, an argv, "
    "no image, no inputs, no layers, the default output."
)
FILES["derivation/minimal-reformatted.json"] = {
    "kind": "derivation",
    "description": "minimal.json written with other key order, whitespace and \\u escapes: "
    "decoding ignores all three, so the canonical bytes and hash are the same.",
    "input_text": '{\n  "inputs" : { },\t"layers":[ ],\n  "env": {"vars": {}, "image": null},\n'
    '  "command": ["\\u0070ython", "train.py", "--epochs", "3"],\n'
    f'  "outputs": ["out\\/"], "source": "{SRC}"\n}}\n',
    "equivalent_to": "minimal.json",
}
FILES["derivation/source-null.json"] = drv(
    "`source` may be null: a derivation without a source tree (the format allows it; "
    "planning in version 1 always selects a tree).",
    source=None,
)
FILES["derivation/command-string.json"] = drv(
    'A .drv `command` string becomes ["sh", "-c", STRING]; the key holds the argv.',
    command=["sh", "-c", "python train.py --epochs 3 > out/log.txt"],
)
FILES["derivation/vars.json"] = drv(
    "Hashed variables: an object, keys sorted in the canonical form whatever the input order.",
    env={
        "image": None,
        "vars": {"SEED": "0", "PYTHONHASHSEED": "0", "LR": "0.001", "A_b": "", "CUDA_VISIBLE_DEVICES": "0,1"},
    },
)
FILES["derivation/image-oci.json"] = drv(
    "An OCI image pinned by digest enters the key as oci:sha256:<hex> (registry and tag do not).",
    env={"image": OCI, "vars": {}},
)
FILES["derivation/image-file.json"] = drv(
    "A local image file enters the key as file:blake3:<hex> of its bytes.",
    env={"image": "file:" + d(7), "vars": {"OMP_NUM_THREADS": "1"}},
)
FILES["derivation/image-unpinned.json"] = drv(
    "An unpinned tag (only with --allow-unpinned) enters the key as unpinned:<reference>.",
    env={"image": "unpinned:python:3.11", "vars": {}},
)
FILES["derivation/inputs-file.json"] = drv(
    "file: inputs: a single file is a blob input (digest and executable bit); a directory is a "
    "tree input (its manifest digest). The map key is the destination in the work dir.",
    inputs={
        "tools/run.sh": {"executable": True, "digest": d(3), "type": "blob"},
        "data/digits.csv": {"type": "blob", "digest": d(2), "executable": False},
        "weights": {"type": "tree", "manifest": d(4)},
    },
)
FILES["derivation/input-at-root.json"] = drv(
    'A tree input staged at the work dir root has the destination ".".',
    inputs={".": {"type": "tree", "manifest": d(5)}},
)
_UP_A, _UP_B = d(8), d(9)
FILES["derivation/unresolved-drv-input.json"] = {
    **drv(
        "An unresolved derivation: `drv` inputs name upstream derivation hashes. Its hash "
        "names it in the store; its key is the hash of the resolved form, where each drv "
        "input is replaced by a tree input of that upstream's output manifest. "
        "(Planning drv: inputs is refused by this version; the format is fixed.)",
        inputs={
            "model": {"type": "drv", "drv": _UP_A},
            "data": {"type": "drv", "drv": _UP_B},
            "extra.csv": {"type": "blob", "digest": d(2), "executable": False},
        },
        command=["python", "evaluate.py", "--model", "model", "--data", "data"],
    ),
    "resolve": {_UP_A: d(10), _UP_B: d(11)},
}
FILES["derivation/resolved-equivalent.json"] = {
    **drv(
        "The resolved form of unresolved-drv-input.json written out directly: a derivation "
        "with tree inputs. Same bytes, same hash: early cutoff works because the key depends "
        "only on the upstreams' output manifests.",
        inputs={
            "model": {"type": "tree", "manifest": d(10)},
            "data": {"type": "tree", "manifest": d(11)},
            "extra.csv": {"type": "blob", "digest": d(2), "executable": False},
        },
        command=["python", "evaluate.py", "--model", "model", "--data", "data"],
    ),
    "same_key_as": "unresolved-drv-input.json",
}
FILES["derivation/layer-singularity.json"] = drv(
    "A singularity layer contributes image id, contain, cleanenv and args (not binds, nv).",
    layers=[
        {
            "kind": "singularity",
            "image": "file:" + d(12),
            "contain": True,
            "cleanenv": True,
            "args": ["--writable-tmpfs"],
        }
    ],
)
FILES["derivation/layer-podman.json"] = drv(
    "A podman layer contributes image id and args (not gpus, runtime, executable).",
    layers=[{"kind": "podman", "image": OCI, "args": ["--read-only"]}],
)
FILES["derivation/layer-template.json"] = drv(
    "A project's ejected wrapper template enters the key after the layer identities, "
    "by the blake3 of its bytes (spec/drivers.md, \"Templates and the key\").",
    layers=[
        {"kind": "podman", "image": OCI, "args": []},
        {"kind": "template", "layer": "podman", "digest": d(13)},
    ],
)
FILES["derivation/layer-kueue.json"] = drv(
    "A kueue layer contributes only its image id (queue, namespace, resources are placement).",
    layers=[{"image": OCI, "kind": "kueue"}],
)
FILES["derivation/layers-stack.json"] = drv(
    "Layer identities keep their order, outermost first: the list is not sorted.",
    layers=[
        {"kind": "kueue", "image": OCI},
        {
            "kind": "singularity",
            "image": "oci:sha256:" + "6" * 64,
            "contain": False,
            "cleanenv": False,
            "args": [],
        },
    ],
)
FILES["derivation/unicode.json"] = drv(
    "Non-ASCII and control characters in argv and variables: raw UTF-8, minimal escapes.",
    command=["python", "-c", "print('h\u00e9llo \u2192 \u4e16\u754c \U0001f600')\n\tprint(\"\\\\\")"],
    env={"image": None, "vars": {"GREETING": "gr\u00fc\u00df dich", "SEP": "\u2028"}},
)
FILES["derivation/outputs-empty.json"] = drv(
    "No outputs: the run succeeds with an empty output manifest.", outputs=[]
)
FILES["derivation/outputs-many.json"] = drv(
    "Output patterns as planned: sorted and de-duplicated by the planner; `out` and `out/` are "
    "different patterns.",
    outputs=["metrics.json", "out/", "plots/*.png"],
)

Z = d(0)
FILES["derivation/bad-unknown-field.json"] = bad(
    "Derivation",
    "`name` is a label, not identity: it lives in the derivation record.",
    {**BASE, "name": "train"},
)
FILES["derivation/bad-unknown-field-env.json"] = bad(
    "Derivation",
    "Pass-through variable names are not in the derivation.",
    {**BASE, "env": {"image": None, "vars": {}, "pass": ["WANDB_API_KEY"]}},
)
FILES["derivation/bad-missing-field.json"] = bad(
    "Derivation",
    "Every field is present in every derivation (no defaults).",
    {k: v for k, v in BASE.items() if k != "outputs"},
)
FILES["derivation/bad-missing-image.json"] = bad(
    "Derivation", "env.image is present even when null.", {**BASE, "env": {"vars": {}}}
)
FILES["derivation/bad-digest-short.json"] = bad(
    "Derivation", "Digests are blake3: and 64 hex digits.", {**BASE, "source": "blake3:abc"}
)
FILES["derivation/bad-digest-uppercase.json"] = bad(
    "Derivation", "Digest hex is lowercase.", {**BASE, "source": "blake3:" + "AB" * 32}
)
FILES["derivation/bad-digest-algorithm.json"] = bad(
    "Derivation", "Only blake3 exists in format version 1.", {**BASE, "source": "sha256:" + "ab" * 32}
)
FILES["derivation/bad-input-type.json"] = bad(
    "Derivation",
    "Input types are blob, tree and drv.",
    {**BASE, "inputs": {"data": {"type": "git", "digest": Z}}},
)
FILES["derivation/bad-input-missing-type.json"] = bad(
    "Derivation", "Inputs carry their type tag.", {**BASE, "inputs": {"data": {"manifest": Z}}}
)
FILES["derivation/bad-input-executable-int.json"] = bad(
    "Derivation",
    "Booleans are true/false, not 0/1.",
    {**BASE, "inputs": {"run.sh": {"type": "blob", "digest": Z, "executable": 1}}},
)
FILES["derivation/bad-blob-missing-executable.json"] = bad(
    "Derivation",
    "A blob input always states its executable bit.",
    {**BASE, "inputs": {"run.sh": {"type": "blob", "digest": Z}}},
)
FILES["derivation/bad-layer-kind.json"] = bad(
    "Derivation",
    "Only layer kinds with identity fields appear in a derivation.",
    {**BASE, "layers": [{"kind": "slurm"}]},
)
FILES["derivation/bad-layer-unknown-field.json"] = bad(
    "Derivation",
    "Placement fields (here kueue's queue) never appear in a derivation; a reader "
    "must reject them rather than drop them silently.",
    {**BASE, "layers": [{"kind": "kueue", "image": OCI, "queue": "gpu"}]},
    error="layers[0].queue: unknown field",
    bug="SingularityIdentity/KueueIdentity lack forbid_unknown_fields=True (qwexstore/layers.py)",
)
FILES["derivation/bad-command-string.json"] = bad(
    "Derivation",
    "command is an argv list; the sh -c wrapping happens in the .drv file.",
    {**BASE, "command": "python train.py"},
)
FILES["derivation/bad-vars-int.json"] = bad(
    "Derivation", "Variable values are strings.", {**BASE, "env": {"image": None, "vars": {"SEED": 0}}}
)
FILES["derivation/bad-trailing-data.json"] = bad(
    "Derivation", "One JSON document, nothing after it.", text=json.dumps(BASE) + " {}"
)
FILES["derivation/bad-not-utf8.json"] = bad(
    "Derivation",
    "Canonical bytes are UTF-8.",
    hexdata=json.dumps({**BASE, "command": ["X"]}).encode().replace(b'"X"', b'"\xff"').hex(),
)
FILES["derivation/bad-bom.json"] = bad("Derivation", "No byte order mark.", text="\ufeff" + json.dumps(BASE))

# -- manifests ---------------------------------------------------------------------------------
FILES["manifest/empty.json"] = {"kind": "manifest", "description": "No outputs.", "input": man([])}
FILES["manifest/single-file.json"] = {
    "kind": "manifest",
    "description": "One regular file; `executable` is false.",
    "input": man([fe("out/model.pt", 1048576, d(2))]),
}
FILES["manifest/mixed.json"] = {
    "kind": "manifest",
    "description": "Files, an executable and symlinks, given unsorted; a symlink's target is "
    "kept as written (absolute, dangling or with .. parts) and never followed.",
    "input": man(
        [
            sl("out/latest", "checkpoints/step-200.pt"),
            fe("out/run.sh", 120, d(3), True),
            fe("out/checkpoints/step-200.pt", 4096, d(4)),
            sl("out/abs", "/etc/hostname"),
            sl("out/up", "../../outside"),
            fe("out/empty.txt", 0, "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"),
        ]
    ),
}
FILES["manifest/sort-order.json"] = {
    "kind": "manifest",
    "description": "Entries are sorted by path as strings of code points (= UTF-8 bytes): "
    "'-' < '.' < '/' < 'B' < 'a', so a/b sorts after a.txt (unlike git trees).",
    "input": man(
        [
            fe(p, i, d(i))
            for i, p in enumerate(
                ["z", "\u00e9.txt", "a/c", "a/b", "a.txt", "a-b", "B", "\U0001f600", "\uffff"]
            )
        ]
    ),
}
FILES["manifest/executable-default.json"] = {
    "kind": "manifest",
    "description": "A decoder fills an omitted `executable` with false; the canonical form always writes it.",
    "input": man([fe("out/a", 1, d(5), None)]),
}
FILES["manifest/large-sizes.json"] = {
    "kind": "manifest",
    "description": "Sizes are exact integers (a 1 TiB file, a 2^53+1 byte file).",
    "input": man([fe("big", 1 << 40, d(6)), fe("bigger", (1 << 53) + 1, d(7))]),
}
FILES["manifest/unicode-paths.json"] = {
    "kind": "manifest",
    "description": "Paths are any UTF-8 without NUL: spaces, quotes, backslashes, newlines are "
    "allowed and escaped only as JSON requires.",
    "input": man(
        [
            fe("out/r\u00e9sum\u00e9 final.txt", 3, d(8)),
            fe('out/q"uote\\back', 1, d(9)),
            fe("out/new\nline", 2, d(10)),
            fe("out/\u65e5\u672c", 4, d(11)),
        ]
    ),
}


def mbad(
    desc: str, entries: list[dict[str, Any]] | None = None, text: str | None = None, bug: str | None = None
) -> dict[str, Any]:
    return bad("Manifest", desc, None if entries is None else man(entries), text=text, bug=bug)


FILES["manifest/bad-path-dotdot.json"] = mbad(
    "No '..' parts: a manifest never names a path outside its root.", [fe("../etc/passwd", 1, Z)]
)
FILES["manifest/bad-path-dotdot-inner.json"] = mbad("No '..' anywhere in a path.", [fe("out/../../x", 1, Z)])
FILES["manifest/bad-path-absolute.json"] = mbad("Paths are relative.", [fe("/etc/passwd", 1, Z)])
FILES["manifest/bad-path-dot.json"] = mbad("No '.' parts (one spelling per path).", [fe("./a", 1, Z)])
FILES["manifest/bad-path-empty-part.json"] = mbad("No empty parts.", [fe("a//b", 1, Z)])
FILES["manifest/bad-path-trailing-slash.json"] = mbad(
    "No trailing slash: directories are implied.", [fe("a/", 1, Z)]
)
FILES["manifest/bad-path-empty.json"] = mbad("The empty path names nothing.", [fe("", 1, Z)])
FILES["manifest/bad-path-nul.json"] = mbad("No NUL in paths.", [fe("a\u0000b", 1, Z)])
FILES["manifest/bad-unsorted.json"] = mbad("Entries are sorted by path.", [fe("b", 1, Z), fe("a", 1, Z)])
FILES["manifest/bad-duplicate.json"] = mbad("Paths are unique.", [fe("a", 1, Z), fe("a", 2, Z)])
FILES["manifest/bad-duplicate-kinds.json"] = mbad(
    "Paths are unique across entry types.", [fe("a", 1, Z), sl("a", "b")]
)
FILES["manifest/bad-below-symlink.json"] = mbad(
    "No entry below a symlink: materializing it would write through the link.",
    [sl("lib", "/usr/lib"), fe("lib/evil.so", 1, Z)],
)
FILES["manifest/bad-below-file.json"] = mbad("No entry below a file.", [fe("a", 1, Z), fe("a/b", 1, Z)])
FILES["manifest/bad-size-negative.json"] = mbad("Sizes are >= 0.", [fe("a", -1, Z)])
FILES["manifest/bad-size-float.json"] = mbad(
    "Integers only; 1.0 is a float.",
    text=f'{{"entries":[{{"type":"file","path":"a","size":1.0,"digest":"{Z}","executable":false}}]}}',
)
FILES["manifest/bad-size-exponent.json"] = mbad(
    "Integers only; 1e3 is a float.",
    text=f'{{"entries":[{{"type":"file","path":"a","size":1e3,"digest":"{Z}","executable":false}}]}}',
)
FILES["manifest/bad-size-string.json"] = mbad("Sizes are numbers.", [fe("a", "1", Z)])  # type: ignore[arg-type]
FILES["manifest/bad-unknown-field.json"] = mbad(
    "No unknown fields (mode bits are not kept).", [{**fe("a", 1, Z), "mode": 420}]
)
FILES["manifest/bad-unknown-top-field.json"] = bad(
    "Manifest", "No unknown top-level fields.", {"entries": [], "version": 1}
)
FILES["manifest/bad-unknown-type.json"] = mbad(
    "Entry types are file and symlink; directories are implied.", [{"type": "dir", "path": "a"}]
)
FILES["manifest/bad-missing-type.json"] = mbad(
    "Entries carry their type tag.", [{"path": "a", "target": "b"}]
)
FILES["manifest/bad-missing-digest.json"] = mbad(
    "Files carry their digest.", [{"type": "file", "path": "a", "size": 1}]
)
FILES["manifest/bad-digest.json"] = mbad("Digests are blake3:<64 hex>.", [fe("a", 1, "blake3:00")])
FILES["manifest/bad-symlink-empty-target.json"] = mbad("A symlink target is not empty.", [sl("a", "")])
FILES["manifest/bad-lone-surrogate.json"] = mbad(
    "JSON \\u escapes must form valid UTF-16: no lone surrogates.",
    text='{"entries":[{"type":"symlink","path":"\\ud800","target":"b"}]}',
)

# -- snapshots and source trees ------------------------------------------------------------------
C1, C2 = "1" * 40, "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3"
FILES["snapshot/single-bundle.json"] = {
    "kind": "snapshot",
    "description": "A first snapshot: one full bundle.",
    "input": {"bundles": [d(1)], "commit": C2},
}
FILES["snapshot/chain.json"] = {
    "kind": "snapshot",
    "description": "An incremental snapshot: bundles oldest first; each later one has the "
    "previous snapshot's commit as its prerequisite.",
    "input": {"commit": C1, "bundles": [d(1), d(2), d(3)]},
}
FILES["snapshot/bundle-header.json"] = {
    "kind": "bundle-header",
    "description": "The bundle header written before the pack: v2 signature, one line per "
    "prerequisite, the commit under refs/heads/qwex-snapshot, an empty line.",
    "cases": [{"commit": C2, "prerequisites": []}, {"commit": C1, "prerequisites": [C2]}],
}
FILES["snapshot/bad-bundle-digest.json"] = bad(
    "Snapshot", "Bundles are named by digest.", {"commit": C1, "bundles": ["sha1:" + C2]}
)
FILES["snapshot/bad-unknown-field.json"] = bad(
    "Snapshot", "No unknown fields.", {"commit": C1, "bundles": [], "ref": "main"}
)
FILES["snapshot/bad-missing-commit.json"] = bad("Snapshot", "The commit is required.", {"bundles": [d(1)]})

OID = {"README.md": "git-sha1:" + "e" * 40}
FILES["source-tree/small.json"] = {
    "kind": "source-tree",
    "description": "Selected files as [path, git mode, git-sha1:<object id>] arrays, sorted "
    "by path; hashed with the tag qwex:source-tree:v1.",
    "input": {
        "entries": [
            ["README.md", "100644", "git-sha1:ce013625030ba8dba906f756967f9e9ca394464a"],
            ["scripts/run.sh", "100755", "git-sha1:" + "2" * 40],
            ["scripts/latest", "120000", "git-sha1:" + "3" * 40],
            ["train.py", "100644", "git-sha1:" + "4" * 40],
        ]
    },
}
FILES["source-tree/empty.json"] = {
    "kind": "source-tree",
    "description": "Nothing selected: an empty tree is still a tree.",
    "input": {"entries": []},
}
FILES["source-tree/bad-entry-object.json"] = bad(
    "SourceTree",
    "Entries are arrays, not objects.",
    {"entries": [{"path": "a", "mode": "100644", "oid": "git-sha1:" + "0" * 40}]},
)
FILES["source-tree/bad-entry-arity.json"] = bad(
    "SourceTree", "Entries have exactly 3 items.", {"entries": [["a", "100644"]]}
)
FILES["source-tree/bad-entry-extra.json"] = bad(
    "SourceTree", "Entries have exactly 3 items.", {"entries": [["a", "100644", "git-sha1:" + "0" * 40, 1]]}
)
FILES["source-tree/repo-select.json"] = {
    "kind": "source-repo",
    "description": "A real git repository (git init; add; commit): the selected tree of HEAD. "
    "include/exclude pick files; symlinks (120000) and executables (100755) "
    "keep their git modes; object ids are git's SHA-1 blob ids.",
    "files": {
        "README.md": {"text": "hello\n"},
        "train.py": {"text": "print('train')\n"},
        "scripts/run.sh": {"text": "#!/bin/sh\nexec python train.py\n", "executable": True},
        "scripts/latest": {"symlink": "run.sh"},
        "data/big.csv": {"text": "a,b\n1,2\n"},
        "src/pkg/__init__.py": {"text": ""},
        "src/pkg/mod.py": {"text": "X = 1\n"},
        "src/pkg/tests/test_mod.py": {"text": "def test(): pass\n"},
    },
    "include": ["train.py", "scripts", "src/**/*.py", "README.md"],
    "exclude": ["src/pkg/tests"],
}
FILES["source-tree/repo-all.json"] = {
    "kind": "source-repo",
    "description": "No include: every tracked file is selected; the digest depends only on "
    "paths, modes and contents (not on the commit, its message or its date).",
    "files": {"README.md": {"text": "hello\n"}, "a b/\u00e9.txt": {"text": "\u00e9\n"}},
}

# -- records ---------------------------------------------------------------------------------------
_DRV = {**BASE, "env": {"image": OCI, "vars": {"SEED": "0"}}, "layers": [{"kind": "kueue", "image": OCI}]}
FILES["records/derivation-record.json"] = {
    "kind": "record",
    "type": "DerivationRecord",
    "description": "Stored at derivations/<h2>/<hex of the derivation hash>: the derivation plus "
    "its label, source origin, image reference, full layers and pass names.",
    "input": {
        "format": "qwex.drv/1",
        "name": "train",
        "derivation": _DRV,
        "source": {
            "commit": C2,
            "snapshot": d(13),
            "include": ["train.py", "src/"],
            "exclude": ["src/tests"],
        },
        "image_ref": "ghcr.io/lab/train:1.4@sha256:" + "5" * 64,
        "layers": [
            {"kind": "ssh", "host": "login1"},
            {"kind": "kueue", "image": "ghcr.io/lab/train:1.4@sha256:" + "5" * 64, "queue": "gpu", "gpus": 1},
        ],
        "pass_env": ["WANDB_API_KEY"],
        "upstream_names": {},
    },
}
FILES["records/derivation-record-defaults.json"] = {
    "kind": "record",
    "type": "DerivationRecord",
    "description": "upstream_names may be omitted on read (default {}); it is always written.",
    "input": {
        "format": "qwex.drv/1",
        "name": "prepare",
        "derivation": BASE,
        "source": None,
        "image_ref": None,
        "layers": [],
        "pass_env": [],
    },
}
FILES["records/derivation-record-upstreams.json"] = {
    "kind": "record",
    "type": "DerivationRecord",
    "description": "A resolved pipeline derivation: upstream_names labels its drv:FILE.drv inputs, "
    "upstreams names the key whose output manifest each tree input is (here 'data' came from "
    "drv:blake3:<key>, which has no label). Neither is identity.",
    "input": {
        "format": "qwex.drv/1",
        "name": "evaluate",
        "derivation": {
            "outputs": ["out/"],
            "command": ["python", "evaluate.py", "--model", "model", "--data", "data"],
            "source": "blake3:" + "1122" * 16,
            "layers": [],
            "inputs": {
                "model": {"type": "tree", "manifest": "blake3:" + "aabb" * 16},
                "data": {"type": "tree", "manifest": "blake3:" + "bbcc" * 16},
                "extra.csv": {"type": "blob", "digest": "blake3:" + "2233" * 16, "executable": False},
            },
            "env": {"image": None, "vars": {}},
        },
        "source": None,
        "image_ref": None,
        "layers": [],
        "pass_env": [],
        "upstream_names": {"model": "train"},
        "upstreams": {"model": "blake3:" + "ccdd" * 16, "data": "blake3:" + "8899aabb" * 8},
    },
}
_RUN = {
    "format": "qwex.run/1",
    "run_id": "20250301T101530123456Z-9f3a",
    "key": d(14),
    "drv": d(14),
    "name": "train",
    "status": "succeeded",
    "exit_code": 0,
    "started_ns": 1740824130123456789,
    "finished_ns": 1740824190987654321,
    "host": "gpu01",
    "user": "ada",
    "driver": "local",
    "stdout": d(15),
    "stderr": "blake3:af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
    "manifest": d(2),
    "impure": {"PATH": "/usr/local/bin:/usr/bin:/bin"},
    "message": "",
}
FILES["records/run-succeeded.json"] = {
    "kind": "record",
    "type": "RunRecord",
    "description": "A successful run, stored at runs/<run-id>.",
    "input": _RUN,
}
FILES["records/run-failed.json"] = {
    "kind": "record",
    "type": "RunRecord",
    "description": "A failed run: logs kept, no manifest, never realised.",
    "input": {
        **_RUN,
        "status": "failed",
        "exit_code": 3,
        "manifest": None,
        "message": "command exited with status 3",
    },
}
FILES["records/run-killed.json"] = {
    "kind": "record",
    "type": "RunRecord",
    "description": "A job killed by a signal: the local driver records minus the signal number.",
    "input": {
        **_RUN,
        "status": "failed",
        "exit_code": -9,
        "manifest": None,
        "message": "command killed by signal 9",
    },
}
FILES["records/run-cancelled.json"] = {
    "kind": "record",
    "type": "RunRecord",
    "description": "A cancelled run: exit_code null; an image pinned the environment so nothing is impure.",
    "input": {**_RUN, "status": "cancelled", "exit_code": None, "manifest": None, "impure": {}},
}
FILES["records/realisation.json"] = {
    "kind": "record",
    "type": "Realisation",
    "description": "Stored at realisations/<h2>/<key hex>. Version 2: no signatures field "
    "(signatures are separate objects, signature/).",
    "input": {
        "format": "qwex.realisation/2",
        "key": d(14),
        "manifest": d(2),
        "run_id": "20250301T101530123456Z-9f3a",
        "created_ns": 1740824191000000000,
    },
}
_REAL = FILES["records/realisation.json"]["input"]
FILES["records/bad-realisation-version.json"] = bad(
    "Realisation",
    "A version 1 realisation (with its reserved signatures list) is refused, never guessed at.",
    {**_REAL, "format": "qwex.realisation/1", "signatures": []},
)
FILES["records/bad-realisation-unknown-version.json"] = bad(
    "Realisation", "An unknown format version is refused.", {**_REAL, "format": "qwex.realisation/3"}
)
FILES["records/bad-realisation-float-time.json"] = bad(
    "Realisation", "Times are integer nanoseconds.", {**_REAL, "created_ns": 1.7408241910e18}
)
FILES["records/bad-realisation-missing-format.json"] = bad(
    "Realisation",
    "Every record names its format and version.",
    {k: v for k, v in _REAL.items() if k != "format"},
    error="missing required field 'format'",
    bug="msgspec treats the tag of a lone tagged struct as optional on decode (qwexstore/records.py)",
)
FILES["records/bad-realisation-signatures.json"] = bad(
    "Realisation",
    "Version 2 has no signatures field: signatures are separate objects.",
    {**_REAL, "signatures": []},
)
FILES["records/bad-run-status.json"] = bad(
    "RunRecord", "Statuses: succeeded, failed, cancelled.", {**_RUN, "status": "running"}
)
FILES["records/bad-run-unknown-field.json"] = bad(
    "RunRecord",
    "Pass-through variable values are never recorded; unknown fields are refused.",
    {**_RUN, "env": {"WANDB_API_KEY": "secret"}},
)
FILES["records/bad-drv-record-version.json"] = bad(
    "DerivationRecord",
    "An unknown format version is refused.",
    {**FILES["records/derivation-record-defaults.json"]["input"], "format": "qwex.drv/2"},
)
FILES["records/store-paths.json"] = {
    "kind": "store-path",
    "description": "Where each object lives: <dir>/<first two hex digits>/<64 hex>, runs flat.",
    "cases": [
        {"object": o, "id": d(n)}
        for n, o in enumerate(["blob", "manifest", "snapshot", "derivation", "realisation"])
    ]
    + [{"object": "run", "id": "20250301T101530123456Z-9f3a"}]
    + [{"object": "signature", "id": d(14), "signer_id": "0123456789abcdef0123456789abcdef"}],
}
FILES["records/store-version.json"] = {
    "kind": "store-version",
    "description": "qwex-store.json: created when missing; any other format or version is refused.",
    "cases": [
        {"file": None, "create": True},
        {"file": None, "create": False},
        {"file": '{"format":"qwex-store","version":2}'},
        {"file": '{"version": 2, "format": "qwex-store"}\n'},
        {"file": '{"format":"qwex-store","version":1}'},
        {"file": '{"format":"qwex-store","version":3}'},
        {"file": '{"format":"restic","version":1}'},
        {"file": '{"format":"qwex-store"}'},
        {"file": "not json"},
    ],
}
FILES["records/index-values.json"] = {
    "kind": "index-value",
    "description": "LMDB values: msgpack arrays (struct fields in declaration order).",
    "cases": [
        {
            "type": "IndexedRealisation",
            "value": [
                d(2),
                "20250301T101530123456Z-9f3a",
                1740824191000000000,
                2,
                1048586,
                [["out/metrics.json", 10], ["out/model.pt", 1048576]],
            ],
        },
        {
            "type": "RunSummary",
            "value": [d(14), "train", "failed", 3, 1740824130123456789, 1740824190987654321],
        },
        {
            "type": "RunSummary",
            "value": [d(14), "train", "cancelled", None, 1740824130123456789, 1740824190987654321],
        },
        {"type": "StatEntry", "value": [2049, 1234567, 42, 1740824130123456789, 1740824130123456789, d(3)]},
    ],
}

# -- signatures ------------------------------------------------------------------------------------
#: RFC 8032 section 7.1, TEST 1: secret key (seed) and its public key. The public key and
#: the signature of the empty message come from the RFC and must survive acceptance.
_SEED = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
FILES["signature/ed25519-rfc8032.json"] = {
    "kind": "ed25519",
    "description": "The ed25519 implementation agrees with RFC 8032 section 7.1 TEST 1 "
    "(expected values from the RFC).",
    "seed_hex": _SEED,
    "public_hex": "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
    "message_hex": "",
    "signature_hex": "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e"
    "39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
}
FILES["signature/sign.json"] = {
    "kind": "signature",
    "description": "A realisation's signature by the key with seed `seed_hex` named `name`: "
    "signed bytes = qwex:signature:v1 NUL + canonical {key, manifest}; the record, its "
    "canonical bytes and its path. `tampered`: the record with one field changed MUST NOT verify.",
    "seed_hex": _SEED,
    "name": "test-lab",
    "cases": [
        {"key": d(14), "manifest": d(2)},
        {"key": d(2), "manifest": d(14)},
    ],
}
_SIG = {
    "format": "qwex.signature/1",
    "key": d(14),
    "manifest": d(2),
    "signer": "test-lab:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
    "sig": "A" * 86 + "==",
}
FILES["signature/bad-sig-length.json"] = bad(
    "Signature", "sig is the base64 of exactly 64 bytes.", {**_SIG, "sig": "A" * 84 + "=="}
)
FILES["signature/bad-sig-base64.json"] = bad(
    "Signature", "sig is standard base64 (no URL-safe alphabet).", {**_SIG, "sig": "_" * 86 + "=="}
)
FILES["signature/bad-sig-noncanonical.json"] = bad(
    "Signature",
    "Base64 MUST be canonical: padding bits set make another text of the same bytes.",
    {**_SIG, "sig": "A" * 85 + "B=="},
)
FILES["signature/bad-signer-no-colon.json"] = bad(
    "Signature", "signer is NAME:<base64 public key>.", {**_SIG, "signer": "test-lab"}
)
FILES["signature/bad-signer-name.json"] = bad(
    "Signature",
    "Key names: letters, digits, '.', '_', '-'; no '/', not starting with '.'.",
    {**_SIG, "signer": "../lab:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="},
)
FILES["signature/bad-signer-key-length.json"] = bad(
    "Signature",
    "A public key is 32 bytes.",
    {**_SIG, "signer": "test-lab:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcH"},
)
FILES["signature/bad-signer-noncanonical.json"] = bad(
    "Signature",
    "Base64 MUST be canonical in the signer too.",
    {**_SIG, "signer": "test-lab:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURp="},
)
FILES["signature/bad-unknown-field.json"] = bad(
    "Signature", "Unknown fields are refused.", {**_SIG, "alg": "ed25519"}
)
FILES["signature/bad-version.json"] = bad(
    "Signature", "An unknown format version is refused.", {**_SIG, "format": "qwex.signature/2"}
)

# -- globs and images --------------------------------------------------------------------------------
_P = [
    "a.py",
    "src",
    "src/a.py",
    "src/pkg/b.py",
    "src/pkg/tests/t.py",
    "src/data.csv",
    "srcx/a.py",
    "docs/a.py",
    ".hidden.py",
    "x/.env",
]
FILES["globs/selection.json"] = {
    "kind": "globs",
    "description": "[source] include/exclude: patterns match from the repo root; * ? [..] stay "
    "within a segment; ** is any number of whole segments; a pattern also "
    "selects everything below a matching directory; no include = everything; "
    "exclude wins.",
    "cases": [
        {"include": [], "exclude": [], "paths": _P},
        {"include": ["src"], "paths": _P},
        {"include": ["src/"], "paths": _P},
        {"include": ["*.py"], "paths": _P},
        {"include": ["**/*.py"], "paths": _P},
        {"include": ["src/**"], "paths": _P},
        {"include": ["src/**/tests"], "paths": _P},
        {"include": ["src/*.py"], "paths": _P},
        {"include": ["s?c/*"], "paths": _P},
        {"include": ["[ds]*/a.py"], "paths": _P},
        {"include": ["[!s]*/a.py"], "paths": _P},
        {"include": ["src"], "exclude": ["src/pkg/tests", "*.csv", "**/*.csv"], "paths": _P},
        {"include": ["src//pkg/"], "paths": _P},
        {"exclude": [".*", "**/.*"], "paths": _P},
        {"include": ["a[b"], "paths": ["a[b", "ab", "a[b/c"]},
        {"include": ["a\\*"], "paths": ["a\\*", "a\\b", "a*"]},
        {"include": ["a**b"], "paths": ["ab", "axyzb", "a/b"]},
    ],
}
FILES["globs/bad-patterns.json"] = {
    "kind": "globs",
    "description": "Invalid patterns are refused with a ValueError naming the pattern.",
    "cases": [
        {"include": ["/src"]},
        {"include": [""]},
        {"exclude": ["a/../b"]},
        {"include": ["./src"]},
        {"include": ["a\u0000b"]},
    ],
}
FILES["globs/bad-class.json"] = {
    "kind": "globs",
    "known_bug": "an invalid [...] class escapes as re.error instead of ValueError "
    "(qwexstore/globs.py _compile); drvfile then raises a traceback",
    "description": "A character class that is not a valid range is an invalid pattern.",
    "cases": [{"include": ["[z-a]"], "error": "invalid glob '[z-a]'"}],
}
FILES["globs/newlines.json"] = {
    "kind": "globs",
    "description": "A name is matched as the exact string: every construct (*, ?, [..], **, and "
    "'everything below a match') also matches a newline in a name, never a '/'.",
    "cases": [
        {"include": ["out*"], "paths": ["out\nfile", "out/a\nb", "ou\nt", "x/out\n"]},
        {"exclude": ["secret"], "paths": ["secret/key\nx", "secret\n", "secret\n/x", "secret"]},
        {"include": ["a?b", "[\n]c"], "paths": ["a\nb", "a/b", "\nc", "\nc/d\ne"]},
        {"include": ["**/k"], "paths": ["\n/k", "a\nb/c/k", "k\n"]},
    ],
}
FILES["globs/bad-class-parse.json"] = {
    "kind": "globs",
    "description": "Every pattern that could fail later is refused when it is compiled (at "
    ".drv parse time, outputs included): empty and POSIX classes are not supported.",
    "cases": [
        {"include": ["[]"]},
        {"include": ["a[!]"]},
        {"include": ["[[:alpha:]]"]},
        {"exclude": ["x/[^]"]},
        {"include": ["[b-a]x"]},
    ],
}
FILES["image/ids.json"] = {
    "kind": "image-id",
    "description": "Image references to key ids. Pinned OCI references keep only the sha256; "
    "local files are hashed; unpinned tags are refused unless allowed.",
    "cases": [
        {"ref": "ghcr.io/lab/train:1.4@sha256:" + "5" * 64},
        {"ref": "docker://ghcr.io/lab/train@sha256:" + "5" * 64},
        {"ref": "python@sha256:" + "5" * 64},
        {"ref": "tiny.sif"},
        {"ref": "file:tiny.sif"},
        {"ref": "./tiny.sif"},
        {"ref": "python:3.11", "allow_unpinned": True},
        {"ref": "python:3.11"},
        {"ref": "python@sha256:abc"},
        {"ref": "python@sha256:" + "A" * 64},
        {"ref": "missing.sif"},
    ],
}


# -- derivation files ------------------------------------------------------------------------------
DRV: dict[str, tuple[str, dict[str, Any]]] = {
    "good-minimal": ('command = "python train.py"\n', {}),
    "good-argv": (
        'command = ["python", "train.py", "--epochs", "3"]\nname = "train"\n'
        'outputs = ["out/", "metrics.json", "plots/*.png"]\n',
        {},
    ),
    "good-full": (
        """# Every section, with the forms the spec describes.
name = "train"
command = ["python", "examples/digits/train.py", "--epochs", "3"]
outputs = ["out/"]

[source]
repo = ".."
rev = "main"
include = ["examples/digits/*.py", "src/"]
exclude = ["src/tests"]

[env]
image = "ghcr.io/lab/train:1.4@sha256:5555555555555555555555555555555555555555555555555555555555555555"
vars = { PYTHONHASHSEED = "0", SEED = "1" }
pass = ["WANDB_API_KEY", "HF_TOKEN"]

[inputs]
"data/digits.csv" = "file:datasets/digits.csv"
"weights" = "file:/srv/weights"
"prep" = "drv:prepare.drv"
"base" = "drv:blake3:8899aabb8899aabb8899aabb8899aabb8899aabb8899aabb8899aabb8899aabb"

[[layers]]
kind = "ssh"
host = "login1"
port = 2222

[[layers]]
kind = "slurm"
partition = "gpu"
time = "02:00:00"
cpus_per_task = 8
gres = "gpu:1"
""",
        {},
    ),
    "good-layers-containers": (
        """command = ["python", "train.py"]

[[layers]]
kind = "kueue"
image = "ghcr.io/lab/train@sha256:5555555555555555555555555555555555555555555555555555555555555555"
queue = "team-a"
gpus = 1

[[layers]]
kind = "singularity"
image = "images/train.sif"
nv = true
binds = ["/scratch"]
args = ["--writable-tmpfs"]
""",
        {},
    ),
    "good-layer-local": ('command = "true"\n[[layers]]\nkind = "local"\n', {}),
    "good-input-root": ('command = "make"\noutputs = []\n[inputs]\n"." = "file:skeleton"\n', {}),
    "good-unicode": (
        'name = "\u00e9tude"\ncommand = ["echo", "h\u00e9llo \u4e16\u754c"]\n'
        '[env]\nvars = { GREETING = "gr\u00fc\u00df dich" }\n',
        {},
    ),
    "bad-unknown-field": ('command = "x"\ncolour = "red"\n', {}),
    "bad-missing-command": ('name = "x"\n', {}),
    "bad-command-empty-list": ("command = []\n", {}),
    "bad-command-blank": ('command = "   "\n', {}),
    "bad-command-empty-argv0": ('command = ["", "a"]\n', {}),
    "bad-command-int": ("command = 3\n", {}),
    "bad-command-item-int": ('command = ["a", 1]\n', {}),
    "bad-name-int": ('command = "x"\nname = 1\n', {}),
    "bad-outputs-dotdot": ('command = "x"\noutputs = ["../up"]\n', {}),
    "bad-outputs-absolute": ('command = "x"\noutputs = ["/tmp/x"]\n', {}),
    "bad-outputs-dot": ('command = "x"\noutputs = ["./"]\n', {}),
    "bad-outputs-string": ('command = "x"\noutputs = "out/"\n', {}),
    "bad-var-name": ('command = "x"\n[env]\nvars = { "1BAD" = "x" }\n', {}),
    "bad-var-qwex": ('command = "x"\n[env]\nvars = { QWEX_KEY = "x" }\n', {}),
    "bad-pass-qwex": ('command = "x"\n[env]\npass = ["QWEX_RUN_ID"]\n', {}),
    "bad-var-both": ('command = "x"\n[env]\nvars = { SEED = "1" }\npass = ["SEED"]\n', {}),
    "bad-var-int": ('command = "x"\n[env]\nvars = { SEED = 1 }\n', {}),
    "bad-env-unknown": ('command = "x"\n[env]\nimages = "x"\n', {}),
    "bad-source-unknown": ('command = "x"\n[source]\nincludes = ["a"]\n', {}),
    "bad-source-glob-absolute": ('command = "x"\n[source]\ninclude = ["/src"]\n', {}),
    "bad-source-glob-dotdot": ('command = "x"\n[source]\nexclude = ["src/../x"]\n', {}),
    "bad-source-glob-class": (
        'command = "x"\n[source]\ninclude = ["[z-a]"]\n',
        {
            "error": "bad-source-glob-class.toml: source: invalid glob '[z-a]'",
            "known_bug": "re.error escapes instead of a DrvFileError "
            "(qwexstore/globs.py _compile, qwexstore/drvfile.py "
            "_validate)",
        },
    ),
    "bad-outputs-glob-empty-class": ('command = "x"\noutputs = ["out/[]"]\n', {}),
    "bad-outputs-glob-posix-class": ('command = "x"\noutputs = ["out/[[:alpha:]]*"]\n', {}),
    "bad-outputs-glob-range": ('command = "x"\noutputs = ["out/[z-a].txt"]\n', {}),
    "bad-command-nul": ('command = ["python", "a\\u0000b"]\n', {}),
    "bad-command-string-nul": ('command = "echo a\\u0000b"\n', {}),
    "bad-var-nul": ('command = "x"\n[env]\nvars = {FOO = "a\\u0000b"}\n', {}),
    "bad-layer-nul": ('command = "x"\n[[layers]]\nkind = "ssh"\nhost = "h\\u0000x"\n', {}),
    "bad-unknown-field-suggest": ('command = "x"\noutptus = ["x"]\n', {}),
    "bad-layer-unknown-field-suggest": ('command = "x"\n[[layers]]\nkind = "slurm"\npartiton = "gpu"\n', {}),
    "bad-var-value-int-names-var": ('command = "x"\n[env]\nvars = {A = "1", LR = 0.1}\n', {}),
    "bad-source-rev-int": ('command = "x"\n[source]\nrev = 3\n', {}),
    "bad-input-scheme": ('command = "x"\n[inputs]\n"data" = "http://example.com/x"\n', {}),
    "bad-input-empty-ref": ('command = "x"\n[inputs]\n"data" = "file:"\n', {}),
    "bad-input-dest-dotdot": ('command = "x"\n[inputs]\n"../data" = "file:x"\n', {}),
    "bad-input-dest-absolute": ('command = "x"\n[inputs]\n"/data" = "file:x"\n', {}),
    "bad-input-nested": ('command = "x"\n[inputs]\n"data" = "file:a"\n"data/sub" = "file:b"\n', {}),
    "bad-input-duplicate-dest": (
        'command = "x"\n[inputs]\n"data" = "file:a"\n"data/" = "file:b"\n',
        {
            "error": "bad-input-duplicate-dest.toml: inputs",
            "known_bug": "'data' and 'data/' name the same destination; "
            "the second silently replaces the first "
            "(qwexstore/drvfile.py _validate)",
        },
    ),
    "bad-input-int": ('command = "x"\n[inputs]\n"data" = 1\n', {}),
    "bad-layer-unknown-kind": ('command = "x"\n[[layers]]\nkind = "docker"\n', {}),
    "bad-layer-missing-kind": ('command = "x"\n[[layers]]\nhost = "a"\n', {}),
    "bad-layer-ssh-no-host": ('command = "x"\n[[layers]]\nkind = "ssh"\n', {}),
    "bad-layer-unknown-field": ('command = "x"\n[[layers]]\nkind = "slurm"\npartitions = "gpu"\n', {}),
    "bad-layer-wrong-type": ('command = "x"\n[[layers]]\nkind = "slurm"\nnodes = "two"\n', {}),
    "bad-layer-float": ('command = "x"\n[[layers]]\nkind = "slurm"\nnodes = 2.0\n', {}),
    "bad-layer-singularity-no-image": ('command = "x"\n[[layers]]\nkind = "singularity"\n', {}),
    "bad-layer-local-field": ('command = "x"\n[[layers]]\nkind = "local"\nhost = "x"\n', {}),
    "bad-layers-table": ('command = "x"\n[layers]\nkind = "local"\n', {}),
    "bad-toml-syntax": ('command = "x\n', {"error_prefix": "bad-toml-syntax.toml: malformed TOML: "}),
    "bad-toml-duplicate-key": (
        'command = "x"\ncommand = "y"\n',
        {"error_prefix": "bad-toml-duplicate-key.toml: malformed TOML: "},
    ),
}


def main() -> int:
    written = 0
    for rel, obj in FILES.items():
        p = VECTORS / rel
        if p.exists():
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written += 1
    for name, (text, sidecar) in DRV.items():
        p = VECTORS / "drvfile" / f"{name}.toml"
        if p.exists():
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        s = p.with_suffix(".json")
        if not s.exists():
            s.write_text(json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        written += 1
    img = VECTORS / "image" / "tiny.sif"
    if not img.exists():
        img.parent.mkdir(parents=True, exist_ok=True)
        img.write_bytes(b"not really a SIF image, but its bytes are its identity\n")
        written += 1
    print(f"wrote {written} new vector files under {VECTORS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

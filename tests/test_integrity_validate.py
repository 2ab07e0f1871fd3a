"""Issue 7, validation items: every pattern, output and string is checked when the .drv is
parsed (4, 10, 17 NUL), a fresh clone installs from a lock and no vector pins msgspec's
wording (20), and every error names its file and field, before anything starts (22)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import PY, GitRepo, Qwex, assert_user_error, drv_text, job
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qwexstore import canonical
from qwexstore.derivation import BlobInput, Derivation, Env
from qwexstore.drvfile import DrvFile, parse_drv_text, validate
from qwexstore.errors import DrvFileError
from qwexstore.globs import Selector
from qwexstore.manifest import Manifest
from qwexstore.schema import FormatError, convert, explain

ROOT = Path(__file__).resolve().parent.parent
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- item 4: globs match newlines; every pattern is checked at parse time -------------------------
def _class_match(body: str, c: str) -> bool:
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            if body[i] <= c <= body[i + 2]:
                return True
            i += 3
        else:
            if body[i] == c:
                return True
            i += 1
    return False


def _seg_match(pat: str, name: str) -> bool:
    """A reference matcher for one segment: * any run, ? one char, [..] a class (a lone '['
    is literal). Written for clarity, not speed; the names here are short."""
    if not pat:
        return not name
    c = pat[0]
    if c == "*":
        return any(_seg_match(pat[1:], name[k:]) for k in range(len(name) + 1))
    if not name:
        return False
    if c == "?":
        return _seg_match(pat[1:], name[1:])
    if c == "[":
        neg = pat[1:2] in ("!", "^")
        start = 2 if neg else 1
        j = pat.find("]", start)
        if j != -1:
            hit = _class_match(pat[start:j], name[0])
            return hit != neg and _seg_match(pat[j + 1 :], name[1:])
    return c == name[0] and _seg_match(pat[1:], name[1:])


def _segs_match(pats: list[str], names: list[str]) -> bool:
    if not pats:
        return not names
    if pats[0] == "**":
        if len(pats) == 1:
            return len(names) >= 1
        return any(_segs_match(pats[1:], names[k:]) for k in range(len(names) + 1))
    return bool(names) and _seg_match(pats[0], names[0]) and _segs_match(pats[1:], names[1:])


def oracle(pattern: str, path: str) -> bool:
    """Does ``pattern`` select ``path``: it matches the path or one of its parent dirs."""
    pats = [s for s in pattern.split("/") if s]
    names = path.split("/")
    return any(_segs_match(pats, names[:k]) for k in range(1, len(names) + 1))


_name_chars = st.sampled_from(["a", "b", "z", "\n", "*", "[", "]", "!", "-", "?", "^", " "])
_names = st.text(_name_chars, min_size=1, max_size=4).filter(lambda s: s not in (".", ".."))
_paths = st.lists(_names, min_size=1, max_size=4).map("/".join)
_pat_atoms = st.sampled_from(["a", "b", "\n", "*", "?", "[", "]", "!", "^", "-", "[ab]", "[!a]", "[a-z]",
                              "[\n]", "[^\n]"])
_pat_segs = st.one_of(st.just("**"), st.lists(_pat_atoms, min_size=1, max_size=4).map("".join))
_patterns = st.lists(_pat_segs, min_size=1, max_size=3).map("/".join)


@PROPS
@given(_patterns, st.lists(_paths, min_size=1, max_size=6))
def test_glob_matcher_agrees_with_reference(pattern: str, paths: list[str]) -> None:
    assume(not any(s in (".", "..") for s in pattern.split("/")))
    try:
        sel = Selector([pattern], [])
    except ValueError:
        return  # refused at parse time, so it never matches anything later
    for p in paths:
        assert sel(p) == oracle(pattern, p), (pattern, p)


def test_globs_match_names_with_newlines() -> None:
    assert Selector(["out*"], [])("out\nx")
    assert not Selector([], ["secret"])("secret/key\nx")  # excluded: below an excluded dir
    assert Selector([], ["secret"])("secret\nx")  # a different name
    assert Selector(["a/**"], [])("a/b\n/c")


@pytest.mark.parametrize("pattern", ["[]", "out/[[:alpha:]]*", "[z-a]", "x/[!]"])
def test_bad_output_glob_is_refused_at_parse(pattern: str) -> None:
    with pytest.raises(DrvFileError) as ei:
        parse_drv_text(f'command = "x"\noutputs = [{json.dumps(pattern)}]\n', "f.drv")
    assert ei.value.field == "outputs[0]"


def test_output_glob_collects_a_name_with_a_newline(qwex: Qwex, git_repo: GitRepo) -> None:
    # "out*" selects the directory out, so everything below it: "out/a\nb" too
    git_repo.commit(files={"nl.drv": drv_text(job("--out", "ok.txt=1", "--out", "a\nb.txt=2"),
                                              outputs=["out*"])})
    doc = qwex.json("build", "nl.drv", cwd=git_repo.path)
    assert sorted(doc["outputs"]) == ["out/a\nb.txt", "out/ok.txt"]


def test_bad_output_glob_never_runs_the_job(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    git_repo.commit(files={"g.drv": drv_text(job("--count", str(marker)), outputs=["out/[[:alpha:]]"])})
    assert_user_error(qwex("build", "g.drv", cwd=git_repo.path), "g.drv: outputs[0]: invalid glob")
    assert not marker.exists()


# -- item 10: qwex run -o is validated like .drv outputs ----------------------------------------
@pytest.mark.parametrize("out", ["/abs/path/", "../../x", "out/[]"])
def test_run_output_is_validated(qwex: Qwex, git_repo: GitRepo, tmp_path: Path, out: str) -> None:
    marker = tmp_path / "ran"
    cp = qwex("run", "-o", out, "--", PY, "job.py", "--count", str(marker), cwd=git_repo.path)
    assert_user_error(cp, "qwex run: outputs[0]: ")
    assert not marker.exists()


def test_validate_is_what_parse_runs() -> None:
    with pytest.raises(DrvFileError) as ei:
        validate(DrvFile(command=["x"], outputs=["out/", "/etc"]), "qwex run")
    assert str(ei.value).startswith("qwex run: outputs[1]: absolute path")


# -- item 17: NUL never reaches execve ------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('command = ["python", "a\\u0000b"]', "command[1]"),
        ('command = "echo \\u0000"', "command"),
        ('command = "x"\n[env]\nvars = {FOO = "a\\u0000"}', "env.vars.FOO"),
        ('command = "x"\nname = "n\\u0000"', "name"),
        ('command = "x"\n[env]\nimage = "x\\u0000.sif"', "env.image"),
        ('command = "x"\n[[layers]]\nkind = "singularity"\nimage = "i"\nargs = ["\\u0000"]',
         "layers[0].args[0]"),
    ],
)
def test_nul_is_refused_naming_the_field(text: str, field: str) -> None:
    with pytest.raises(DrvFileError) as ei:
        parse_drv_text(text + "\n", "f.drv")
    assert ei.value.field == field
    assert "NUL" in str(ei.value)


def test_nul_in_command_is_a_user_error(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit(files={"n.drv": 'command = ["sh", "-c", "echo a\\u0000b"]\n'})
    assert_user_error(qwex("build", "n.drv", cwd=git_repo.path), "n.drv: command[2]: ", "NUL")
    git_repo.commit(files={"v.drv": 'command = "true"\n[env]\nvars = {FOO = "x\\u0000"}\n'})
    assert_user_error(qwex("build", "v.drv", cwd=git_repo.path), "v.drv: env.vars.FOO: ", "NUL")


# -- item 20: a lock, --latest, and no third-party wording in vectors ----------------------------
def _lock_names(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", line)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def _dep_names(reqs: list[str]) -> set[str]:
    return {re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]).lower() for r in reqs}


@pytest.mark.parametrize(("lock", "extras"), [("test.txt", ["test", "examples"]),
                                              ("quickstart.txt", ["examples"])])
def test_lock_pins_every_dependency_with_hashes(lock: str, extras: list[str]) -> None:
    path = ROOT / "requirements" / lock
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    want = _dep_names(project["dependencies"])
    for e in extras:
        want |= _dep_names(project["optional-dependencies"][e])
    pins = _lock_names(path)
    assert want <= set(pins), f"{lock} lacks {sorted(want - set(pins))}"
    text = path.read_text()
    # every pinned requirement carries at least one hash (pip --require-hashes needs it)
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
    for b in blocks:
        if re.match(r"^[A-Za-z0-9_.\-]+==", b):
            assert "--hash=sha256:" in b, b.splitlines()[0]


def test_scripts_install_from_the_lock() -> None:
    for script, lock in (("test", "test.txt"), ("quickstart", "quickstart.txt")):
        text = (ROOT / "scripts" / script).read_text()
        assert f"--require-hashes -r requirements/{lock}" in text, script
        assert "--no-deps" in text, script
    assert "--latest" in (ROOT / "scripts" / "test").read_text()
    assert (ROOT / "scripts" / "lock").exists()


_MSGSPEC_WORDING = re.compile(
    r"Expected `|Object (contains|missing)|` - at `\$|JSON is malformed|Invalid (enum )?value '"
)


def test_no_vector_pins_msgspec_wording() -> None:
    pinned = [str(p.relative_to(ROOT)) for p in (ROOT / "spec" / "vectors").rglob("*.json")
              if _MSGSPEC_WORDING.search(p.read_text(encoding="utf-8"))]
    assert not pinned, pinned


# The schema walker must agree with msgspec about what is valid, or its message would blame
# the wrong field (or none): random edits of valid documents, checked both ways.
_leaf = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False, width=32),
                  st.sampled_from(["", "x", "blake3:" + "a" * 64, "file", "tree", "blob", "drv"]))
_GOOD_DRV: dict[str, Any] = msgspec.to_builtins(Derivation(
    source="blake3:" + "1" * 64,
    command=["python", "t.py"],
    env=Env(image=None, vars={"A": "1"}),
    inputs={"data": BlobInput(digest="blake3:" + "2" * 64, executable=False)},
    layers=[],
    outputs=["out/"],
))


def _mutate(doc: Any, data: st.DataObject, depth: int = 0) -> Any:
    if isinstance(doc, dict) and doc and depth < 4:
        k = data.draw(st.sampled_from([*doc, "extra", "imgae"]))
        out = dict(doc)
        action = data.draw(st.sampled_from(["replace", "drop", "recurse", "recurse"]))
        if action == "drop":
            out.pop(k, None)
        elif action == "replace" or k not in doc:
            out[k] = data.draw(_leaf)
        else:
            out[k] = _mutate(doc[k], data, depth + 1)
        return out
    if isinstance(doc, list) and doc and depth < 4:
        i = data.draw(st.integers(0, len(doc) - 1))
        return [*doc[:i], _mutate(doc[i], data, depth + 1), *doc[i + 1 :]]
    return data.draw(_leaf)


@PROPS
@given(st.data())
def test_schema_messages_agree_with_msgspec(data: st.DataObject) -> None:
    doc = _mutate(_GOOD_DRV, data)
    raw = json.dumps(doc).encode()
    try:
        canonical.decode(raw, Derivation)
    except FormatError as e:
        assert e.reason != "invalid value", f"walker found nothing msgspec refused: {doc}"
        assert "`" not in str(e) and "$." not in str(e), str(e)
    else:
        assert explain(doc, Derivation).reason == "invalid value"  # walker finds no problem


def test_schema_words_and_suggestions() -> None:
    with pytest.raises(FormatError) as ei:
        convert({"command": "x", "env": {"imgae": "x"}}, DrvFile)
    assert (ei.value.field, ei.value.reason) == ("env.imgae", "unknown field (did you mean 'image'?)")
    with pytest.raises(FormatError) as ei:
        canonical.decode(b'{"entries": [{"type": "file", "path": "a", "digest": "x"}]}', Manifest)
    assert ei.value.field == "entries[0].digest"
    with pytest.raises(FormatError) as ei:
        canonical.decode(b"\xff{}", Manifest)
    assert ei.value.reason.startswith("not valid UTF-8")


# -- item 22: errors name the file and the field, and refuse before anything starts --------------
PINNED = "ghcr.io/lab/train@sha256:" + "5" * 64


def test_image_errors_name_the_file(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit(files={
        "e.drv": drv_text("true", image="python:3.11"),
        "l.drv": 'command = "true"\n[[layers]]\nkind = "singularity"\nimage = "missing.sif"\n',
    })
    assert_user_error(qwex("hash", "e.drv", cwd=git_repo.path), "e.drv: env.image: ", "not pinned")
    assert_user_error(qwex("hash", "l.drv", cwd=git_repo.path), "l.drv: layers[0].image: ", "not found")


def test_missing_drv_target_names_the_referring_file(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit(files={"down.drv": drv_text("true", inputs={"data": "drv:nope/up.drv"})})
    line = assert_user_error(qwex("build", "down.drv", cwd=git_repo.path), "down.drv: inputs.'data': ")
    assert "up.drv" in line


def test_config_errors_name_file_runner_and_field(qwex: Qwex, git_repo: GitRepo) -> None:
    cfg = '[runners.gpu]\nlayers = [{ kind = "slurm", partiton = "a100" }]\n'
    git_repo.commit(files={".qwex/config.toml": cfg, "c.drv": drv_text("true")})
    line = assert_user_error(
        qwex("hash", "c.drv", "--runner", "gpu", cwd=git_repo.path),
        "config.toml: runners.gpu.layers[0].partiton: unknown field (did you mean 'partition'?)",
    )
    assert "`" not in line


def test_config_unknown_layer_kind_names_the_runner(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit(files={".qwex/config.toml": '[runners.x]\nlayers = [{ kind = "docker" }]\n',
                           "c.drv": drv_text("true")})
    assert_user_error(qwex("hash", "c.drv", "--runner", "x", cwd=git_repo.path),
                      "runners.x.layers[0].kind: unknown layer kind 'docker'")


def test_runner_changing_an_identity_field_names_the_config_file(qwex: Qwex, git_repo: GitRepo) -> None:
    img = "docker://x@sha256:" + "a" * 64
    other = "docker://x@sha256:" + "b" * 64
    cfg = f'[runners.gpu]\nlayers = [{{ kind = "singularity", image = "{other}" }}]\n'
    layer = f'[[layers]]\nkind = "singularity"\nimage = "{img}"\n'
    git_repo.commit(files={".qwex/config.toml": cfg, "c.drv": drv_text("true", extra=layer)})
    line = assert_user_error(qwex("hash", "c.drv", "--runner", "gpu", cwd=git_repo.path),
                             "config.toml: runners.gpu.layers[0].image", "identity")
    assert ".qwex/config.toml" in line


def test_local_driver_refuses_image_before_anything_starts(qwex: Qwex, git_repo: GitRepo,
                                                           tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    git_repo.commit(files={"i.drv": drv_text(job("--count", str(marker)), image=PINNED)})
    cp = qwex("build", "i.drv", cwd=git_repo.path)
    assert_user_error(cp, "i.drv: env.image: the local driver ", "cannot honour [env] image")
    assert "building" not in cp.stderr
    assert not marker.exists()
    assert not (qwex.store / "runs").exists() or not any((qwex.store / "runs").iterdir())  # no run


def test_missing_driver_is_a_user_error_before_anything_starts(qwex: Qwex, git_repo: GitRepo,
                                                               tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    up = drv_text(job("--count", str(marker), "--out", "x=1"))
    down = drv_text(job("--count", str(marker)), inputs={"up": "drv:up.drv"},
                    extra='[[layers]]\nkind = "kueue"\nimage = "{}"\n'.format("img@sha256:" + "a" * 64))
    git_repo.commit(files={"up.drv": up, "down.drv": down})
    cp = qwex("build", "down.drv", cwd=git_repo.path)
    assert_user_error(cp, "down.drv: layers[0].kind: no driver installed for layer kind 'kueue'")
    assert "building" not in cp.stderr
    assert not marker.exists()  # not even the upstream, which the local driver could run

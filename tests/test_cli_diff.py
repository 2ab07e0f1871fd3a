"""``qwex diff``: it names exactly the identity input that changed, for keys, prefixes and
.drv files, through pipelines; exit 0 identical, 1 different, 2 trouble."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import GitRepo, Qwex, assert_user_error, drv_text, job

SHA = "docker://example.org/lab/img@sha256:"


def diff(qwex: Qwex, a: str, b: str, cwd: Path, *extra: str) -> tuple[int, Any]:
    """``qwex diff A B --json``: exit status and document (status 0 or 1 only)."""
    cp = qwex("diff", a, b, "--json", *extra, cwd=cwd)
    assert cp.returncode in (0, 1), f"exit {cp.returncode}\n{cp.stdout}\n{cp.stderr}"
    assert cp.stderr == "", cp.stderr
    return cp.returncode, json.loads(cp.stdout)


def human(qwex: Qwex, a: str, b: str, cwd: Path) -> tuple[int, list[str]]:
    cp = qwex("diff", a, b, cwd=cwd)
    assert cp.returncode in (0, 1) and cp.stderr == "", cp.stderr
    return cp.returncode, cp.stdout.splitlines()


def sections(lines: list[str]) -> list[str]:
    """The section names of the top level (lines not indented), after the two side lines."""
    return [ln.split()[0] for ln in lines[2:] if ln and not ln.startswith(" ")]


def files(change: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f["status"], f["path"]) for f in change["files"]]


# -- single changes between two .drv files (planning only) --------------------------------------
BASE: dict[str, Any] = dict(include=["job.py", "README.md"], vars={"LR": "0.1"}, outputs=["out/"],
                            inputs={"data.csv": "file:../datasets/raw.csv"})
LAYER = '[[layers]]\nkind = "singularity"\nimage = "' + SHA + "a" * 64 + '"\n'

VARIANTS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "command": (dict(command=job("--out", "a=2")), ["command"]),
    "var changed": (dict(vars={"LR": "0.01"}), ["vars"]),
    "var added": (dict(vars={"LR": "0.1", "SEED": "1"}), ["vars"]),
    "output added": (dict(outputs=["out/", "metrics.json"]), ["outputs"]),
    "input file content": (dict(inputs={"data.csv": "file:../datasets/other.csv"}), ["inputs"]),
    "image": (dict(image=SHA + "b" * 64), ["image"]),
    "layer identity": (dict(extra=LAYER.replace('"\n', '"\ncontain = false\n', 1)), ["layers"]),
    "label only": (dict(name="another-name"), []),
    "placement only": (dict(extra=LAYER + '[[layers]]\nkind = "slurm"\npartition = "big"\n'), []),
}


@pytest.mark.parametrize("what", list(VARIANTS))
def test_one_change_between_drv_files_is_named_alone(qwex: Qwex, git_repo: GitRepo, dataset: Path,
                                                     what: str) -> None:
    (dataset.parent / "other.csv").write_text("a,b\n1,3\n")
    over, expected = VARIANTS[what]
    base = {**BASE, "image": SHA + "a" * 64, "extra": LAYER}
    if what == "placement only":
        base["extra"] = LAYER + '[[layers]]\nkind = "slurm"\npartition = "small"\n'
    fields = {**base, **over}
    git_repo.write({"base.drv": drv_text(job("--out", "a=1"), **base),
                    "other.drv": drv_text(fields.pop("command", job("--out", "a=1")), **fields)})
    rc, doc = diff(qwex, "base.drv", "other.drv", git_repo.path)
    assert doc["changed"] == expected
    assert rc == (1 if expected else 0) and doc["identical"] == (not expected)
    ch = doc["changes"]
    if what == "command":
        assert ch["command"]["a"][-1] == "a=1" and ch["command"]["b"][-1] == "a=2"
    elif what == "var changed":
        assert ch["vars"] == {"added": {}, "removed": {}, "changed": {"LR": ["0.1", "0.01"]}}
    elif what == "var added":
        assert ch["vars"] == {"added": {"SEED": "1"}, "removed": {}, "changed": {}}
    elif what == "output added":
        assert (ch["outputs"]["added"], ch["outputs"]["removed"]) == (["metrics.json"], [])
    elif what == "input file content":
        (inp,) = ch["inputs"]
        assert inp["dest"] == "data.csv" and inp["a"]["type"] == inp["b"]["type"] == "blob"
        assert inp["a"]["digest"] != inp["b"]["digest"] and inp["upstream"] is None
    elif what == "image":
        assert ch["image"] == {"a": "oci:sha256:" + "a" * 64, "b": "oci:sha256:" + "b" * 64}
    elif what == "layer identity":
        assert ch["layers"]["fields"] == [
            {"index": 0, "kind": "singularity", "field": "contain", "a": True, "b": False}]
    rc, lines = human(qwex, "base.drv", "other.drv", git_repo.path)
    assert sections(lines) == (expected or ["identical"])


def test_source_change_between_revisions_lists_the_file(qwex: Qwex, git_repo: GitRepo) -> None:
    old = git_repo.commit("model", {"src/model.py": "v1\n", "src/other.py": "same\n"})
    git_repo.commit("tune", {"src/model.py": "v2\n"})
    spec = 'command = ["true"]\n[source]\ninclude = ["src/"]\n'
    git_repo.write({"old.drv": spec + f'rev = "{old}"\n', "new.drv": spec})
    rc, doc = diff(qwex, "old.drv", "new.drv", git_repo.path)
    assert rc == 1 and doc["changed"] == ["source"]
    assert files(doc["changes"]["source"]) == [("M", "src/model.py")]
    _, lines = human(qwex, "old.drv", "new.drv", git_repo.path)
    assert sections(lines) == ["source"] and "  M src/model.py" in lines


# -- keys and prefixes ------------------------------------------------------------------------------
def test_keys_and_prefixes_list_source_files_from_git_then_from_the_snapshot(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    t = drv_text(job("--out", "a=1"), include=["job.py", "src/"])
    git_repo.commit("v1", {"t.drv": t, "src/a.py": "1\n", "src/old.py": "x\n", "src/link": "a file\n"})
    k1 = qwex.build("t.drv", cwd=git_repo.path).key
    git_repo.git("rm", "-q", "src/old.py", "src/link")
    os.symlink("a.py", git_repo.path / "src" / "link")
    git_repo.commit("v2", {"src/a.py": "2\n", "src/extra.py": "e\n"})
    k2 = qwex.build("t.drv", cwd=git_repo.path).key
    want = [("M", "src/a.py"), ("A", "src/extra.py"), ("T", "src/link"), ("D", "src/old.py")]

    for a, b in ((k1, k2), (k1[:17], k2[7:19]), (k1, "t.drv")):
        rc, doc = diff(qwex, a, b, git_repo.path)
        assert rc == 1 and doc["changed"] == ["source"]
        assert files(doc["changes"]["source"]) == want
    rc, lines = human(qwex, k1[7:19], k2, git_repo.path)
    assert sections(lines) == ["source"]
    assert [ln for ln in lines if ln.startswith("  ")] == [f"  {s} {p}" for s, p in want]

    # Outside the repository the commits are unknown: the store's snapshots list the files.
    rc, doc = diff(qwex, k1, k2, tmp_path)
    assert rc == 1 and files(doc["changes"]["source"]) == want

    # Without the snapshot either, only the tree digests are reported, and why.
    snap = qwex.json("show", k1, cwd=git_repo.path)["derivation"]["source"]["snapshot"]
    os.unlink(qwex.store / "snapshots" / snap[7:9] / snap[7:])
    rc, doc = diff(qwex, k1, k2, tmp_path)
    src = doc["changes"]["source"]
    assert rc == 1 and doc["changed"] == ["source"] and src["files"] is None
    assert src["note"].startswith("a: ") and "snapshot" in src["note"]
    _, lines = human(qwex, k1, k2, tmp_path)
    assert sections(lines) == ["source"] and "file list unavailable" in lines[2]

    rc, lines = human(qwex, k2, k2[:12], git_repo.path)
    assert rc == 0 and lines[2:] == ["identical"] and k2 in lines[0] and k2 in lines[1]
    assert diff(qwex, k2, "t.drv", git_repo.path)[0] == 0


def test_directory_input_lists_changed_files(qwex: Qwex, git_repo: GitRepo, dataset: Path) -> None:
    git_repo.write({"t.drv": drv_text(job("--out", "a=1"), include=["job.py"],
                                      inputs={"data": "file:../datasets"})})
    k1 = qwex.build("t.drv", cwd=git_repo.path).key
    dataset.write_text("a,b\n1,2\n3,4\n")
    (dataset.parent / "new.csv").write_text("n\n")
    rc, doc = diff(qwex, k1, "t.drv", git_repo.path)
    assert rc == 1 and doc["changed"] == ["inputs"]
    (inp,) = doc["changes"]["inputs"]
    assert inp["dest"] == "data" and inp["name"] is None and inp["upstream"] is None
    assert files(inp) == [("A", "new.csv"), ("M", "raw.csv")]


# -- pipelines ---------------------------------------------------------------------------------------
def _pipeline(repo: GitRepo) -> None:
    repo.commit("pipeline", {
        "prep/params.txt": "1\n",
        "prepare.drv": drv_text(job("--copy", "prep/params.txt=p.txt"), include=["job.py", "prep/"]),
        "train.drv": drv_text(job("--copy", "model/out/p.txt=m.txt"), include=["job.py"],
                              vars={"LR": "0.1"}, inputs={"model": "drv:prepare.drv"}),
        "eval.drv": drv_text(job("--copy", "m/out/m.txt=e.txt"), include=["job.py"],
                             inputs={"m": "drv:train.drv"}),
    })


def _chain(doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """eval's input m -> train's diff -> train's input model -> prepare's diff."""
    assert doc["changed"] == ["inputs"]
    (m,) = doc["changes"]["inputs"]
    assert (m["dest"], m["name"]) == ("m", "train")
    train = m["upstream"]
    assert train["changed"] == ["inputs"] and train["a"]["name"] == "train"
    (model,) = train["changes"]["inputs"]
    assert (model["dest"], model["name"]) == ("model", "prepare")
    prepare = model["upstream"]
    assert prepare["changed"] == ["source"] and prepare["a"]["name"] == "prepare"
    assert files(prepare["changes"]["source"]) == [("M", "prep/params.txt")]
    return m, train, prepare


def test_pipeline_change_in_first_stage_is_traced_through_every_stage(
    qwex: Qwex, git_repo: GitRepo
) -> None:
    _pipeline(git_repo)
    e1 = qwex.build("eval.drv", cwd=git_repo.path).key
    git_repo.commit("params", {"prep/params.txt": "2\n"})

    # Not built yet: the unresolved .drv side still recurses into its upstream .drv files.
    rc, doc = diff(qwex, e1, "eval.drv", git_repo.path)
    m, train, prepare = _chain(doc)
    assert rc == 1 and doc["b"]["key"] is None and train["b"]["key"] is None
    assert (m["a"]["type"], m["b"]["type"]) == ("tree", "drv")
    assert prepare["b"]["key"] is not None  # no drv: inputs: its own key

    e2 = qwex.build("eval.drv", cwd=git_repo.path).key
    rc, doc = diff(qwex, e1, e2, git_repo.path)
    m, train, prepare = _chain(doc)
    assert rc == 1 and (m["a"]["type"], m["b"]["type"]) == ("tree", "tree")
    assert m["files"] == [{"status": "M", "path": "out/m.txt"}]  # train's output
    t1, t2, p2 = train["a"]["key"], train["b"]["key"], prepare["b"]["key"]
    assert None not in (t1, t2, p2)

    # The record names its upstreams by key and label (a leaf upstream's key is always known).
    rec = qwex.json("show", t2, cwd=git_repo.path)["derivation"]
    assert (rec["upstreams"], rec["upstream_names"]) == ({"model": p2}, {"model": "prepare"})
    rec = qwex.json("show", e2, cwd=git_repo.path)["derivation"]
    assert rec["upstream_names"] == {"m": "train"} and rec["upstreams"].get("m", t2) == t2

    rc, lines = human(qwex, e1[7:19], e2[7:19], git_repo.path)
    assert sections(lines) == ["inputs"]
    assert lines[2].startswith("inputs   m (drv train): upstream output differs") and lines[2].endswith("↓")
    nested = [ln.strip() for ln in lines[3:]]
    assert nested[0].startswith("train ") and nested[1].startswith("inputs   model (drv prepare)")
    assert nested[2].startswith("prepare ") and nested[3].startswith("source   1 file differs")
    assert nested[4:] == ["M prep/params.txt"]

    # Early cutoff: prepare's source changes but its output does not, so eval keeps its key.
    git_repo.commit("notes", {"prep/notes.md": "not copied\n"})
    assert qwex.build("eval.drv", cwd=git_repo.path).key == e2
    assert diff(qwex, e2, "eval.drv", git_repo.path)[0] == 0
    rc, doc = diff(qwex, p2, "prepare.drv", git_repo.path)
    assert rc == 1 and files(doc["changes"]["source"]) == [("A", "prep/notes.md")]


def test_upstream_var_change_between_drv_files(qwex: Qwex, git_repo: GitRepo) -> None:
    _pipeline(git_repo)
    text = (git_repo.path / "train.drv").read_text()
    git_repo.write({"train2.drv": text.replace('"0.1"', '"0.2"'),
                    "eval2.drv": (git_repo.path / "eval.drv").read_text().replace("train.drv", "train2.drv")})
    rc, doc = diff(qwex, "eval.drv", "eval2.drv", git_repo.path)
    assert rc == 1 and doc["changed"] == ["inputs"]
    (m,) = doc["changes"]["inputs"]
    assert m["upstream"]["changed"] == ["vars"]
    assert m["upstream"]["changes"]["vars"]["changed"] == {"LR": ["0.1", "0.2"]}


# -- errors -------------------------------------------------------------------------------------------
def test_errors_are_one_line_and_exit_2(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.write({"t.drv": drv_text(job("--out", "a=1"), include=["job.py"]),
                    "bad.drv": "command = \n"})
    key = qwex.build("t.drv", cwd=git_repo.path).key
    cases = {
        ("zzzz", "t.drv"): "no key, derivation or run matches 'zzzz'",
        (key, "missing.drv"): "no such file",
        (key, "bad.drv"): "malformed TOML",
        ("blake3:" + "0" * 64, key): "no derivation blake3:" + "0" * 64,
    }
    for (a, b), needle in cases.items():
        assert_user_error(qwex("diff", a, b, cwd=git_repo.path), needle)
    # Run ids start with the year: after two runs, "2" matches several.
    git_repo.write({"u.drv": drv_text(job("--out", "a=2"), include=["job.py"])})
    qwex.build("u.drv", cwd=git_repo.path)
    assert_user_error(qwex("diff", "2", key, cwd=git_repo.path), "ambiguous")

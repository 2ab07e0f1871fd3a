"""Every user error: exit 2, exactly one stderr line ``qwex: error: ...`` naming the file or
field, no traceback, nothing run."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import GitRepo, Qwex, assert_user_error, drv_text, job, make_repo, read_lines

PINNED = "python@sha256:" + "ab" * 32

# Each case: (drv file text, needles the error line must contain).
DRV_CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "malformed TOML": ('command = ["python", "x.py"\n', ("bad.drv", "TOML")),
    "unknown top-level field": ('comand = ["true"]\ncommand = ["true"]\n', ("bad.drv", "comand")),
    "unknown nested field": ('command = ["true"]\n[env]\nvarz = { A = "1" }\n', ("bad.drv", "varz")),
    "unknown layer kind": ('command = ["true"]\n[[layers]]\nkind = "docker"\n', ("bad.drv", "docker")),
    "layer without kind": ('command = ["true"]\n[[layers]]\nimage = "x"\n', ("bad.drv", "kind")),
    "missing command": ('name = "x"\n', ("bad.drv", "command")),
    "empty command": ('command = []\n', ("bad.drv", "command")),
    "wrong type": ('command = ["true"]\noutputs = "out/"\n', ("bad.drv", "outputs")),
    "output escapes": ('command = ["true"]\noutputs = ["../x"]\n', ("bad.drv", "outputs")),
    "missing input file": ('command = ["true"]\n[inputs]\n"d.csv" = "file:../nope/missing.csv"\n',
                           ("bad.drv", "missing.csv")),
    "bad input scheme": ('command = ["true"]\n[inputs]\n"d.csv" = "http://x/y.csv"\n', ("bad.drv", "d.csv")),
    "input escapes": ('command = ["true"]\n[inputs]\n"../d.csv" = "file:README.md"\n',
                      ("bad.drv", "../d.csv")),
    "unpinned image": ('command = ["true"]\n[env]\nimage = "python:3.11"\n', ("python:3.11", "env.image")),
    "malformed digest": ('command = ["true"]\n[env]\nimage = "python@sha256:abc"\n', ("env.image",)),
    "QWEX_ var": ('command = ["true"]\n[env]\nvars = { QWEX_KEY = "x" }\n', ("bad.drv", "QWEX_KEY")),
    "var both hashed and passed": ('command = ["true"]\n[env]\nvars = { A = "1" }\npass = ["A"]\n',
                                   ("bad.drv", "A")),
    "unknown revision": ('command = ["true"]\n[source]\nrev = "no-such-branch"\n', ("no-such-branch",)),
    "bad glob": ('command = ["true"]\n[source]\ninclude = ["/abs"]\n', ("bad.drv", "/abs")),
    "drv input missing file": ('command = ["true"]\n[inputs]\n"up" = "drv:missing-upstream.drv"\n',
                               ("missing-upstream.drv",)),
    "drv input unknown key": ('command = ["true"]\n[inputs]\n"up" = "drv:blake3:' + "0" * 64 + '"\n',
                              ("blake3:" + "0" * 64,)),
    "drv input cycle": ('command = ["true"]\n[inputs]\n"up" = "drv:bad.drv"\n', ("bad.drv", "cycle")),
}


@pytest.mark.parametrize("case", sorted(DRV_CASES))
def test_bad_derivation_file_is_one_line_exit_2(qwex: Qwex, git_repo: GitRepo, case: str) -> None:
    text, needles = DRV_CASES[case]
    git_repo.write({"bad.drv": text})  # untracked: the tree is clean
    assert_user_error(qwex("build", "bad.drv", cwd=git_repo.path), *needles)
    runs = qwex.store / "runs"
    assert not runs.exists() or not any(runs.iterdir())


def test_missing_drv_file(qwex: Qwex, git_repo: GitRepo) -> None:
    for cmd in ("build", "hash"):
        assert_user_error(qwex(cmd, "nope.drv", cwd=git_repo.path), "nope.drv")
    assert_user_error(qwex("build", str(git_repo.path), cwd=git_repo.path), str(git_repo.path))


def test_not_a_git_repo(qwex: Qwex, tmp_path: Path) -> None:
    d = tmp_path / "plain"
    d.mkdir()
    (d / "t.drv").write_text(drv_text(["true"]))
    assert_user_error(qwex("build", "t.drv", cwd=d), "git")


def test_repo_without_commits(qwex: Qwex, tmp_path: Path) -> None:
    d = tmp_path / "fresh"
    d.mkdir()
    import subprocess

    subprocess.run(["git", "init", "-q", str(d)], check=True, env=qwex.env)
    (d / "t.drv").write_text(drv_text(["true"]))
    assert_user_error(qwex("build", "t.drv", cwd=d), "commit")


def test_submodule_selected_is_refused(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    sub = make_repo(tmp_path / "sub", qwex.env)
    git_repo.git("-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub.path), "vendor")
    git_repo.commit("submodule")
    git_repo.write({"t.drv": drv_text(["true"])})
    assert_user_error(qwex("build", "t.drv", cwd=git_repo.path), "vendor")
    git_repo.write({"u.drv": drv_text(job("--out", "a=1"), exclude=["vendor"])})
    qwex.build("u.drv", cwd=git_repo.path)


def test_image_pinned_or_allowed_is_accepted(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.write({
        "pinned.drv": drv_text(job("--out", "a=1"), image=PINNED),
        "mirror.drv": drv_text(job("--out", "a=1"), image="docker://mirror.example/lib/python:3.11@sha256:"
                               + "ab" * 32),
        "tag.drv": drv_text(job("--out", "a=1"), image="python:3.11"),
        "none.drv": drv_text(job("--out", "a=1")),
    })
    pinned = qwex.hash("pinned.drv", cwd=git_repo.path)
    # the registry and tag are placement: the same digest is the same image
    assert qwex.hash("mirror.drv", cwd=git_repo.path) == pinned
    assert_user_error(qwex("hash", "tag.drv", cwd=git_repo.path), "python:3.11")
    unpinned = qwex.hash("tag.drv", "--allow-unpinned", cwd=git_repo.path)
    none = qwex.hash("none.drv", cwd=git_repo.path)
    assert len({pinned, unpinned, none}) == 3


def test_unknown_runner(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drv", {
        "t.drv": drv_text(job("--out", "a=1")),
        ".qwex/config.toml": '[runners.cluster]\nlayers = [{ kind = "slurm", partition = "gpu" }]\n',
    })
    assert_user_error(qwex("build", "t.drv", "--runner", "nope", cwd=git_repo.path), "nope")
    # a known runner: placement only, so the key is unchanged
    plain = qwex.hash("t.drv", cwd=git_repo.path)
    assert qwex.hash("t.drv", "--runner", "cluster", cwd=git_repo.path) == plain


@pytest.mark.parametrize("cmd", [("show",), ("log",), ("checkout",), ("show", "--json")])
def test_unknown_key_prefix(qwex: Qwex, git_repo: GitRepo, cmd: tuple[str, ...], tmp_path: Path) -> None:
    git_repo.commit("drv", {"t.drv": drv_text(job("--out", "a=1"))})
    qwex.build("t.drv", cwd=git_repo.path)
    args = [cmd[0], "zz99", *cmd[1:]]
    if cmd[0] == "checkout":
        args.append(str(tmp_path / "co"))
    assert_user_error(qwex(*args), "zz99")
    assert_user_error(qwex(cmd[0], "blake3:", *cmd[1:]))


def test_ambiguous_key_prefix(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    # Find two derivations whose keys share their first hex digit (at most 17 tries).
    by_first: dict[str, str] = {}
    pair: tuple[str, str] | None = None
    for i in range(17):
        name = f"v{i}.drv"
        git_repo.write({name: drv_text(job("--out", "a=1"), vars={"I": str(i)})})
        key = qwex.hash(name, cwd=git_repo.path)
        c = key.removeprefix("blake3:")[0]
        if c in by_first:
            pair = (by_first[c], name)
            break
        by_first[c] = name
    assert pair is not None
    keys = [qwex.build(n, cwd=git_repo.path).key for n in pair]
    c = keys[0].removeprefix("blake3:")[0]
    assert keys[1].removeprefix("blake3:")[0] == c
    for cmd in (["show", c], ["log", c], ["checkout", "blake3:" + c, str(tmp_path / "co")]):
        line = assert_user_error(qwex(*cmd), "ambiguous")
        assert keys[0][:15] in line and keys[1][:15] in line  # the candidates are named
    assert not (tmp_path / "co").exists()
    # Longer prefixes resolve.
    for k in keys:
        assert qwex.json("show", k.removeprefix("blake3:")[:12])["run"]["key"] == k


def test_ambiguous_run_id_prefix(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.write({"a.drv": drv_text(job("--out", "a=1")), "b.drv": drv_text(job("--out", "b=1"))})
    runs = [qwex.build(n, cwd=git_repo.path).run_id for n in ("a.drv", "b.drv")]
    n = next(i for i, (a, b) in enumerate(zip(*runs, strict=True)) if a != b)
    common = runs[0][:n]  # run ids start with the UTC start time: a shared prefix
    assert common
    assert_user_error(qwex("log", common), "ambiguous")
    assert qwex.json("show", runs[1])["run"]["run_id"] == runs[1]


@pytest.mark.parametrize("args", [
    pytest.param(["build"], id="build-no-file"),
    pytest.param(["checkout"], id="checkout-no-key"),
    pytest.param(["build", "t.drv", "--no-such-flag"], id="unknown-flag"),
    pytest.param(["log", "x", "--stream", "both-ways"], id="bad-stream"),
])
def test_usage_errors_exit_2(qwex: Qwex, git_repo: GitRepo, args: list[str]) -> None:
    git_repo.write({"t.drv": drv_text(["true"])})
    cp = qwex(*args, cwd=git_repo.path)
    assert cp.returncode == 2, cp.stderr
    assert "Traceback" not in cp.stderr
    assert "internal error" not in cp.stderr


def test_errors_run_nothing(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    git_repo.write({"t.drv": drv_text(job("--count", str(counter)), image="python:3.11")})
    assert_user_error(qwex("build", "t.drv", cwd=git_repo.path))
    assert read_lines(counter) == []
    assert_user_error(qwex("ls", "--json"), "no qwex store at")  # not even a store was made

"""The lead's adversarial pass over issue 7 (spec/threat-model.md, "Adversarial pass"):
attacks beyond the issue's list, each pinned by a test.

- A job that leaves git metadata in its outputs (``out/.git/config`` with
  ``core.fsmonitor``) would turn a checkout into a live repository that runs a command on
  ``git status``: the run fails naming the path, and materializing refuses such an entry
  (spec/runs.md O2).
- A crafted commit whose tree holds both a symlink ``a`` and a file ``a/x`` must never make
  staging write through the link.
- An output symlink that leads outside the outputs (a checkpoint linked to scratch space)
  is stored as a link only: the build says so, live and in the stored log (runs.md O3).
- The cache-hit fast path (``qwex.main``) answers exactly as the full command does, and
  falls back to it for everything else.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import subprocess
from pathlib import Path

from conftest import GitRepo, Qwex, assert_user_error, drv_text, parse_build

from qwexstore.errors import UserError
from qwexstore.manifest import FileEntry, Manifest
from qwexstore.store import open_store
from qwexstore.tree import materialize


def test_outputs_holding_git_metadata_fail_the_run_naming_the_path(qwex: Qwex, git_repo: GitRepo) -> None:
    script = ("mkdir -p out/repo/.git && echo '[core] fsmonitor = touch PWNED' > out/repo/.git/config"
              " && echo ok > out/r")
    git_repo.commit("drv", {"t.drv": drv_text(script)})
    cp = qwex("build", "t.drv", cwd=git_repo.path)
    assert cp.returncode == 1, cp.stderr
    assert "out/repo/.git/config" in cp.stderr and "git metadata" in cp.stderr, cp.stderr
    assert "Traceback" not in cp.stderr
    assert not [p for p in (qwex.store / "realisations").rglob("*") if p.is_file()]
    assert qwex("verify").returncode == 0


def test_materialize_refuses_git_metadata_from_a_foreign_store(qwex: Qwex, tmp_path: Path) -> None:
    async def go() -> None:
        store = await open_store(str(tmp_path / "store"))
        digest = await store.put_blob(b"[core]\n\tfsmonitor = touch PWNED\n")
        for path in (".git/config", "sub/.GIT/config", "sub/git~1/config", "a/.git\u200c/config"):
            m = Manifest.of([FileEntry(path=path, size=32, digest=digest)])
            dest = tmp_path / f"dest-{abs(hash(path))}"
            try:
                await materialize(store, m, str(dest))
            except UserError as e:
                assert "git" in str(e)
            else:
                raise AssertionError(f"{path} was materialized")
            assert not any(p.is_file() for p in dest.rglob("*")) if dest.exists() else True

    asyncio.run(go())


def _crafted_tree(repo: GitRepo, outside: Path, drv: str) -> str:
    """A commit whose tree has a symlink ``a`` -> ``outside`` AND a directory ``a`` with a
    file ``x`` (git's own tools never make this; git hash-object --literally does)."""
    def obj(data: bytes, kind: str = "blob") -> str:
        argv = ["git", "-C", str(repo.path), "hash-object", "-w", "--literally", "-t", kind, "--stdin"]
        return subprocess.run(argv, input=data, capture_output=True, check=True).stdout.decode().strip()

    def ent(mode: bytes, name: bytes, oid: str) -> bytes:
        return mode + b" " + name + b"\0" + binascii.unhexlify(oid)

    sub = obj(ent(b"100644", b"x", obj(b"pwned\n")), "tree")
    raw = ent(b"120000", b"a", obj(str(outside).encode())) + ent(b"40000", b"a", sub) \
        + ent(b"100644", b"t.drv", obj(drv.encode()))
    tree = obj(raw, "tree")
    return repo.git("commit-tree", tree, "-m", "crafted").strip()


def test_a_crafted_tree_with_a_symlink_and_a_directory_of_one_name_is_refused(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    commit = _crafted_tree(git_repo, outside, drv_text("mkdir -p out; cat a/x > out/r"))
    (tmp_path / "c.drv").write_text(drv_text("mkdir -p out; cat a/x > out/r", repo="repo", extra=""))
    text = (tmp_path / "c.drv").read_text().replace('repo = "repo"', f'repo = "repo"\nrev = "{commit}"')
    (tmp_path / "c.drv").write_text(text)
    cp = qwex("build", "c.drv", cwd=tmp_path)
    assert cp.returncode == 2, cp.stderr
    assert "a/x" in cp.stderr and "Traceback" not in cp.stderr
    assert list(outside.iterdir()) == []


def test_the_fast_hit_path_answers_exactly_as_the_full_command(qwex: Qwex, git_repo: GitRepo) -> None:
    git_repo.commit("drv", {"t.drv": drv_text("mkdir -p out; echo hi > out/x")})
    first = qwex.build("t.drv", cwd=git_repo.path)
    assert not first.cached
    fast = qwex.ok("build", "t.drv", cwd=git_repo.path)
    full = qwex.ok("build", "t.drv", "-j", "1", cwd=git_repo.path)  # an option the fast path leaves alone
    assert fast.stdout == full.stdout and parse_build(fast.stdout).cached
    fast_json = json.loads(qwex.ok("build", "t.drv", "--json", cwd=git_repo.path).stdout)
    full_json = json.loads(qwex.ok("build", "--json", "-j", "1", "t.drv", cwd=git_repo.path).stdout)
    assert fast_json == full_json and fast_json["cached"] is True
    # Errors still come from the full command: one line, exit 2.
    assert_user_error(qwex("build", "missing.drv", cwd=git_repo.path), "missing.drv")


def test_an_output_symlink_leading_outside_the_outputs_is_reported(qwex: Qwex, git_repo: GitRepo) -> None:
    script = ("mkdir -p out/sub && echo m > out/sub/model && ln -s sub/model out/inside"
              " && ln -s /scratch/ckpt.pt out/abs && ln -s ../job.py out/up")
    git_repo.commit("drv", {"t.drv": drv_text(script)})
    cp = qwex("build", "t.drv", cwd=git_repo.path)
    assert cp.returncode == 0, cp.stderr
    warned = [line for line in cp.stderr.splitlines() if line.startswith("qwex: warning: output")]
    assert sorted(w.split()[3] for w in warned) == ["out/abs", "out/up"], cp.stderr
    assert "/scratch/ckpt.pt" in cp.stderr
    key = parse_build(cp.stdout).key
    log = qwex.ok("log", key).stdout + qwex.ok("log", key).stderr
    assert "out/abs is a symlink" in log

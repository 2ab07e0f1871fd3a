"""``qwex checkout``: the selected source at the recorded commit plus the outputs, from the
store alone."""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
from pathlib import Path

import pytest
from conftest import JOB, GitRepo, Qwex, assert_user_error, drv_text, job


def _tree(root: Path) -> dict[str, bytes | str]:
    """Every file (bytes) and symlink ("-> target") below root, by relative path."""
    out: dict[str, bytes | str] = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            rel = p.relative_to(root).as_posix()
            out[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else p.read_bytes()
    return out


def _blob(qwex: Qwex, digest: str) -> Path:
    hexd = digest.removeprefix("blake3:")
    return qwex.store / "blobs" / hexd[:2] / hexd


OUT_ARGS = ("--out", "result.txt=hello\n", "--random", "sub/model.bin=5000", "--exec", "run.sh=#!/bin/sh\n",
            "--link", "latest=result.txt")

def _expected_model() -> bytes:
    rnd = random.Random("sub/model.bin")
    return bytes(rnd.getrandbits(8) for _ in range(5000))


def _setup(qwex: Qwex, git_repo: GitRepo) -> tuple[str, dict[str, bytes | str]]:
    """Build a run with a narrowed source; return its key and the expected checkout tree."""
    git_repo.commit("code", {
        "src/model.py": "W = 1\n", "src/tool.sh": "#!/bin/sh\necho tool\n", "docs/big.md": "not selected\n",
        "t.drv": drv_text(job(*OUT_ARGS), include=["job.py", "src/", "t.drv"]),
    })
    os.chmod(git_repo.path / "src/tool.sh", 0o755)
    os.symlink("model.py", git_repo.path / "src/alias.py")
    git_repo.commit("exec bit, symlink")
    git_repo.write({"src/untracked.py": "never\n", ".git/info/exclude": "untracked.py\n"})  # ignored
    key = qwex.build("t.drv", cwd=git_repo.path).key
    expected: dict[str, bytes | str] = {
        "job.py": JOB.encode(), "src/model.py": b"W = 1\n", "src/tool.sh": b"#!/bin/sh\necho tool\n",
        "src/alias.py": "-> model.py", "t.drv": (git_repo.path / "t.drv").read_bytes(),
        "out/result.txt": b"hello\n", "out/sub/model.bin": _expected_model(), "out/run.sh": b"#!/bin/sh\n",
        "out/latest": "-> result.txt",
    }
    return key, expected


def test_checkout_recreates_source_and_outputs_after_repo_is_gone(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    key, expected = _setup(qwex, git_repo)
    # The working tree moves on, then the repository disappears: the store must suffice.
    git_repo.commit("moved on", {"src/model.py": "W = 2\n", "job.py": "print('new')\n"})
    shutil.rmtree(git_repo.path)
    dest = tmp_path / "t"
    cp = qwex.ok("checkout", key.removeprefix("blake3:")[:10], str(dest))
    assert str(dest) in cp.stdout
    assert _tree(dest) == expected
    assert os.stat(dest / "src/tool.sh").st_mode & stat.S_IXUSR
    assert not os.stat(dest / "src/model.py").st_mode & stat.S_IXUSR
    assert os.stat(dest / "out/run.sh").st_mode & stat.S_IXUSR


def test_checkout_copies_outputs_by_default_and_links_only_with_flag(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path
) -> None:
    key, _ = _setup(qwex, git_repo)
    show = qwex.json("show", key)
    digest = {e["path"]: e["digest"] for e in show["outputs"] if e["type"] == "file"}["out/result.txt"]
    blob = _blob(qwex, digest)

    copied = tmp_path / "copied"
    qwex.ok("checkout", "blake3:" + key.removeprefix("blake3:")[:12], str(copied))
    st = os.stat(copied / "out/result.txt")
    assert st.st_ino != os.stat(blob).st_ino and st.st_nlink == 1  # no inode shared with the store
    assert st.st_mode & stat.S_IWUSR
    assert os.stat(copied / "job.py").st_mode & stat.S_IWUSR
    (copied / "out/result.txt").write_text("edited")  # a copy is the user's to change
    assert blob.read_bytes() == b"hello\n"

    linked = tmp_path / "linked"
    qwex.ok("checkout", key, str(linked), "--link")
    st = os.stat(linked / "out/result.txt")
    assert st.st_ino == os.stat(blob).st_ino  # a hard link to the store's blob, as asked
    assert st.st_mode & 0o222 == 0  # read-only
    again = tmp_path / "again"
    qwex.ok("checkout", key, str(again), "--copy")  # the old flag still works: the default
    assert _tree(again) == _tree(linked)
    assert "corrupts the store" in " ".join(qwex.ok("checkout", "--help").stdout.split())


def test_checkout_into_empty_dir_ok_nonempty_refused(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    key, expected = _setup(qwex, git_repo)
    empty = tmp_path / "empty"
    empty.mkdir()
    qwex.ok("checkout", key, str(empty))
    assert _tree(empty) == expected

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    cp = qwex("checkout", key, str(full))
    assert_user_error(cp, str(full))
    assert _tree(full) == {"keep.txt": b"mine"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".full")] == []  # no temp debris
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert_user_error(qwex("checkout", key, str(a_file)), str(a_file))
    assert a_file.read_text() == "x"


def test_checkout_json_and_default_dest(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    key, expected = _setup(qwex, git_repo)
    work = tmp_path / "cwd"
    work.mkdir()
    doc = json.loads(qwex.ok("checkout", key[:20], "--json", cwd=work).stdout)
    assert doc["key"] == key
    assert doc["output_files"] == 3  # result.txt, model.bin, run.sh (+ a symlink)
    assert doc["source_files"] == 5
    assert doc["run_id"] == qwex.json("show", key)["run"]["run_id"]
    dest = Path(doc["dest"])
    assert dest.parent == work
    assert _tree(dest) == expected


@pytest.mark.parametrize("link", [True, False], ids=["link", "copy"])
def test_checkout_keeps_each_outputs_executable_bit(
    qwex: Qwex, git_repo: GitRepo, tmp_path: Path, link: bool
) -> None:
    same = "same bytes\n"
    git_repo.commit("drv", {"t.drv": drv_text(job("--exec", f"run.sh={same}", "--out", f"notes.txt={same}"))})
    key = qwex.build("t.drv", cwd=git_repo.path).key
    outs = {e["path"]: e["executable"] for e in qwex.json("show", key)["outputs"]}
    assert outs == {"out/run.sh": True, "out/notes.txt": False}
    dest = tmp_path / "co"
    qwex.ok("checkout", key, str(dest), *(["--link"] if link else []))
    assert os.stat(dest / "out/run.sh").st_mode & stat.S_IXUSR
    assert not os.stat(dest / "out/notes.txt").st_mode & stat.S_IXUSR

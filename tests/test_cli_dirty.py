"""Dirty working trees: refused when a selected tracked file changed, snapshotted with
``--allow-dirty``; ignored files never reach the job (untracked selected files: see
test_integrity_source.py)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import GitRepo, Qwex, assert_user_error, drv_text, job, read_lines


def _setup(git_repo: GitRepo, report: Path, counter: Path) -> None:
    git_repo.commit("code", {
        "params.txt": "lr=0.1\n", "docs/notes.md": "v1\n",
        "t.drv": drv_text(job("--count", str(counter), "--report", str(report),
                              "--copy", "params.txt=params.txt"),
                          include=["job.py", "params.txt", "t.drv", "*.py"]),
    })


def test_modified_selected_file_is_refused_naming_it(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    _setup(git_repo, tmp_path / "r.json", counter)
    git_repo.write({"params.txt": "lr=0.5\n"})
    assert_user_error(qwex("build", "t.drv", cwd=git_repo.path), "params.txt", "--allow-dirty")
    # staged but not committed is still uncommitted
    git_repo.git("add", "params.txt")
    assert_user_error(qwex("build", "t.drv", cwd=git_repo.path), "params.txt")
    # a deleted selected file too
    git_repo.git("checkout", "HEAD", "--", "params.txt")
    (git_repo.path / "params.txt").unlink()
    assert_user_error(qwex("build", "t.drv", cwd=git_repo.path), "params.txt")
    assert read_lines(counter) == []


def test_modified_unselected_file_builds(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    counter = tmp_path / "counter"
    _setup(git_repo, tmp_path / "r.json", counter)
    key = qwex.hash("t.drv", cwd=git_repo.path)
    git_repo.write({"docs/notes.md": "v2 (uncommitted)\n", "README.md": "edited\n"})
    b = qwex.build("t.drv", cwd=git_repo.path)
    assert b.key == key
    assert len(read_lines(counter)) == 1


def test_allow_dirty_snapshots_the_working_tree(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    counter, report = tmp_path / "counter", tmp_path / "r.json"
    _setup(git_repo, report, counter)
    clean_key = qwex.hash("t.drv", cwd=git_repo.path)
    head = git_repo.head()
    git_repo.write({"params.txt": "lr=0.5\n"})
    status_before = git_repo.git("status", "--porcelain")
    b = qwex.build("t.drv", "--allow-dirty", cwd=git_repo.path)
    assert b.key != clean_key  # the dirty content is the source
    assert qwex.hash("t.drv", "--allow-dirty", cwd=git_repo.path) == b.key
    # the user's repo is untouched: same HEAD, same status, no stash entry
    assert git_repo.head() == head
    assert git_repo.git("status", "--porcelain") == status_before
    assert git_repo.git("stash", "list") == ""

    co = tmp_path / "co"
    qwex.ok("checkout", b.key, str(co))
    assert (co / "params.txt").read_text() == "lr=0.5\n"  # the dirty content was recorded
    assert (co / "out/params.txt").read_text() == "lr=0.5\n"  # and is what the job saw

    # Committing exactly that content gives the same selected tree: a cache hit.
    git_repo.commit("tune lr")
    again = qwex.build("t.drv", cwd=git_repo.path)
    assert again.cached and again.key == b.key
    assert len(read_lines(counter)) == 1


def test_ignored_files_never_reach_the_work_dir(qwex: Qwex, git_repo: GitRepo, tmp_path: Path) -> None:
    counter, report = tmp_path / "counter", tmp_path / "r.json"
    _setup(git_repo, report, counter)
    # matches the include globs, but untracked and ignored
    git_repo.write({"secret.py": "TOKEN = 1\n", "local_notes.py": "x\n",
                    ".git/info/exclude": "secret.py\nlocal_notes.py\n"})
    qwex.build("t.drv", cwd=git_repo.path)
    files = json.loads(report.read_text())["files"]
    assert "secret.py" not in files and "local_notes.py" not in files
    assert "job.py" in files and "params.txt" in files

    git_repo.write({"params.txt": "lr=0.7\n"})
    b = qwex.build("t.drv", "--allow-dirty", cwd=git_repo.path)
    files = json.loads(report.read_text())["files"]
    assert "secret.py" not in files and "local_notes.py" not in files
    co = tmp_path / "co"
    qwex.ok("checkout", b.key, str(co))
    assert not (co / "secret.py").exists()
